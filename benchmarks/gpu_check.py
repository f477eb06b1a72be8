"""A short check that both training stages run on a CUDA GPU with AMP (bf16 autocast) and still learn.

    PYTHONPATH=src python benchmarks/gpu_check.py

Uses the structured random features of the test suite; prints validation rsum per stage (chance ≈ 48 for
100 images) and writes benchmarks/results/gpu_check.json. Exits 0 with a note when no GPU is present.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from feature_fixtures import make_features, tiny_config  # noqa: E402

from aladin.config import TrainConfig  # noqa: E402
from aladin.fileio import write_json  # noqa: E402
from aladin.model import AladinModel  # noqa: E402
from aladin.train.stages import train_alignment, train_matching  # noqa: E402


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 0
    device = torch.device("cuda")
    train, val = make_features(320, seed=1), make_features(100, seed=2)
    torch.manual_seed(0)
    model = AladinModel(tiny_config()).to(device)
    fast = dict(epochs=6, batch_size=32, lr=2e-3, warmup_steps=5, patience=0, amp=True)
    started = time.perf_counter()
    teacher = train_alignment(model, train, val, TrainConfig(**fast))
    student = train_matching(model, train, val, TrainConfig(stage="matching", loss="distill+infonce", **fast))
    result = {
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "alignment_val_rsum": teacher.best_val_rsum,
        "matching_val_rsum": student.best_val_rsum,
        "seconds": time.perf_counter() - started,
    }
    print(result)
    write_json(Path(__file__).resolve().parent / "results" / "gpu_check.json", result)
    return 0 if teacher.best_val_rsum > 100 and student.best_val_rsum > 100 else 1


if __name__ == "__main__":
    sys.exit(main())
