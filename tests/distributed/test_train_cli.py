"""`aladin train` unchanged under torchrun: two gloo ranks train on one cache and rank 0 alone writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from spawn_ranks import free_port

from aladin import pipeline
from aladin.data.synthetic import SyntheticConfig, generate_synthetic_dataset
from aladin.model import AladinModel


def test_aladin_train_under_torchrun_with_two_ranks(tmp_path: Path) -> None:
    generate_synthetic_dataset(tmp_path / "data", SyntheticConfig(seed=3, n_train=16, n_val=8, n_test=4))
    pipeline.extract(tmp_path / "data", tmp_path / "cache", batch_size=16)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
        "-m", "aladin", "train", "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "run"),
        "--alignment-epochs", "2", "--matching-epochs", "2", "--batch-size", "4", "--embed-dim", "32",
        "--rerank-k", "4", "--device", "cpu",
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    model = AladinModel.from_pretrained(tmp_path / "run" / "model")
    assert model.info["rerank"]["k"] == 4
    report = json.loads((tmp_path / "run" / "train_report.json").read_text())
    assert report["alignment head"]["epochs_run"] == 2
    leftovers = [
        p.name for p in (tmp_path / "run").rglob("*") if ".tmp" in p.name or p.name.endswith(".previous")
    ]
    assert not leftovers, leftovers  # no half-written folder from a second writer
