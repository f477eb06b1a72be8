"""Entry point of the `aladin` command.

The parser is built from light modules only (no torch, transformers or FAISS): `aladin --help` and
`--version` answer at once; each handler imports what it needs.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aladin import __version__
from aladin.errors import AladinError


def _generate(args: argparse.Namespace) -> None:
    from aladin.data.synthetic import SyntheticConfig, generate_synthetic_dataset

    cfg = SyntheticConfig(seed=args.seed, n_train=args.train, n_val=args.val, n_test=args.test)
    dataset = generate_synthetic_dataset(args.out, cfg)
    counts = {s: len(dataset.split(s)) for s in dataset.split_names()}
    print(f"wrote {len(dataset)} images to {args.out}: {counts}")


def _extract(args: argparse.Namespace) -> None:
    from aladin import pipeline
    from aladin.cli.options import encoder_configs, split_config

    image_cfg, text_cfg = encoder_configs(args)
    cache = pipeline.extract(args.data, args.cache, image_cfg, text_cfg, args.batch_size, split_config(args))
    print(f"features cached in {cache.cache_dir} (splits: {', '.join(cache.splits)})")


def _train(args: argparse.Namespace) -> None:
    from aladin import pipeline
    from aladin.cli.options import recipe_config, run_config

    report = pipeline.train(args.cache, args.out, recipe_config(args), run_config(args))
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"trained in {report.run_dir}")
    for col in ("stage", "best epoch", "epochs run", "val rsum", "seconds"):
        table.add_column(col, justify="right" if col != "stage" else "left")
    for stage, info in report.stages.items():
        table.add_row(
            stage,
            str(info["best_epoch"]),
            str(info["epochs_run"]),
            f"{info['best_val_rsum']:.1f}",
            f"{info['seconds']:.0f}",
        )
    Console().print(table)


def _evaluate(args: argparse.Namespace) -> None:
    import json

    from aladin import pipeline

    if args.data:
        if not args.model:
            raise AladinError("evaluate --data needs --model (a checkpoint folder, e.g. <run>/model)")
        cache = args.cache or str(Path(args.data) / ".aladin-cache")
        results = pipeline.evaluate_on_data(
            args.data, args.model, cache, args.split, args.rerank_k, args.out, quiet=args.json
        )
    else:
        if not (args.cache and (args.run or args.model)):
            raise AladinError("evaluate needs --cache with --run (or --model), or --data with --model")
        results = pipeline.evaluate(
            args.cache, args.run or args.model, args.split, args.rerank_k, args.out, quiet=args.json
        )
    if args.json:
        print(json.dumps([r.to_json() for r in results], indent=2))


def _calibrate(args: argparse.Namespace) -> None:
    from aladin import pipeline

    pipeline.calibrate(args.cache, args.model, args.split)


def _dataset_check(args: argparse.Namespace) -> None:
    from aladin.data.check import check_dataset, format_report
    from aladin.data.readers import load_dataset

    report = check_dataset(load_dataset(args.path, args.format), open_images=not args.skip_images)
    print(format_report(report))
    if not report.ok:
        raise AladinError(f"{args.path}: {report.num_problems} problem(s) found")


def _demo(args: argparse.Namespace) -> None:
    from aladin import pipeline

    pipeline.demo(args.work_dir, seed=args.seed)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, unless it has none worth showing or its help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (
            any(action.default is nothing for nothing in (None, False, argparse.SUPPRESS))
            or "default" in text
        ):
            return text
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """The `aladin` parser; its subcommands' parsers (of the same class) show defaults too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    from aladin.cli.options import add_encoder_flags, add_recipe_flags, add_split_flags
    from aladin.data.synthetic_config import SyntheticConfig

    parser = _Parser(prog="aladin", description="ALADIN cross-modal search")
    parser.add_argument("--version", action="version", version=f"aladin {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("generate-demo-data", help="write the synthetic scenes dataset (offline, seeded)")
    p.add_argument("out", help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train", type=int, default=SyntheticConfig.n_train, help="training images")
    p.add_argument("--val", type=int, default=SyntheticConfig.n_val, help="validation images")
    p.add_argument("--test", type=int, default=SyntheticConfig.n_test, help="test images")
    p.set_defaults(func=_generate)

    p = sub.add_parser("extract", help="run the frozen encoders once into a float16 feature cache")
    p.add_argument("data", help="dataset folder (captions.jsonl + images)")
    p.add_argument("--cache", required=True, help="feature cache folder")
    p.add_argument("--batch-size", type=int, default=32)
    add_encoder_flags(p)
    add_split_flags(p)
    p.set_defaults(func=_extract)

    p = sub.add_parser("train", help="train the alignment head, then distil it into the matching head")
    p.add_argument("--cache", required=True, help="feature cache folder (from `aladin extract`)")
    p.add_argument("--out", required=True, help="run folder for checkpoints")
    add_recipe_flags(p)
    p.set_defaults(func=_train)

    p = sub.add_parser(
        "evaluate", help="recall@K of every scorer on a cached split, or on any dataset folder"
    )
    p.add_argument("--cache", help="feature cache folder (with --data: where its features go)")
    p.add_argument("--run", help="run folder (from `aladin train`)")
    p.add_argument("--data", help="a dataset folder the model has never seen (extracted with its encoders)")
    p.add_argument("--model", help="a model checkpoint folder, e.g. <run>/model")
    p.add_argument("--split", default="test")
    p.add_argument("--rerank-k", type=int, help="candidates re-ranked by the alignment head")
    p.add_argument(
        "--out", help="where results.json / results.md / recall.png go (default <run>/eval-<split>)"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser(
        "calibrate",
        help="fit a model's score → P(true match) map on a cached split (its calibration.json)",
    )
    p.add_argument("--cache", required=True, help="feature cache the model's encoders extracted")
    p.add_argument("--model", required=True, help="a model checkpoint folder, or a run folder (its model/)")
    p.add_argument("--split", default="val", help="the split fitted on (default val; never the test split)")
    p.set_defaults(func=_calibrate)

    p = sub.add_parser(
        "demo", help="the whole job on the embedded synthetic data, ending in the results table"
    )
    p.add_argument("--work-dir", default="runs/demo")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_demo)

    p = sub.add_parser("dataset", help="dataset tools")
    dataset_sub = p.add_subparsers(dest="dataset_command", required=True)
    p = dataset_sub.add_parser(
        "check", help="validate a dataset: missing/unreadable images, empty captions, splits"
    )
    p.add_argument("path", help="dataset folder or annotation file (folder, COCO, Karpathy, Flickr, CSV)")
    p.add_argument(
        "--format", default="auto", help="auto (default), folder, coco, karpathy, flickr, captions"
    )
    p.add_argument("--skip-images", action="store_true", help="do not open every image")
    p.set_defaults(func=_dataset_check)

    from aladin.cli import index_commands, serve_commands

    index_commands.register(sub)
    serve_commands.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; user errors print one line and exit with status 2."""
    # torch and faiss each bring an OpenMP runtime; spinning waiters of one starve the other's threads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except AladinError as exc:
        print(f"aladin: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("aladin: interrupted (rerun the same command to resume)", file=sys.stderr)
        return 130
    if "aladin.distributed" in sys.modules:  # only commands that loaded torch can have joined a process group
        from aladin import distributed

        distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
