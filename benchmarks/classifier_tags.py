"""What classifier tags (issue #28) cost when indexing photos: `aladin index build` of the same COCO photos with
and without `classifier_tags`, single-scale and multi-scale, interleaved in one run; the ratios are the result.

    python benchmarks/classifier_tags.py [--photos 48 --batch-size 16 --repeats 3]

Each setting gets a model of the bundled heads' shape over its own encoder settings (untrained: only speed is
measured; the heads cost the same trained or not) and its encoders are loaded once, outside the timing. The
tagged build runs the ImageNet head on the pooled map and on each (coarse) cell, picks the names and encodes
them with MiniLM. Writes benchmarks/results/classifier_tags.{json,md}.
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
        folder = work / "photos"
        folder.mkdir()
        for path in photos:
            shutil.copyfile(path, folder / path.name)
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
        index_cfg = IndexConfig(batch_size=args.batch_size)
        for _ in range(
            args.repeats
        ):  # interleaved, so that load from other processes hits every setting alike
            for name, (encoder, model) in runs.items():
                started = time.perf_counter()
                build_index(
                    folder, model, work / "index", index_cfg, encoder, text, overwrite=True, progress=False
                )
                seconds[name].append(time.perf_counter() - started)
    finally:
        shutil.rmtree(work)
    rows = {}
    for name, times in seconds.items():
        base = statistics.median(seconds[name.removesuffix(" + tags")])
        rows[name] = {
            "seconds": times,
            "photos_per_s": len(photos) / statistics.median(times),
            "added": statistics.median(times) / base - 1,
        }
    lines = [
        f"**Indexing {len(photos)} COCO photos (`index build`, batch {args.batch_size}), median of "
        f"{args.repeats} interleaved runs; {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads**",
        "",
        "| regions | photos/s | added by the tags |",
        "|---|---:|---:|",
        *(
            f"| {name} | {row['photos_per_s']:.2f} | {_added(name, row['added'])} |"
            for name, row in rows.items()
        ),
        "",
        "Tags: the ImageNet head on the pooled map and on each cell (the 7×7 coarse cells when multi-scale), the "
        "names kept, and their word pieces encoded by MiniLM (up to 24 + 2 tokens per photo).",
    ]
    out = Path(args.out)
    atomic_write(out / "classifier_tags.md", lambda tmp: tmp.write_text("\n".join(lines) + "\n"))
    write_json(
        out / "classifier_tags.json", {"photos": len(photos), "batch_size": args.batch_size, "rows": rows}
    )
    print("\n".join(lines))
    return 0


def _added(name: str, added: float) -> str:
    return f"{100 * added:+.1f}%" if name.endswith(" + tags") else ""


if __name__ == "__main__":
    sys.exit(main())
