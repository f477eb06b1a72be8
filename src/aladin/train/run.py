"""One training run as a loop over stage specs: the linear baseline, the alignment head (teacher), the InfoNCE
student (the no-distillation ablation) and the distilled student, each saved in its own folder of the run."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from aladin import distributed
from aladin.config import AladinConfig, RecipeConfig, TrainConfig
from aladin.evaluate.calibration import fit_calibration, split_description
from aladin.evaluate.scorers import choose_rerank
from aladin.fileio import read_json
from aladin.model import AladinModel
from aladin.model.calibration import CALIBRATION_FILE
from aladin.model.features import FeatureTensors, embed_split
from aladin.model.rerank import RerankSetting, depths_to_try, has_setting
from aladin.train.stages import train_alignment, train_linear_baseline, train_matching

MODEL_DIR = "model"
INFONCE_STUDENT_DIR = "model-infonce-student"
BASELINE_DIR = "linear-baseline"
TEACHER_DIR = "alignment-teacher"


@dataclass
class TrainingRun:
    """What every stage of one `train` call reads: the run folder, recipe, device, features and the teacher."""

    run_dir: Path
    recipe: RecipeConfig
    device: torch.device
    train_feats: FeatureTensors
    val_feats: FeatureTensors
    config: AladinConfig
    teacher: AladinModel | None = None

    def state_dir(self, name: str) -> Path:
        """Where a stage keeps its resumable training state."""
        return self.run_dir / "training-state" / name

    def trained_teacher(self) -> AladinModel:
        """The alignment head this run trained, or the one saved by an earlier call."""
        if self.teacher is None:
            self.teacher = AladinModel.from_pretrained(self.run_dir / TEACHER_DIR, self.device)
        return self.teacher

    def rerank_choice(self, student: AladinModel) -> RerankSetting:
        """Re-rank depth and fusion weight for this student, chosen on validation."""
        val_image, val_text = embed_split(student, self.val_feats)
        depths = depths_to_try(self.recipe.rerank_k)
        return choose_rerank(student, val_image, val_text, self.val_feats.caption_image.numpy(), depths)


def _fit_baseline(run: TrainingRun, folder: Path) -> None:
    baseline, result = train_linear_baseline(run.train_feats, run.val_feats, run.recipe.baseline)
    distributed.on_main_process(lambda: baseline.save_pretrained(folder, {"fit": result.__dict__}))


def _fit_teacher(run: TrainingRun, folder: Path) -> None:
    torch.manual_seed(run.recipe.alignment.seed)
    model = AladinModel(run.config).to(run.device)
    result = train_alignment(
        model, run.train_feats, run.val_feats, run.recipe.alignment, run.state_dir("alignment")
    )
    distributed.on_main_process(lambda: model.save_pretrained(folder, {"fit": result.__dict__}))
    run.teacher = model


def _fit_student(run: TrainingRun, folder: Path, student: AladinModel, cfg: TrainConfig, state: str) -> None:
    """Stage 2 on `student` (a copy of the teacher, or the teacher itself), saved with its re-rank choice."""
    result = train_matching(student, run.train_feats, run.val_feats, cfg, run.state_dir(state))
    info = run.rerank_choice(student).into({"fit": result.__dict__, "student_loss": cfg.loss})
    distributed.on_main_process(lambda: student.save_pretrained(folder, info))


def _fit_infonce_student(run: TrainingRun, folder: Path) -> None:
    """The no-distillation ablation: a copy of the teacher whose student trains with plain InfoNCE."""
    cfg = replace(run.recipe.matching, loss="infonce")
    _fit_student(run, folder, copy.deepcopy(run.trained_teacher()), cfg, "infonce-student")


def _fit_distilled_student(run: TrainingRun, folder: Path) -> None:
    _fit_student(run, folder, run.trained_teacher(), run.recipe.matching, "distilled-student")


@dataclass(frozen=True)
class StageSpec:
    """One stage of `train`: its report row, its checkpoint folder in the run, and how it is trained."""

    label: str
    folder: str
    fit: Callable[[TrainingRun, Path], None]
    #: Students carry the re-rank setting chosen on validation (recorded for those saved before it was).
    student: bool = False


def stage_specs(recipe: RecipeConfig) -> list[StageSpec]:
    """The stages in training order: the baseline, the teacher, then its students."""
    specs = [
        StageSpec("linear baseline", BASELINE_DIR, _fit_baseline),
        StageSpec("alignment head", TEACHER_DIR, _fit_teacher),
    ]
    if recipe.train_infonce_student:
        specs.append(
            StageSpec("matching head (InfoNCE student)", INFONCE_STUDENT_DIR, _fit_infonce_student, True)
        )
    specs.append(
        StageSpec(f"matching head ({recipe.matching.loss})", MODEL_DIR, _fit_distilled_student, True)
    )
    return specs


def record_rerank_choice(run: TrainingRun, checkpoint: Path) -> None:
    """For students saved before the re-rank setting was chosen at training time."""
    if not has_setting(read_json(checkpoint / "config.json")["info"]):
        student = AladinModel.from_pretrained(checkpoint, run.device)
        info = run.rerank_choice(student).into(student.info)
        distributed.on_main_process(lambda: student.save_pretrained(checkpoint, info))


def record_calibration(run: TrainingRun, checkpoint: Path) -> None:
    """Fit the student's score → P(true match) map on validation, once (after its re-rank setting, which the
    served score depends on): `calibration.json` in its folder."""
    if not (checkpoint / CALIBRATION_FILE).is_file():
        student = AladinModel.from_pretrained(checkpoint, run.device, calibrated=False)
        calibration = fit_calibration(student, run.val_feats, split_description("val", run.val_feats))
        distributed.on_main_process(lambda: calibration.save(checkpoint))


def run_stages(run: TrainingRun) -> dict[str, dict[str, Any]]:
    """Train every stage of `run.recipe` not yet saved in the run folder; each stage's validation summary."""
    stages: dict[str, dict[str, Any]] = {}
    for spec in stage_specs(run.recipe):
        folder = run.run_dir / spec.folder
        if not (folder / "config.json").is_file():
            spec.fit(run, folder)
        if spec.student:
            record_rerank_choice(run, folder)
            record_calibration(run, folder)
        stages[spec.label] = fit_info(folder)
    return stages


def fit_info(checkpoint_dir: Path) -> dict[str, Any]:
    """What a stage's checkpoint records about its fit."""
    fit = read_json(checkpoint_dir / "config.json")["info"].get("fit", {})
    return {k: fit.get(k) for k in ("best_epoch", "best_val_rsum", "epochs_run", "seconds")}
