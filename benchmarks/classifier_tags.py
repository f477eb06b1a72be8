"""What classifier tags (issue #28) cost when indexing photos: `aladin index build` of the same COCO photos with
and without `classifier_tags`, single-scale and multi-scale, interleaved in one run; the ratios are the result.

    python benchmarks/classifier_tags.py [--photos 48 --batch-size 16 --repeats 3] [--camera]

With --camera the photos are 12-MP camera JPEGs made from the COCO ones (as benchmarks/indexing.py makes them),
the size users index. Besides wall time it records the process's CPU seconds per build (all threads), which
other jobs on the machine move far less than wall time; the ratios of both are reported.

Each setting gets a model of the bundled heads' shape over its own encoder settings (untrained: only speed is
measured; the heads cost the same trained or not) and its encoders are loaded once, outside the timing. The
tagged build runs the ImageNet head on the pooled map and on each (coarse) cell, picks the names and encodes
them with MiniLM. Writes benchmarks/results/classifier_tags.{json,md} (classifier_tags.12mp.* with --camera).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see benchmarks/search.py
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from indexing import SETS, make_set  # noqa: E402  (benchmarks/indexing.py: the camera photos)

from aladin.config import AladinConfig, ImageEncoderConfig, TextEncoderConfig  # noqa: E402
from aladin.encoders.image import build_image_encoder  # noqa: E402
from aladin.encoders.text import build_text_encoder  # noqa: E402
from aladin.fileio import atomic_write, write_json  # noqa: E402
from aladin.index.builder import build_index  # noqa: E402
from aladin.index.config import IndexConfig  # noqa: E402
from aladin.model.aladin import AladinModel  # noqa: E402
from aladin.model.pretrained import default_model_dir  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
COCO = Path(__file__).resolve().parents[2] / "shared/data/coco"
SETTINGS = {
    f"{scale}{' + tags' if tags else ''}": ImageEncoderConfig(multiscale=multiscale, classifier_tags=tags)
    for scale, multiscale in (("7×7", False), ("multi-scale", True))
    for tags in (False, True)
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(COCO / "images"), help="a folder of photos")
    parser.add_argument("--photos", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--camera", action="store_true", help="12-MP camera JPEGs made from the photos")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    photos = sorted(Path(args.data).glob("*.jpg"))[: args.photos]
    if len(photos) < args.photos:
        print(f"{args.data}: fewer than {args.photos} JPEGs")
        return 1
    heads = AladinModel.from_pretrained(default_model_dir()).config.model
    text = build_text_encoder(TextEncoderConfig())
    work = Path(tempfile.mkdtemp(prefix="aladin-tags-bench-"))
    try:
        folder = make_set(photos, SETS["12 MP"] if args.camera else None, work / "photos")
        runs = {}
        for name, cfg in SETTINGS.items():
            encoder = build_image_encoder(cfg)
            model_cfg = AladinConfig(
                image_encoder=cfg,
                text_encoder=TextEncoderConfig(),
                model=replace(heads, image_feature_dim=encoder.feature_dim),
            )
            torch.manual_seed(0)
            runs[name] = (encoder, AladinModel(model_cfg).eval())
        seconds: dict[str, list[float]] = {name: [] for name in SETTINGS}
        cpu_seconds: dict[str, list[float]] = {name: [] for name in SETTINGS}
        index_cfg = IndexConfig(batch_size=args.batch_size)
        for _ in range(
            args.repeats
        ):  # interleaved, so that load from other processes hits every setting alike
            for name, (encoder, model) in runs.items():
                started, cpu_started = time.perf_counter(), time.process_time()
                build_index(
                    folder, model, work / "index", index_cfg, encoder, text, overwrite=True, progress=False
                )
                seconds[name].append(time.perf_counter() - started)
                cpu_seconds[name].append(time.process_time() - cpu_started)
    finally:
        shutil.rmtree(work)
    rows = {}
    for name, times in seconds.items():
        untagged = name.removesuffix(" + tags")
        rows[name] = {
            "seconds": times,
            "cpu_seconds": cpu_seconds[name],
            "photos_per_s": len(photos) / statistics.median(times),
            "cpu_s_per_photo": statistics.median(cpu_seconds[name]) / len(photos),
            "added": statistics.median(times) / statistics.median(seconds[untagged]) - 1,
            "added_cpu": statistics.median(cpu_seconds[name]) / statistics.median(cpu_seconds[untagged]) - 1,
        }
    size = "12-MP camera JPEGs made from" if args.camera else "the"
    lines = [
        f"**Indexing {size} {len(photos)} COCO photos (`index build`, batch {args.batch_size}), median of "
        f"{args.repeats} interleaved runs; {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f} at the end**",
        "",
        "| regions | photos/s | added by the tags (wall) | CPU s per photo | added by the tags (CPU) |",
        "|---|---:|---:|---:|---:|",
        *(
            f"| {name} | {row['photos_per_s']:.2f} | {_added(name, row['added'])} | "
            f"{row['cpu_s_per_photo']:.3f} | {_added(name, row['added_cpu'])} |"
            for name, row in rows.items()
        ),
        "",
        "Tags: the ImageNet head on the pooled map and on each cell (the 7×7 coarse cells when multi-scale), the "
        "names kept, and their word pieces encoded by MiniLM (up to 24 + 2 tokens per photo).",
    ]
    out = Path(args.out)
    stem = "classifier_tags.12mp" if args.camera else "classifier_tags"
    atomic_write(out / f"{stem}.md", lambda tmp: tmp.write_text("\n".join(lines) + "\n"))
    write_json(
        out / f"{stem}.json",
        {"photos": len(photos), "camera": args.camera, "batch_size": args.batch_size, "rows": rows},
    )
    print("\n".join(lines))
    return 0


def _added(name: str, added: float) -> str:
    return f"{100 * added:+.1f}%" if name.endswith(" + tags") else ""


if __name__ == "__main__":
    sys.exit(main())
