"""The verbs of aladin as Python functions (the CLI is a thin layer over these):
generate demo data → extract features → train both stages (+ baselines) → evaluate."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from aladin import distributed
from aladin.config import (
    AladinConfig,
    DatasetSplitConfig,
    ImageEncoderConfig,
    ModelConfig,
    RecipeConfig,
    RunConfig,
    TextEncoderConfig,
    config_from_dict,
    config_to_dict,
    first_difference,
    model_config_from_saved,
    recipe_from_saved,
    recipe_to_saved,
)
from aladin.data import Dataset
from aladin.encoders.cache import FeatureCache, extract_features, load_split
from aladin.errors import AladinError
from aladin.evaluate.calibration import (
    calibration_report,
    fit_calibration,
    plot_reliability,
    split_description,
)
from aladin.evaluate.metrics import ScorerResult
from aladin.evaluate.pointing import PointingResult, pointing_markdown, synthetic_targets
from aladin.evaluate.report import plot_recall_curves, print_results, results_markdown, write_results_json
from aladin.evaluate.scorers import (
    score_alignment,
    score_encoder_embeddings,
    score_linear_baseline,
    score_matching,
    score_rerank,
)
from aladin.fileio import atomic_write, read_json, write_json
from aladin.migrations import stored_version
from aladin.model import AladinModel, LinearGlobalModel
from aladin.model.calibration import CALIBRATION_FILE, Calibration
from aladin.model.features import FeatureTensors, embed_split
from aladin.model.rerank import has_setting
from aladin.train.run import (
    BASELINE_DIR,
    INFONCE_STUDENT_DIR,
    MODEL_DIR,
    TEACHER_DIR,
    TrainingRun,
    run_stages,
)

#: The demo's regions: the single-scale grid, which keeps set-up plus `aladin demo` within 15 minutes on 2 CPU
#: cores (multi-scale extraction and teacher training cost about 4× and 5× as much).
DEMO_IMAGE_ENCODER = ImageEncoderConfig(multiscale=False)


def demo_recipe() -> RecipeConfig:
    """The demo's heads, as its validation split chose them: on scenes where which colour goes with which shape
    decides the match, the distilled detectors student on the teacher's contextualised features scored 353.8
    rsum against 264.2 for `aladin train`'s default student (pooled frozen features, which real photos prefer:
    benchmarks/ablation.py), each measured by `aladin demo` (the run's train_report.json)."""
    return RecipeConfig(
        model=ModelConfig(matching_input="contextual", matching_form="detectors", global_dim=512)
    )


RECIPE_FILE = "recipe.json"


def resolve_device(name: str = "auto") -> torch.device:
    """ "auto" picks CUDA when present; asking for CUDA on a machine without it is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise AladinError(f"device {name!r}: CUDA is not available on this machine (use cpu or auto)")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise AladinError(f"device {name!r}: expected auto, cpu or cuda[:N]")
    return torch.device(name)


def load_dataset(
    data_dir: str | Path, split_cfg: DatasetSplitConfig | None = None, require_images: bool = True
) -> Dataset:
    """Read a dataset (folder, COCO, Karpathy, Flickr or CSV; detected) and make sure it has a validation split
    (carved from train when absent)."""
    from aladin.data.readers import load_dataset as read_any

    return read_any(Path(data_dir), require_images=require_images).with_validation_split(split_cfg)


def extract(
    data_dir: str | Path,
    cache_dir: str | Path,
    image_encoder: ImageEncoderConfig | None = None,
    text_encoder: TextEncoderConfig | None = None,
    batch_size: int = 32,
    split_cfg: DatasetSplitConfig | None = None,
) -> FeatureCache:
    """Run the frozen encoders over every image and caption once, into a float16 cache."""
    from aladin.encoders.image import build_image_encoder
    from aladin.encoders.text import build_text_encoder

    distributed.init_from_env()  # first, so that "cuda" below means this rank's GPU under torchrun
    image_cfg, text_cfg = image_encoder or ImageEncoderConfig(), text_encoder or TextEncoderConfig()
    # precomputed regions stand in for the pictures, which then need not be on disk
    dataset = load_dataset(data_dir, split_cfg, require_images=image_cfg.name != "precomputed")
    device = resolve_device()
    return extract_features(
        dataset,
        build_image_encoder(image_cfg, device),
        build_text_encoder(text_cfg, device),
        Path(cache_dir),
        batch_size=batch_size,
    )


def _load_tensors(
    cache_dir: Path, split: str, config: AladinConfig | None = None
) -> tuple[FeatureTensors, dict[str, Any]]:
    """A cached split in RAM; with a model config, features from other encoder settings are refused."""
    cached = load_split(
        cache_dir, split, config.image_encoder if config else None, config.text_encoder if config else None
    )
    return FeatureTensors.from_arrays(cached.arrays), cached.meta


@dataclass
class TrainReport:
    """Where the trained models went and what each stage measured on validation."""

    run_dir: Path
    stages: dict[str, dict[str, Any]]


def train(
    cache_dir: str | Path,
    run_dir: str | Path,
    recipe: RecipeConfig | None = None,
    settings: RunConfig | None = None,
) -> TrainReport:
    """Train the linear baseline, the alignment head, then its students; checkpoints go under `run_dir`.

    Each stage keeps the epoch with the best validation rsum; the test split is never read. A rerun with the
    same recipe resumes unfinished stages and skips finished ones, whatever its run `settings` (the device).
    Under torchrun every rank trains on its share of each global batch and rank 0 alone writes.
    """
    distributed.init_from_env()  # first, so that "cuda" below means this rank's GPU under torchrun
    recipe, settings = recipe or RecipeConfig(), settings or RunConfig()
    run = _prepare_run(Path(cache_dir), Path(run_dir), recipe, resolve_device(settings.device))
    stages = run_stages(run)
    distributed.on_main_process(lambda: write_json(run.run_dir / "train_report.json", stages))
    return TrainReport(run.run_dir, stages)


def _prepare_run(cache_dir: Path, run_dir: Path, recipe: RecipeConfig, device: torch.device) -> TrainingRun:
    """Load the cached features, refuse a run folder holding another recipe or teacher, record the recipe."""
    train_feats, meta = _load_tensors(cache_dir, "train")
    val_feats, _ = _load_tensors(cache_dir, "val")
    model_cfg = replace(
        recipe.model,
        image_feature_dim=int(meta["image_feature_dim"]),  # after any fine-tuned encoder tail
        text_feature_dim=int(meta["text_feature_dim"]),
        box_dim=int(train_feats.boxes.shape[-1]),
    )
    config = AladinConfig(
        image_encoder=config_from_dict(ImageEncoderConfig, meta["image_encoder"], "cache meta.image_encoder"),
        text_encoder=config_from_dict(TextEncoderConfig, meta["text_encoder"], "cache meta.text_encoder"),
        model=model_cfg,
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    _refuse_other_recipe(
        run_dir, recipe, "use a new --out folder (finished stages are reused only with the same settings)"
    )
    teacher_dir = run_dir / TEACHER_DIR
    if (teacher_dir / "config.json").is_file():  # before anything is written or trained
        header = read_json(teacher_dir / "config.json")
        saved = model_config_from_saved(header["config"], stored_version(header), str(teacher_dir))
        if saved != config:  # its students would take the architecture the teacher was saved with
            diff = first_difference(config_to_dict(saved), config_to_dict(config), "config")
            raise AladinError(
                f"{teacher_dir}: saved with other settings than this recipe and cache ({diff}); use a new --out "
                "folder, or the cache it was trained on"
            )
    distributed.on_main_process(lambda: write_json(run_dir / RECIPE_FILE, recipe_to_saved(recipe)))
    return TrainingRun(run_dir, recipe, device, train_feats, val_feats, config)


def _refuse_other_recipe(run_dir: Path, recipe: RecipeConfig, remedy: str) -> None:
    """A run folder holds one recipe's stages: another recipe is refused, naming the first setting that differs."""
    recipe_path = run_dir / RECIPE_FILE
    # read back through its schema's migrations: settings added since that run count as what that run did
    stored = recipe_path.is_file() and recipe_from_saved(read_json(recipe_path), str(recipe_path))
    if stored and stored != recipe:
        diff = first_difference(config_to_dict(stored), config_to_dict(recipe), "recipe")
        raise AladinError(
            f"{recipe_path}: this run folder was trained with another recipe ({diff}); {remedy}"
        )


def evaluate(
    cache_dir: str | Path,
    run_dir: str | Path,
    split: str = "test",
    rerank_k: int | None = None,
    out_dir: str | Path | None = None,
    console: Console | None = None,
    quiet: bool = False,
) -> list[ScorerResult]:
    """Score `split` with every scorer (and the baseline), print the table, write JSON + recall plot.

    `run_dir` is a run folder from `train` (every row), or a single model checkpoint folder (its own rows).
    """
    run_dir = Path(run_dir)
    model = AladinModel.from_pretrained(_student_dir(run_dir))
    feats, _ = _load_tensors(Path(cache_dir), split, model.config)
    caption_image = feats.caption_image.numpy()

    def rerank_row(
        student: AladinModel, image: Any, text: Any, label: str
    ) -> tuple[ScorerResult, int, float]:
        """`student`'s kNN re-ranked as chosen on validation at training time (`rerank_k` overrides the depth)."""
        setting = student.rerank
        k = rerank_k or setting.depth
        name = f"{label} + {setting.describe(k)}"
        return score_rerank(student, image, text, caption_image, k, name, setting.fusion), k, setting.fusion

    image, text = embed_split(model, feats)
    results = [score_alignment(model, image, text, caption_image, "alignment head (teacher, all pairs)")]
    student_loss = model.info.get("student_loss", "distill")
    results.append(score_matching(image, text, caption_image, f"matching head ({student_loss})"))
    reranked, k, fusion = rerank_row(model, image, text, "matching")
    results.append(reranked)
    if (run_dir / INFONCE_STUDENT_DIR / "config.json").is_file():
        infonce = AladinModel.from_pretrained(run_dir / INFONCE_STUDENT_DIR)
        img_s, txt_s = embed_split(infonce, feats)
        results.append(
            score_matching(img_s, txt_s, caption_image, "matching head (InfoNCE, no distillation)")
        )
        if has_setting(infonce.info):
            results.append(rerank_row(infonce, img_s, txt_s, "InfoNCE student")[0])
    if (run_dir / BASELINE_DIR / "config.json").is_file():
        results.append(
            score_linear_baseline(LinearGlobalModel.from_pretrained(run_dir / BASELINE_DIR), feats)
        )
    zero_training = score_encoder_embeddings(feats)  # None unless both encoders share a space (CLIP, SigLIP)
    if zero_training is not None:
        results.append(zero_training)
    title = f"{split} split: {feats.num_images} images, {feats.num_captions} captions"
    console = console or Console(width=max(Console().width, 130))
    if not quiet:
        # wide enough for the scorer names even when stdout is not a terminal (logs, CI)
        print_results(results, title, console=console)
    meta = {"split": split, "rerank_k": k, "rerank_fusion": fusion, "run_dir": str(run_dir)}
    out_dir = Path(out_dir) if out_dir else run_dir / f"eval-{split}"
    calibration = calibration_report(model, feats)
    if calibration is not None:
        meta["calibration"] = calibration.to_json()
        plot_reliability(calibration, out_dir / "reliability.png")
    if not quiet:
        console.print(calibration.line() if calibration else "no calibration: hits carry no confidence")
    _write_results(results, title, meta, out_dir, calibration.line() if calibration else "")
    return results


def calibrate(
    cache_dir: str | Path, model_dir: str | Path, split: str = "val", console: Console | None = None
) -> Calibration:
    """Fit (or refit) the calibration of an existing checkpoint on a cached split (validation: never the split
    it is evaluated on) and save it beside the checkpoint's config.json."""
    model_dir = _student_dir(Path(model_dir))
    # without the old file, which is replaced whatever it held (it may fit other weights)
    model = AladinModel.from_pretrained(model_dir, calibrated=False)
    feats, _ = _load_tensors(Path(cache_dir), split, model.config)
    fitted = fit_calibration(model, feats, split_description(split, feats))
    fitted.save(model_dir)
    console = console or Console(width=max(Console().width, 130))
    for key, curve in sorted(fitted.curves.items()):
        cv = curve.validation["cv_ece"]
        console.print(
            f"{key}: {curve.method} (cross-validated ECE on {split}: isotonic {cv['isotonic']:.3f}, "
            f"Platt {cv['platt']:.3f}; {curve.validation['positives']} true matches in "
            f"{curve.validation['samples']} hits)"
        )
    console.print(f"saved {model_dir / CALIBRATION_FILE}")
    return fitted


def _student_dir(run_dir: Path) -> Path:
    """The student `evaluate` scores: a run folder's distilled student, or a bare checkpoint folder itself."""
    if (run_dir / "config.json").is_file() and not (run_dir / MODEL_DIR).exists():
        return run_dir  # a bare checkpoint: no baseline or ablation beside it
    if (run_dir / MODEL_DIR / "config.json").is_file():
        return run_dir / MODEL_DIR
    raise AladinError(f"{run_dir}: neither a run folder (with {MODEL_DIR}/) nor a model checkpoint")


def _write_results(
    results: list[ScorerResult], title: str, meta: dict[str, Any], out_dir: Path, note: str = ""
) -> None:
    """results.json, results.md (with `note` below the table) and recall.png in `out_dir`."""
    write_results_json(out_dir / "results.json", results, meta)
    markdown = results_markdown(results, title) + (f"\n{note}\n" if note else "")
    atomic_write(out_dir / "results.md", lambda tmp: tmp.write_text(markdown))
    plot_recall_curves(results, out_dir / "recall.png")


def evaluate_on_data(
    data_dir: str | Path,
    model_dir: str | Path,
    cache_dir: str | Path,
    split: str = "test",
    rerank_k: int | None = None,
    out_dir: str | Path | None = None,
    quiet: bool = False,
) -> list[ScorerResult]:
    """Check a trained model on any dataset folder: extract it with the model's own encoders, then evaluate."""
    model_cfg = AladinModel.from_pretrained(model_dir).config
    dataset = load_dataset(
        data_dir,
        DatasetSplitConfig(val_fraction=0.0),
        require_images=model_cfg.image_encoder.name != "precomputed",
    )
    if split not in dataset.split_names():
        raise AladinError(f"{data_dir}: no {split!r} split (found: {', '.join(dataset.split_names())})")
    from aladin.encoders.image import build_image_encoder
    from aladin.encoders.text import build_text_encoder

    device = resolve_device()
    extract_features(
        dataset.split(split),
        build_image_encoder(model_cfg.image_encoder, device),
        build_text_encoder(model_cfg.text_encoder, device),
        Path(cache_dir),
    )
    return evaluate(
        cache_dir, model_dir, split, rerank_k, out_dir or Path(cache_dir) / f"eval-{split}", quiet=quiet
    )


def demo(
    work_dir: str | Path = "runs/demo", recipe: RecipeConfig | None = None, seed: int = 0
) -> list[ScorerResult]:
    """The main job on the embedded default: synthetic scenes → features → both stages → test table."""
    from aladin.data.synthetic import SyntheticConfig, generate_synthetic_dataset

    work_dir = Path(work_dir)
    recipe = recipe or demo_recipe()
    # before minutes of generation and extraction: a run folder from an earlier demo recipe is not reused
    _refuse_other_recipe(work_dir / "run", recipe, f"delete {work_dir / 'run'} or use another --work-dir")
    started = time.perf_counter()
    generate_synthetic_dataset(work_dir / "data", SyntheticConfig(seed=seed))
    extract(work_dir / "data", work_dir / "cache", DEMO_IMAGE_ENCODER)
    train(work_dir / "cache", work_dir / "run", recipe)
    results = evaluate(work_dir / "cache", work_dir / "run")
    report_pointing(work_dir / "data", work_dir / "cache", work_dir / "run")
    Console().print(f"demo finished in {time.perf_counter() - started:.0f} s; results in {work_dir / 'run'}")
    return results


def pointing_game(
    data_dir: str | Path, cache_dir: str | Path, run_dir: str | Path, split: str = "test"
) -> list[PointingResult]:
    """How well the run's explanation maps point at the objects the words name, on a generated synthetic split:
    each way of making the maps (`aladin.search.explain.split_word_maps`) plays the pointing game."""
    from aladin.encoders.text import build_text_encoder
    from aladin.search.explain import split_word_maps

    model = AladinModel.from_pretrained(Path(run_dir) / MODEL_DIR)
    cached = load_split(Path(cache_dir), split, model.config.image_encoder, model.config.text_encoder)
    feats = FeatureTensors.from_arrays(cached.arrays)
    owners = [cached.image_ids[i] for i in cached.caption_image.tolist()]
    targets = synthetic_targets(data_dir, owners, cached.captions)
    text_encoder = build_text_encoder(model.config.text_encoder, next(model.parameters()).device)
    results = []
    for name, maps in split_word_maps(model, text_encoder, feats, cached.captions).items():
        result = PointingResult(name)
        for t, (words, found) in enumerate(zip(maps, targets, strict=True)):
            owner = int(feats.caption_image[t])
            result.add(words, feats.boxes[owner][feats.region_mask[owner]].numpy(), found)
        results.append(result)
    return results


def report_pointing(data_dir: Path, cache_dir: Path, run_dir: Path, split: str = "test") -> None:
    """The pointing game beside the retrieval results of `evaluate` (run_dir/eval-<split>/results.{md,json})."""
    results = pointing_game(data_dir, cache_dir, run_dir, split)
    title = f"{split} split: does a word's explanation peak inside the object it names? (pointing game)"
    table = pointing_markdown(results, title)
    Console(width=max(Console().width, 130)).print(table, markup=False)
    out_dir = run_dir / f"eval-{split}"
    saved = read_json(out_dir / "results.json")
    write_json(out_dir / "results.json", {**saved, "pointing": [r.to_json() for r in results]})
    markdown = (out_dir / "results.md").read_text()
    atomic_write(out_dir / "results.md", lambda tmp: tmp.write_text(markdown + "\n" + table))
