"""One generic training loop for every stage: AdamW, warm-up + cosine, clipping, AMP on GPU, validation-based
early stopping, and resume from the last finished epoch.

Under torchrun the loss runs inside DistributedDataParallel: each rank takes its strided share of every global
batch (the batch size is per rank), the stages gather what their losses compare across ranks, and rank 0 alone
writes the training state.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from aladin import distributed
from aladin.checkpoint import load_state_strict
from aladin.config import TrainConfig, config_to_dict
from aladin.errors import CheckpointError
from aladin.fileio import atomic_write

STATE_FILE = "training_state.pt"

BatchLoss = Callable[[torch.Tensor, torch.Generator, int], torch.Tensor]


def seed_everything(seed: int) -> None:
    """Same seed, same run: Python, NumPy and torch generators (offset per rank under torch.distributed)."""
    seed = seed + distributed.rank()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class FitResult:
    """What a stage reports: the epoch kept (best on validation) and how long it took."""

    best_epoch: int
    best_val_rsum: float
    epochs_run: int
    seconds: float
    history: list[dict] = field(default_factory=list)


class _LossModule(nn.Module):
    """A batch loss as the forward of a module holding the model, the form DistributedDataParallel wraps."""

    def __init__(self, model: nn.Module, batch_loss: BatchLoss) -> None:
        super().__init__()
        self.model = model
        self.batch_loss = batch_loss

    def forward(self, indices: torch.Tensor, generator: torch.Generator, epoch: int) -> torch.Tensor:
        return self.batch_loss(indices, generator, epoch)


def distributed_loss(model: nn.Module, batch_loss: BatchLoss) -> Callable[..., torch.Tensor]:
    """`batch_loss` wrapped so that, under torch.distributed, backward averages the gradients over ranks (DDP).

    Only parameters that require gradients are synchronised, and each of them must take part in every loss.
    With one process `batch_loss` itself is returned.
    """
    if not distributed.is_distributed():
        return batch_loss
    return DistributedDataParallel(_LossModule(model, batch_loss))


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """LR multiplier: linear warm-up, then cosine decay to zero.

    Not transformers' get_cosine_schedule_with_warmup: its warm-up starts at 0 (the first step learns nothing)
    where this one reaches 1/warmup, and it rises again past `total`; saved training states also hold this
    LambdaLR's state, so runs resume on the schedule they started with (tests/train/test_training.py).
    """
    if step < warmup:
        return (step + 1) / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def fit(
    model: nn.Module,
    params: list[nn.Parameter],
    batch_loss: BatchLoss,
    validate: Callable[[], float],
    num_items: int,
    cfg: TrainConfig,
    desc: str,
    state_dir: Path | None = None,
    on_train_mode: Callable[[], None] | None = None,
) -> FitResult:
    """Train `params` of `model` on shuffled batches of item indices; keep the weights of the best validation epoch.

    `batch_loss(indices, generator, epoch)` returns the scalar loss of one batch; `validate()` returns the validation
    rsum. With `state_dir`, the state after each epoch is saved there and a rerun resumes from it (on any number
    of ranks). Parameters of `model` outside `params` are frozen meanwhile.
    """
    seed_everything(cfg.seed)
    with train_only(model, params):
        trainer = _Trainer(model, params, batch_loss, num_items, cfg, desc, on_train_mode)
        return trainer.run(validate, state_dir / STATE_FILE if state_dir is not None else None)


@contextmanager
def train_only(model: nn.Module, params: list[nn.Parameter]) -> Iterator[None]:
    """Freeze `model`'s parameters outside `params` meanwhile, so DDP synchronises exactly the trained ones."""
    trained = {id(p) for p in params}
    frozen = [p for p in model.parameters() if p.requires_grad and id(p) not in trained]
    for p in frozen:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(True)


@dataclass
class _Progress:
    """What the epochs so far leave behind, and what a saved training state restores."""

    next_epoch: int = 0
    best_rsum: float = -math.inf
    best_epoch: int = -1
    best_state: dict[str, torch.Tensor] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)

    def patience_ran_out(self, patience: int) -> bool:
        return self.best_epoch >= 0 and patience > 0 and self.next_epoch - self.best_epoch > patience

    def record(self, model: nn.Module, loss: float, val_rsum: float) -> None:
        """Epoch `next_epoch` finished: note it, keeping the weights when validation improved."""
        epoch = self.next_epoch
        self.history.append({"epoch": epoch + 1, "loss": loss, "val_rsum": val_rsum})
        if val_rsum > self.best_rsum:
            self.best_rsum, self.best_epoch = val_rsum, epoch
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.next_epoch = epoch + 1


