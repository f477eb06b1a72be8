"""What each piece of the fine-grained head buys on real photos: one training run per variant, read against
the linear global baseline trained in the same run.

    python benchmarks/ablation.py [--cache runs/real_data/cache] [--work runs/ablation] [--only NAME ...]
    python benchmarks/ablation.py --seeds 0 1 2 --only "NAME"      # mean ± std of one configuration
    python benchmarks/ablation.py --tables-only [--seeds 0]         # redraw the tables from the JSON

The cache comes from `benchmarks/real_data.py` (or `aladin extract ../shared/data/coco --cache ... --val-size
200`); variants with their own encoder settings extract a cache of their own from --data, with the same images
and validation carve. Everything is chosen on the validation split and the test split is only reported. Each
variant trains into its own run folder (finished stages are reused on a rerun). Writes
benchmarks/results/ablation.{md,json} (or seeds.{md,json} with --seeds); a rerun of some variants or seeds
updates their rows and keeps the others.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from aladin import pipeline  # noqa: E402
from aladin.config import (  # noqa: E402
    DatasetSplitConfig,
    ImageEncoderConfig,
    RecipeConfig,
    TextEncoderConfig,
    config_from_dict,
    config_to_dict,
)
from aladin.encoders.cache import load_split  # noqa: E402
from aladin.fileio import atomic_write, read_json, write_json  # noqa: E402
from aladin.model.rerank import RerankSetting  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SHARED_COCO = Path(__file__).resolve().parents[1].parent / "shared/data/coco"
#: Validation images carved from train, as benchmarks/real_data.py carves them for the default cache.
VAL_SIZE = 200

#: The encoders every variant starts from: the single-scale 7×7 grid the first measurements used (multi-scale
#: regions, now the default of `aladin extract`, are the variant that won).
BASE_ENCODERS: dict[str, dict[str, Any]] = {"image_encoder": {"multiscale": False}}

#: The student of the ALADIN paper, which reads the teacher's contextualised features (`aladin train` now
#: defaults to the student on frozen features, which validation preferred).
CONTEXTUAL = {"matching_input": "contextual"}

#: Classifier tags on the single-scale grid with the shipped thresholds, cap and boxes (issue #28).
SINGLE_SCALE_TAGS: dict[str, Any] = {"multiscale": False, "classifier_tags": True}

#: Each variant changes the default recipe in one place (nested fields of RecipeConfig; the detectors student
#: comes with its own width, 512 as the demo uses it); "encoders" changes the encoder settings instead (a feature
#: cache of its own, extracted from --data with the same validation carve).
VARIANTS: dict[str, dict[str, Any]] = {
    "1 contextual layer, InfoNCE, contextual student (ALADIN's form)": {"model": CONTEXTUAL},
    "linear region×word head (0 layers)": {"model": {**CONTEXTUAL, "num_layers": 0}},
    "2 contextual layers": {"model": {**CONTEXTUAL, "num_layers": 2}},
    "learned word weights": {"model": {**CONTEXTUAL, "word_weights": True}},
    "InfoNCE, + hardest-negative hinge after 3 epochs": {
        "model": CONTEXTUAL,
        "alignment": {"loss": "infonce+hinge", "hinge_warmup_epochs": 3},
    },
    "student on frozen features": {"model": {"matching_input": "frozen"}},
    "detectors student (the demo's choice)": {
        "model": {**CONTEXTUAL, "matching_form": "detectors", "global_dim": 512}
    },
    "detectors student on frozen features": {
        "model": {"matching_input": "frozen", "matching_form": "detectors", "global_dim": 512}
    },
    "student on frozen features + learned word weights": {
        "model": {"matching_input": "frozen", "word_weights": True}
    },
    "student on frozen features + fine-tuned last text layer": {
        "model": {"matching_input": "frozen"},
        "encoders": {"text_encoder": {"finetune_layers": 1}},
    },
    "student on frozen features + augmented views (picture + 2 crops)": {
        "model": {"matching_input": "frozen"},
        "encoders": {"image_encoder": {"train_views": 3}},
    },
    "student on frozen features + multi-scale regions (7×7 + 14×14)": {
        "model": {"matching_input": "frozen"},
        "encoders": {"image_encoder": {"multiscale": True}},
    },
    "student on frozen features + classifier tags": {
        "model": {"matching_input": "frozen"},
        "encoders": {"image_encoder": SINGLE_SCALE_TAGS},
    },
    "student on frozen features + multi-scale regions (7×7 + 14×14) + classifier tags": {
        "model": {"matching_input": "frozen"},
        "encoders": {"image_encoder": {"multiscale": True, "classifier_tags": True}},
    },
    # the tag settings, chosen on validation (seed 0) on the single-scale grid, where a run takes a quarter
    # of the multi-scale one's time; the first tagged variant above holds the shipped settings
    "student on frozen features + classifier tags, each cell tag on its cells' box": {
        "model": {"matching_input": "frozen"},
        "encoders": {"image_encoder": {**SINGLE_SCALE_TAGS, "tag_boxes": "cell"}},
    },
    "student on frozen features + more classifier tags (cell p ≥ 0.15, up to 16 names, 40 pieces)": {
        "model": {"matching_input": "frozen"},
        "encoders": {
            "image_encoder": {
                **SINGLE_SCALE_TAGS,
                "tag_cell_min_p": 0.15,
                "max_tags": 16,
                "max_tag_tokens": 40,
            }
        },
    },
    "student on frozen features + fewer classifier tags (3 global p ≥ 0.05, cell p ≥ 0.5, up to 6 names)": {
        "model": {"matching_input": "frozen"},
        "encoders": {
            "image_encoder": {
                **SINGLE_SCALE_TAGS,
                "tag_global_top": 3,
                "tag_global_min_p": 0.05,
                "tag_cell_min_p": 0.5,
                "max_tags": 6,
                "max_tag_tokens": 16,
            }
        },
    },
    "detectors student on frozen features + multi-scale regions": {
        "model": {"matching_input": "frozen", "matching_form": "detectors", "global_dim": 512},
        "encoders": {"image_encoder": {"multiscale": True}},
    },
}

#: (column, scorer-name prefix as `pipeline.evaluate` names the rows)
SCORERS = (
    ("teacher", "alignment head"),
    ("distilled", "matching head (distill"),
    ("InfoNCE student", "matching head (InfoNCE"),
    ("re-rank", "matching + re-rank"),
    ("InfoNCE student + re-rank", "InfoNCE student + re-rank"),
    ("baseline", "linear global baseline"),
)


def recipe_for(overrides: dict[str, Any], seed: int) -> RecipeConfig:
    merged = config_to_dict(RecipeConfig())
    for section, values in overrides.items():
        if section != "encoders":
            merged[section].update(values)
    for stage in ("alignment", "matching", "baseline"):
        merged[stage]["seed"] = seed
    return config_from_dict(RecipeConfig, merged, "ablation variant")


def cache_for(overrides: dict[str, Any], default_cache: Path, data: Path, work: Path) -> Path:
    """The cache of this variant's encoder settings (BASE_ENCODERS plus its own): --cache when it holds them,
    else one extracted from --data into the work folder (reused when already there), refused unless it holds the
    default cache's images in each split (same data, same validation carve)."""
    own = overrides.get("encoders", {})
    wanted = [
        config_from_dict(cls, {**BASE_ENCODERS.get(side, {}), **own.get(side, {})}, f"encoders.{side}")
        for side, cls in (("image_encoder", ImageEncoderConfig), ("text_encoder", TextEncoderConfig))
    ]
    meta = load_split(default_cache, "train").meta
    stored = [
        config_from_dict(cls, meta[side], f"{default_cache} meta.{side}")
        for side, cls in (("image_encoder", ImageEncoderConfig), ("text_encoder", TextEncoderConfig))
    ]
    if stored == wanted:
        return default_cache
    slug = "-".join(f"{side}.{k}-{v}" for side, values in own.items() for k, v in values.items()) or "base"
    cache = work / "caches" / slug
    split_cfg = DatasetSplitConfig(val_size=VAL_SIZE, seed=0)
    pipeline.extract(data, cache, *wanted, split_cfg=split_cfg)
    for split in ("train", "val", "test"):
        if load_split(cache, split).image_ids != load_split(default_cache, split).image_ids:
            raise SystemExit(f"{cache}: its {split} split holds other images than {default_cache}'s")
    return cache


