"""What each piece of the fine-grained head buys on real photos: one training run per variant, read against
the linear global baseline trained in the same run.

    python benchmarks/ablation.py [--cache runs/real_data/cache] [--work runs/ablation] [--only NAME ...]
    python benchmarks/ablation.py --seeds 0 1 2 --only "NAME"      # mean ± std of one configuration

The cache comes from `benchmarks/real_data.py` (or `aladin extract ../shared/data/coco --cache ... --val-size
200`): everything is chosen on its validation split and the test split is only reported. Each variant trains
into its own run folder (finished stages are reused on a rerun). Writes benchmarks/results/ablation.{md,json}
(or seeds.{md,json} with --seeds).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from aladin import pipeline  # noqa: E402
from aladin.config import RecipeConfig, config_from_dict, config_to_dict  # noqa: E402
from aladin.fileio import atomic_write, read_json, write_json  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

#: Each variant changes the default recipe in one place (nested fields of RecipeConfig).
VARIANTS: dict[str, dict[str, Any]] = {
    "default: 1 contextual layer, InfoNCE, contextual student": {},
    "linear region×word head (0 layers)": {"model": {"num_layers": 0}},
    "2 contextual layers": {"model": {"num_layers": 2}},
    "learned word weights": {"model": {"word_weights": True}},
    "InfoNCE, + hardest-negative hinge after 3 epochs": {
        "alignment": {"loss": "infonce+hinge", "hinge_warmup_epochs": 3}
    },
    "student on frozen features": {"model": {"matching_input": "frozen"}},
    "student on frozen features + learned word weights": {
        "model": {"matching_input": "frozen", "word_weights": True}
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
        merged[section].update(values)
    for stage in ("alignment", "matching", "baseline"):
        merged[stage]["seed"] = seed
    return config_from_dict(RecipeConfig, merged, "ablation variant")


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
    row["rerank_choice"] = read_json(run / "model" / "config.json")["info"].get("rerank")
    return row


def table(rows: dict[str, dict[str, Any]]) -> list[str]:
    header = "| variant | " + " | ".join(f"{col} val / test" for col, _ in SCORERS) + " | training s |"
    lines = [header, "|---|" + "---:|" * (len(SCORERS) + 1)]
    for name, row in rows.items():
        cells = []
        for col, _ in SCORERS:
            entry = row.get(col)
            cells.append(f"{entry['val']:.1f} / {entry['test']:.1f}" if entry else "")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {row['training_s']:.0f} |")
    return lines


def seed_summary(rows: dict[str, dict[str, Any]]) -> list[str]:
    lines = ["| scorer | test rsum mean ± std | per seed |", "|---|---:|---|"]
    for col, _ in SCORERS:
        values = [row[col]["test"] for row in rows.values() if col in row]
        if values:
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            per_seed = ", ".join(f"{v:.1f}" for v in values)
            lines.append(f"| {col} | {statistics.mean(values):.1f} ± {spread:.1f} | {per_seed} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default="runs/real_data/cache", help="feature cache with train/val/test")
    parser.add_argument("--work", default="runs/ablation", help="one run folder per variant goes here")
    parser.add_argument("--only", nargs="+", choices=list(VARIANTS), help="run only these variants")
    parser.add_argument("--seeds", nargs="+", type=int, help="repeat the chosen variant(s) over these seeds")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    cache = Path(args.cache)
    if not (cache / "train").is_dir():
        print(f"no feature cache at {cache}: run benchmarks/real_data.py first")
        return 1
    names = args.only or list(VARIANTS)
    seeds = args.seeds or [0]
    rows: dict[str, dict[str, Any]] = {}
    for name in names:
        for seed in seeds:
            label = name if len(seeds) == 1 else f"{name} (seed {seed})"
            slug = "".join(c if c.isalnum() else "-" for c in name.lower())[:60] + f"-seed{seed}"
            rows[label] = run_variant(cache, Path(args.work) / slug, recipe_for(VARIANTS[name], seed))
            print(
                f"{label}: "
                + ", ".join(f"{c} {rows[label][c]['test']:.1f}" for c, _ in SCORERS if c in rows[label])
            )
    stem = "seeds" if args.seeds else "ablation"
    lines = [f"**{cache}: validation / test rsum per scorer**", "", *table(rows), ""]
    if args.seeds:
        lines += ["**Test rsum over seeds**", "", *seed_summary(rows), ""]
    lines.append(
        "Re-rank: the depth (10–100) and the weight of the global score fused with the alignment score are chosen "
        "on validation per variant; 'training s' sums every stage of the variant (baseline included)."
    )
    out = Path(args.out)
    atomic_write(out / f"{stem}.md", lambda tmp: tmp.write_text("\n".join(lines) + "\n"))
    write_json(out / f"{stem}.json", {"cache": str(cache), "variants": VARIANTS, "rows": rows})
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
