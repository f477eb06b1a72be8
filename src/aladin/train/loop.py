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
    """LR multiplier: linear warm-up, then cosine decay to zero."""
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
        return _fit(model, params, batch_loss, validate, num_items, cfg, desc, state_dir, on_train_mode)


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


def _fit(
    model: nn.Module,
    params: list[nn.Parameter],
    batch_loss: BatchLoss,
    validate: Callable[[], float],
    num_items: int,
    cfg: TrainConfig,
    desc: str,
    state_dir: Path | None,
    on_train_mode: Callable[[], None] | None,
) -> FitResult:
    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    world = distributed.world_size()
    steps_per_epoch = max(1, math.ceil(num_items / (cfg.batch_size * world)))
    total_steps = steps_per_epoch * cfg.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, cfg.warmup_steps, total_steps)
    )
    use_amp = cfg.amp and device.type == "cuda"
    best_rsum, best_epoch, start_epoch = -math.inf, -1, 0
    best_state: dict[str, torch.Tensor] = {}
    history: list[dict] = []
    if state_dir is not None and (state_dir / STATE_FILE).is_file():
        saved = _load_state(state_dir / STATE_FILE, cfg)
        load_state_strict(model, saved["model"], state_dir / STATE_FILE)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        best_rsum, best_epoch, best_state = saved["best_rsum"], saved["best_epoch"], saved["best_state"]
        history, start_epoch = saved["history"], saved["epoch"] + 1
        rng_states = saved["torch_rng"].reshape(-1, saved["torch_rng"].shape[-1])  # one row per saving rank
        if distributed.rank() < len(rng_states):  # dropout masks continue as in an uninterrupted run
            torch.set_rng_state(rng_states[distributed.rank()])
    step_loss = distributed_loss(model, batch_loss)
    started = time.perf_counter()
    for epoch in range(start_epoch, cfg.epochs):
        if best_epoch >= 0 and cfg.patience and epoch - best_epoch > cfg.patience:
            break
        model.train()
        if on_train_mode is not None:
            on_train_mode()
        generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
        order = torch.randperm(num_items, generator=generator)
        usable = (num_items // world) * world
        order = distributed.local_part(order[:usable])  # a DistributedSampler without padding
        bar = tqdm(
            range(0, len(order), cfg.batch_size),
            desc=f"{desc} epoch {epoch + 1}/{cfg.epochs}",
            leave=False,
            disable=not distributed.is_main_process(),
        )
        total, batches = 0.0, 0
        for start in bar:
            idx = order[start : start + cfg.batch_size]
            if len(idx) < 2:
                continue
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=use_amp):
                loss = step_loss(idx, generator, epoch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            total += float(loss.detach())
            batches += 1
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
        val_rsum = distributed.broadcast_from_main(float(validate()))  # every rank stops at the same epoch
        history.append({"epoch": epoch + 1, "loss": total / max(1, batches), "val_rsum": val_rsum})
        if distributed.is_main_process():
            tqdm.write(
                f"{desc} epoch {epoch + 1}: loss {history[-1]['loss']:.4f}, validation rsum {val_rsum:.1f}"
            )
        if val_rsum > best_rsum:
            best_rsum, best_epoch = val_rsum, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if state_dir is not None:
            _save_state(
                state_dir / STATE_FILE,
                model,
                optimizer,
                scheduler,
                epoch,
                best_rsum,
                best_epoch,
                best_state,
                history,
                cfg,
            )
    if best_state:
        model.load_state_dict(best_state)
    return FitResult(best_epoch + 1, best_rsum, len(history), time.perf_counter() - started, history)


def _save_state(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    epoch: int,
    best_rsum: float,
    best_epoch: int,
    best_state: dict,
    history: list[dict],
    cfg: TrainConfig,
) -> None:
    """Rank 0 writes the state (with every rank's RNG state) atomically; the other ranks wait until it is there."""
    rng_states = torch.stack(distributed.gather_objects(torch.get_rng_state()))
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "epoch": epoch,
        "best_rsum": best_rsum,
        "best_epoch": best_epoch,
        "best_state": best_state,
        "history": history,
        "torch_rng": rng_states,
        "train_config": config_to_dict(cfg),
    }
    distributed.on_main_process(lambda: atomic_write(path, lambda tmp: torch.save(state, tmp)))


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