def run_folder(name: str, seed: int) -> str:
    """A folder name per variant and seed: readable, and with a digest of the whole name, since variants that
    share a long prefix (a setting added at the end) must not share a run folder."""
    readable = "".join(c if c.isalnum() else "-" for c in name.lower())[:60]
    return f"{readable}-{hashlib.sha1(name.encode()).hexdigest()[:8]}-seed{seed}"


def run_variant(cache: Path, run: Path, recipe: RecipeConfig) -> dict[str, Any]:
    """Train (or reuse) one variant, then score validation and test with every scorer."""
    started = time.perf_counter()
    report = pipeline.train(cache, run, recipe)
    train_s = sum(info["seconds"] or 0.0 for info in report.stages.values())
    row: dict[str, Any] = {"training_s": train_s, "wall_s": time.perf_counter() - started}
    for split in ("val", "test"):
        for result in pipeline.evaluate(cache, run, split=split, quiet=True):
            column = next((col for col, prefix in SCORERS if result.name.startswith(prefix)), None)
            if column is None:
                continue
            row.setdefault(column, {"name": result.name})[split] = result.metrics["rsum"]
            row[column]["ms_per_query"] = 1000 * result.seconds_per_query
    row["rerank_choice"] = RerankSetting.from_info(read_json(run / "model" / "config.json")["info"]).to_info()
    return row