class _Trainer:
    """AdamW with warm-up + cosine over `params` of `model`, one epoch at a time, saving and resuming its state."""

    def __init__(
        self,
        model: nn.Module,
        params: list[nn.Parameter],
        batch_loss: BatchLoss,
        num_items: int,
        cfg: TrainConfig,
        desc: str,
        on_train_mode: Callable[[], None] | None,
    ) -> None:
        self.model, self.params, self.cfg, self.desc = model, params, cfg, desc
        self.num_items, self.on_train_mode = num_items, on_train_mode
        self.world = distributed.world_size()
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        steps_per_epoch = max(1, math.ceil(num_items / (cfg.batch_size * self.world)))
        total_steps = steps_per_epoch * cfg.epochs
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: warmup_cosine(step, cfg.warmup_steps, total_steps)
        )
        self.use_amp = cfg.amp and next(model.parameters()).device.type == "cuda"
        self.batch_loss = batch_loss

    def run(self, validate: Callable[[], float], state_path: Path | None) -> FitResult:
        """Epochs until `cfg.epochs` or patience runs out; the model ends with its best validation weights."""
        progress = (
            self._resume(state_path) if state_path is not None and state_path.is_file() else _Progress()
        )
        step_loss = distributed_loss(self.model, self.batch_loss)
        started = time.perf_counter()
        while progress.next_epoch < self.cfg.epochs and not progress.patience_ran_out(self.cfg.patience):
            epoch = progress.next_epoch
            loss = self._train_epoch(step_loss, epoch)
            val_rsum = distributed.broadcast_from_main(
                float(validate())
            )  # every rank stops at the same epoch
            progress.record(self.model, loss, val_rsum)
            if distributed.is_main_process():
                tqdm.write(f"{self.desc} epoch {epoch + 1}: loss {loss:.4f}, validation rsum {val_rsum:.1f}")
            if state_path is not None:
                self._save(state_path, progress)
        if progress.best_state:
            self.model.load_state_dict(progress.best_state)
        return FitResult(
            progress.best_epoch + 1,
            progress.best_rsum,
            len(progress.history),
            time.perf_counter() - started,
            progress.history,
        )

    def _train_epoch(self, step_loss: Callable[..., torch.Tensor], epoch: int) -> float:
        """One pass over this rank's share of a seeded shuffle; returns the mean batch loss."""
        self.model.train()
        if self.on_train_mode is not None:
            self.on_train_mode()
        cfg = self.cfg
        generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
        order = torch.randperm(self.num_items, generator=generator)
        usable = (self.num_items // self.world) * self.world
        order = distributed.local_part(order[:usable])  # a DistributedSampler without padding
        bar = tqdm(
            range(0, len(order), cfg.batch_size),
            desc=f"{self.desc} epoch {epoch + 1}/{cfg.epochs}",
            leave=False,
            disable=not distributed.is_main_process(),
        )
        total, batches = 0.0, 0
        for start in bar:
            idx = order[start : start + cfg.batch_size]
            if len(idx) < 2:
                continue
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=self.use_amp):
                loss = step_loss(idx, generator, epoch)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            total += float(loss.detach())
            batches += 1
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}")
        return total / max(1, batches)

    def _save(self, path: Path, progress: _Progress) -> None:
        """Rank 0 writes the state (with every rank's RNG state) atomically; the other ranks wait until it is
        there."""
        rng_states = torch.stack(distributed.gather_objects(torch.get_rng_state()))
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": progress.next_epoch - 1,
            "best_rsum": progress.best_rsum,
            "best_epoch": progress.best_epoch,
            "best_state": progress.best_state,
            "history": progress.history,
            "torch_rng": rng_states,
            "train_config": config_to_dict(self.cfg),
        }
        distributed.on_main_process(lambda: atomic_write(path, lambda tmp: torch.save(state, tmp)))

    def _resume(self, path: Path) -> _Progress:
        saved = _load_state(path, self.cfg)
        load_state_strict(self.model, saved["model"], path)
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        rng_states = saved["torch_rng"].reshape(-1, saved["torch_rng"].shape[-1])  # one row per saving rank
        if distributed.rank() < len(rng_states):  # dropout masks continue as in an uninterrupted run
            torch.set_rng_state(rng_states[distributed.rank()])
        return _Progress(
            saved["epoch"] + 1, saved["best_rsum"], saved["best_epoch"], saved["best_state"], saved["history"]
        )


def _load_state(path: Path, cfg: TrainConfig) -> dict:
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is reported the same way
        raise CheckpointError(f"{path}: unreadable training state ({exc})") from exc
    if saved.get("train_config") != config_to_dict(cfg):
        raise CheckpointError(
            f"{path}: saved with a different training config; delete it or use the same settings"
        )
    return copy.deepcopy(saved)
