"""The whole pipeline on a real image–caption dataset: train on train, select on validation, report on test.

    python benchmarks/real_data.py [--data ../shared/data/coco] [--work runs/real_data]
    python benchmarks/real_data.py --image-encoder hf:PATH --text-encoder hf:PATH   # e.g. a local CLIP folder

The dataset folder has train and test splits (a validation split is carved from train, seeded). Writes
benchmarks/results/real_data.{md,json}: every scorer's recall, rsum and query time, with training time per
stage, read against the linear global baseline trained in the same run (and, when both encoders come from one
CLIP or SigLIP folder, against their own embeddings before any training).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from aladin import pipeline  # noqa: E402
from aladin.cli.options import encoder_name  # noqa: E402
from aladin.config import (  # noqa: E402
    DatasetSplitConfig,
    ImageEncoderConfig,
    TextEncoderConfig,
    config_to_dict,
)
from aladin.evaluate.report import results_markdown  # noqa: E402
from aladin.fileio import atomic_write, write_json  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", default=str(Path(__file__).resolve().parents[1].parent / "shared/data/coco")
    )
    parser.add_argument("--work", default="runs/real_data", help="cache and run folders go here")
    parser.add_argument("--val-size", type=int, default=200, help="validation images carved from train")
    parser.add_argument("--out", default=str(RESULTS), help="folder for real_data.md / real_data.json")
    parser.add_argument(
        "--image-encoder",
        type=encoder_name,
        default=ImageEncoderConfig.name,
        help="bundled name or hf:PATH (a local HF folder)",
    )
    parser.add_argument(
        "--text-encoder",
        type=encoder_name,
        default=TextEncoderConfig.name,
        help="bundled name or hf:PATH (a local HF folder)",
    )
    args = parser.parse_args(argv)
    data = Path(args.data)
    if not (data / "captions.jsonl").is_file():
        print(f"no dataset at {data} (expected captions.jsonl); nothing to benchmark")
        return 0
    work = Path(args.work)
    started = time.perf_counter()
    # the single-scale grid: the base cache benchmarks/ablation.py starts from (multi-scale is its own variant)
    image_cfg = ImageEncoderConfig(name=args.image_encoder, multiscale=False)
    text_cfg = TextEncoderConfig(name=args.text_encoder)
    pipeline.extract(
        data,
        work / "cache",
        image_cfg,
        text_cfg,
        split_cfg=DatasetSplitConfig(val_size=args.val_size, seed=0),
    )
    extract_s = time.perf_counter() - started
    report = pipeline.train(work / "cache", work / "run")
    results = pipeline.evaluate(work / "cache", work / "run")
    train_s = {stage: info["seconds"] for stage, info in report.stages.items()}
    title = (
        f"{data.name} test split (validation: {args.val_size} images carved from train; encoders "
        f"{image_cfg.revision or image_cfg.name} + {text_cfg.revision or text_cfg.name})"
    )
    lines = [
        results_markdown(results, title),
        "",
        "| stage | best epoch | validation rsum | training s |",
        "|---|---:|---:|---:|",
    ]
    for stage, info in report.stages.items():
        lines.append(
            f"| {stage} | {info['best_epoch']} | {info['best_val_rsum']:.1f} | {info['seconds']:.0f} |"
        )
    lines.append("")
    lines.append(
        f"Feature extraction (all splits): {extract_s:.0f} s. ms/query = scoring time per query, "
        "encoders excluded; re-rank = matching-head kNN then the alignment head on the top k."
    )
    out = Path(args.out)
    atomic_write(out / "real_data.md", lambda tmp: tmp.write_text("\n".join(lines) + "\n"))
    write_json(
        out / "real_data.json",
        {
            "data": str(data),
            "image_encoder": config_to_dict(image_cfg),
            "text_encoder": config_to_dict(text_cfg),
            "results": [r.to_json() for r in results],
            "stages": report.stages,
            "extract_seconds": extract_s,
            "training_seconds": train_s,
        },
    )
    print(json.dumps({r.name: round(r.metrics["rsum"], 1) for r in results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