def table(rows: dict[str, dict[str, Any]]) -> list[str]:
    timed = ("distilled", "re-rank", "teacher")
    header = (
        "| variant | "
        + " | ".join(f"{col} val / test" for col, _ in SCORERS)
        + " | training s | ms/query: "
        + " / ".join(timed)
        + " |"
    )
    lines = [header, "|---|" + "---:|" * (len(SCORERS) + 2)]
    for name, row in in_variant_order(rows).items():
        cells = []
        for col, _ in SCORERS:
            entry = row.get(col)
            cells.append(f"{entry['val']:.1f} / {entry['test']:.1f}" if entry else "")
        speed = " / ".join(f"{row[col]['ms_per_query']:.3g}" if col in row else "–" for col in timed)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {row['training_s']:.0f} | {speed} |")
    return lines


def seed_summary(rows: dict[str, dict[str, Any]]) -> list[str]:
    """Mean ± std over seeds of each variant's scorers, validation and test."""
    by_variant: dict[str, list[dict[str, Any]]] = {}
    for label, row in in_variant_order(rows).items():
        by_variant.setdefault(label.rsplit(" (seed ", 1)[0], []).append(row)
    lines = []
    for variant, runs in by_variant.items():
        lines += [f"*{variant}* ({len(runs)} seeds)", "", "| scorer | val rsum | test rsum | test per seed |"]
        lines.append("|---|---:|---:|---|")
        for col, _ in SCORERS:
            if not all(col in row for row in runs):
                continue
            cells = []
            for split in ("val", "test"):
                values = [row[col][split] for row in runs]
                spread = statistics.stdev(values) if len(values) > 1 else 0.0
                cells.append(f"{statistics.mean(values):.1f} ± {spread:.1f}")
            per_seed = ", ".join(f"{row[col]['test']:.1f}" for row in runs)
            lines.append(f"| {col} | {cells[0]} | {cells[1]} | {per_seed} |")
        lines.append("")
    return lines


def merged_with_earlier(
    path: Path, cache: Path, rows: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """A partial rerun updates its rows of the results file and keeps the others."""
    if not path.is_file():
        return rows
    earlier = read_json(path)
    if earlier.get("cache") != str(cache):
        raise SystemExit(f"{path}: rows measured on {earlier.get('cache')}, not {cache}; pass another --out")
    return {**earlier["rows"], **rows}


def in_variant_order(rows: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Rows in the order of VARIANTS (then seed), whatever order the JSON kept them in."""
    order = {name: i for i, name in enumerate(VARIANTS)}

    def position(label: str) -> tuple[int, str]:
        return order.get(label.rsplit(" (seed ", 1)[0], len(order)), label

    return {label: rows[label] for label in sorted(rows, key=position)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default="runs/real_data/cache", help="feature cache with train/val/test")
    parser.add_argument(
        "--data", default=str(SHARED_COCO), help="dataset for variants with their own encoders"
    )
    parser.add_argument("--work", default="runs/ablation", help="one run folder per variant goes here")
    parser.add_argument("--only", nargs="+", choices=list(VARIANTS), help="run only these variants")
    parser.add_argument("--seeds", nargs="+", type=int, help="repeat the chosen variant(s) over these seeds")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument(
        "--tables-only", action="store_true", help="rewrite the tables from the results JSON; train nothing"
    )
    args = parser.parse_args(argv)
    cache = Path(args.cache)
    if not (cache / "train").is_dir():
        print(f"no feature cache at {cache}: run benchmarks/real_data.py first")
        return 1
    names = [] if args.tables_only else args.only or list(VARIANTS)
    seeds = args.seeds or [0]
    stem = "seeds" if args.seeds else "ablation"
    rows: dict[str, dict[str, Any]] = {}
    for name in names:
        variant_cache = cache_for(VARIANTS[name], cache, Path(args.data), Path(args.work))
        for seed in seeds:
            label = name if not args.seeds else f"{name} (seed {seed})"
            rows[label] = run_variant(
                variant_cache, Path(args.work) / run_folder(name, seed), recipe_for(VARIANTS[name], seed)
            )
            rows[label]["cache"] = str(variant_cache)
            print(
                f"{label}: "
                + ", ".join(f"{c} {rows[label][c]['test']:.1f}" for c, _ in SCORERS if c in rows[label])
            )
            write_tables(Path(args.out), stem, cache, {label: rows[label]})
    if not names:  # --tables-only
        write_tables(Path(args.out), stem, cache, {})
    return 0


def write_tables(out: Path, stem: str, cache: Path, rows: dict[str, dict[str, Any]]) -> None:
    """Merge `rows` into the results file and redraw its tables: called after every finished row, so an
    interrupted run keeps what it measured."""
    rows = merged_with_earlier(out / f"{stem}.json", cache, rows)
    lines = [f"**{cache}: validation / test rsum per scorer**", "", *table(rows), ""]
    if stem == "seeds":
        lines += ["**Validation and test rsum over seeds**", "", *seed_summary(rows)]
    lines.append(
        "Re-rank: the depth (10–100) and the weight of the global score fused with the alignment score are chosen "
        "on validation per variant; 'training s' sums every stage of the variant (baseline included)."
    )
    atomic_write(out / f"{stem}.md", lambda tmp: tmp.write_text("\n".join(lines) + "\n"))
    write_json(out / f"{stem}.json", {"cache": str(cache), "variants": VARIANTS, "rows": rows})
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
