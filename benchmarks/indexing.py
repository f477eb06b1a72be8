"""Indexing throughput on camera photos: `aladin index build` with the bundled model on 240-px, 12-MP and 24-MP JPEGs.

    python benchmarks/indexing.py [--photos 32 --batch-size 8 --repeats 2]
    python benchmarks/indexing.py --rsum [--upscale 2400 --limit 0]
    python benchmarks/indexing.py --sync [--sync-photos 10000]

It makes its own photo sets under --work (kept for later runs): the 240-px set is COCO photos as they are (or
generated textures when ../shared/data/coco is absent); the camera sets are the same pictures enlarged to
4000×3000 and 6000×4000 with sensor-like grain (so the JPEGs weigh what a phone's do, ~3–8 MB), saved at quality
90 with EXIF orientation tags 1, 6, 8, 3 in turn (6 and 8: stored on their side, displayed upright). Each set is
indexed (the code `aladin index build` runs, the model loaded once) with today's decoding (JPEG draft mode, two
batches read ahead in worker threads) and with the old one (every picture decoded in full, in the encoder's
loop), interleaved, in one run: ratios, not absolute speeds, are the result.

--rsum: the test split of the COCO subset extracted with the old and the new decoding and evaluated with the
bundled model, as it is (its 240-px photos are too small for draft mode to shrink: the pixels are compared) and
enlarged to camera size (--upscale px on the long side, grain as above), where draft mode decodes at 1/4.

--sync: `aladin index sync` against a full build, in one run: --sync-photos synthetic 64-px JPEGs are indexed
(the full build, timed), then 1% of them are removed, 1% renamed and 1% new ones added, and the sync is timed
(index load included, as the command does it). Where building them all takes too long, --sync-rebuild-sample S
times the build on S of them and scales it (see `sync_check`).

Writes benchmarks/results/indexing.{json,md} (--rsum: indexing_rsum.{json,md}); --sync writes its part of
indexing.{json,md} and keeps the throughput rows there (and they keep it).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see benchmarks/search.py
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageOps  # noqa: E402

from aladin import pipeline  # noqa: E402
from aladin.data.dataset import Dataset, ImageItem  # noqa: E402
from aladin.data.images import load_image  # noqa: E402
from aladin.data.readers import load_dataset  # noqa: E402
from aladin.encoders.cache import extract_features  # noqa: E402
from aladin.encoders.image import ImageEncoder, RegionBatch, build_image_encoder  # noqa: E402
from aladin.encoders.text import build_text_encoder  # noqa: E402
from aladin.fileio import atomic_write, write_json  # noqa: E402
from aladin.index.builder import build_index  # noqa: E402
from aladin.index.config import IndexConfig  # noqa: E402
from aladin.index.index import SearchIndex  # noqa: E402
from aladin.index.sources import find_images  # noqa: E402
from aladin.index.sync import sync_folder  # noqa: E402
from aladin.model.aladin import AladinModel  # noqa: E402
from aladin.model.pretrained import default_model_dir  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
COCO = Path(__file__).resolve().parents[2] / "shared/data/coco"
#: name → (long side × short side) of the stored pixels; None: the source pictures as they are
SETS: dict[str, tuple[int, int] | None] = {"240 px": None, "12 MP": (4000, 3000), "24 MP": (6000, 4000)}
ORIENTATIONS = (1, 6, 8, 3)
#: How the pixels are stored so that EXIF orientation N displays them upright (the inverse of what N says).
_STORED_AS = {
    1: None,
    3: Image.Transpose.ROTATE_180,
    6: Image.Transpose.ROTATE_90,
    8: Image.Transpose.ROTATE_270,
}
GRAIN = 7.0  # std of the luminance grain, in 8-bit levels: a 12-MP JPEG then weighs ~3.7 MB at quality 90


def source_pictures(n: int, coco: Path) -> list[Path]:
    """The first n COCO photos of the test split (sorted), or n generated textures when COCO is absent."""
    if (coco / "captions.jsonl").is_file():
        test = [it for it in load_dataset(coco).items if it.split == "test"]
        return [Path(it.path) for it in test[:n]]
    folder = Path(tempfile.mkdtemp(prefix="aladin-textures-"))
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        # smooth colour fields with edges: upscaled 16×12 noise, then detail from a finer layer
        coarse = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize(
            (320, 240), Image.BICUBIC
        )
        fine = Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).resize(
            (320, 240), Image.NEAREST
        )
        paths.append(folder / f"texture-{i:03d}.jpg")
        Image.blend(coarse, fine, 0.25).save(paths[-1], quality=85)
    return paths


def camera_photo(source: Path, size: tuple[int, int], orientation: int, out: Path, seed: int) -> None:
    """`source` enlarged to a camera's pixels (`size`, stored landscape) with grain, saved with its EXIF tag."""
    long_side, short_side = size
    quarter_turn = orientation in (6, 8)
    upright_size = (short_side, long_side) if quarter_turn else (long_side, short_side)
    upright = ImageOps.fit(load_image(source), upright_size, Image.BICUBIC)
    method = _STORED_AS[orientation]
    stored = upright if method is None else upright.transpose(method)
    rng = np.random.default_rng(seed)
    tile = (rng.standard_normal((512, 512), dtype=np.float32) * GRAIN).astype(np.int16)
    grain = np.tile(tile, (-(-short_side // 512), -(-long_side // 512)))[:short_side, :long_side]
    shift = rng.integers(0, 512, 2)  # so the tiles do not line up from photo to photo
    grain = np.roll(grain, tuple(shift), axis=(0, 1))
    pixels = np.asarray(stored, dtype=np.int16) + grain[..., None]
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F], exif[0x0110] = "aladin-benchmark", f"{long_side * short_side / 1e6:.0f} MP"
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(out, quality=90, exif=exif)


def make_set(sources: list[Path], size: tuple[int, int] | None, folder: Path) -> Path:
    """The photo set in `folder` (made once: a complete set is reused)."""
    done = folder / ".complete"
    if done.is_file() and done.read_text() == str(len(sources)):
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for i, source in enumerate(sources):
        out = folder / f"photo-{i:03d}.jpg"
        if size is None:
            shutil.copyfile(source, out)
        else:
            camera_photo(source, size, ORIENTATIONS[i % len(ORIENTATIONS)], out, seed=i)
    done.write_text(str(len(sources)))
    return folder


def old_decoding(encoder: ImageEncoder) -> ImageEncoder:
    """`encoder` set to decode as aladin did before draft mode and read-ahead: in full, in the encoder's loop."""
    encoder.decode_size = None
    encoder.read_ahead = 0
    return encoder


def decode_ms(paths: list[Path], size: tuple[int, int] | None) -> float:
    """Mean ms to decode one photo and resize it to `size` (or to 448 px), one after another, in this thread."""
    started = time.perf_counter()
    for path in paths:
        load_image(path, size).resize(size or (448, 448), Image.BILINEAR)
    return 1000 * (time.perf_counter() - started) / len(paths)


def throughput(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(args.work)
    model = AladinModel.from_pretrained(default_model_dir()).eval()
    encoders = {
        "new": build_image_encoder(model.config.image_encoder),
        "old": old_decoding(build_image_encoder(model.config.image_encoder)),
    }
    sources = source_pictures(args.photos, Path(args.coco))
    started = time.perf_counter()
    folders = {name: make_set(sources, size, work / name.replace(" ", "")) for name, size in SETS.items()}
    print(f"photo sets ready in {time.perf_counter() - started:.0f} s under {work}", flush=True)
    megabytes = {
        name: statistics.mean(p.stat().st_size for p in find_images([f])) / 2**20
        for name, f in folders.items()
    }
    cfg = IndexConfig(batch_size=args.batch_size)
    out = Path(tempfile.mkdtemp(prefix="aladin-index-bench-"))

    def build(folder: Path, mode: str) -> float:
        started = time.perf_counter()
        build_index(
            folder, model, out / mode, cfg, image_encoder=encoders[mode], overwrite=True, progress=False
        )
        return time.perf_counter() - started

    warm = work / "warm-up"
    make_set(sources[: args.batch_size], None, warm)
    for mode in encoders:
        build(warm, mode)
    load_before = os.getloadavg()[1]
    seconds: dict[str, dict[str, list[float]]] = {name: {"new": [], "old": []} for name in SETS}
    for repeat in range(args.repeats):
        for name, folder in folders.items():
            for mode in ("new", "old") if repeat % 2 == 0 else ("old", "new"):
                seconds[name][mode].append(build(folder, mode))
                print(f"{name} {mode}: {seconds[name][mode][-1]:.1f} s", flush=True)
    shutil.rmtree(out)
    sample = {name: find_images([f])[: args.decode_sample] for name, f in folders.items()}
    decode = {
        name: {"full": decode_ms(paths, None), "draft": decode_ms(paths, encoders["new"].decode_size)}
        for name, paths in sample.items()
    }
    rate = {
        name: {mode: args.photos / statistics.median(times) for mode, times in modes.items()}
        for name, modes in seconds.items()
    }
    return {
        "photos_per_set": args.photos,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "machine": platform.platform(),
        "load_average_5min": [load_before, os.getloadavg()[1]],
        "source": str(args.coco) if (Path(args.coco) / "captions.jsonl").is_file() else "generated textures",
        "mean_file_mb": megabytes,
        "seconds": seconds,
        "photos_per_second": rate,
        "decode_ms_per_photo": decode,
        "ratio_to_240px": {name: rate[name]["new"] / rate["240 px"]["new"] for name in SETS},
        "new_over_old": {name: rate[name]["new"] / rate[name]["old"] for name in SETS},
    }


def throughput_markdown(r: dict[str, Any]) -> str:
    lines = [
        f"# Indexing throughput: `aladin index build`, bundled model, {r['photos_per_set']} photos per set",
        "",
        f"Batches of {r['batch_size']}, median of {r['repeats']} builds per cell, old and new interleaved in one "
        f"run; {r['cpus']} CPUs (5-minute load average {r['load_average_5min'][0]:.1f} before the builds, "
        f"{r['load_average_5min'][1]:.1f} after), torch on {r['torch_threads']} threads. New: JPEG draft mode + two batches decoded "
        "ahead in worker threads. Old: every picture decoded in full in the encoder's loop. Decode = one photo "
        "decoded and resized to 448 px, alone in one thread.",
        "",
        "| photos | mean file | photos/s new | photos/s old | new / old | new vs 240 px | decode ms full | "
        "decode ms draft |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in SETS:
        rate, decode = r["photos_per_second"][name], r["decode_ms_per_photo"][name]
        lines.append(
            f"| {name} | {r['mean_file_mb'][name]:.2f} MB | {rate['new']:.2f} | {rate['old']:.2f} | "
            f"{r['new_over_old'][name]:.2f}× | {100 * r['ratio_to_240px'][name]:.0f}% | {decode['full']:.0f} | "
            f"{decode['draft']:.0f} |"
        )
    worst = min(r["ratio_to_240px"]["12 MP"], r["ratio_to_240px"]["24 MP"])
    lines += [
        "",
        f"Target: 12-MP throughput ≥ 80% of 240-px throughput: 12 MP reaches "
        f"{100 * r['ratio_to_240px']['12 MP']:.0f}% ({'met' if r['ratio_to_240px']['12 MP'] >= 0.8 else 'missed'}); "
        f"the slower camera set {100 * worst:.0f}%.",
        "",
    ]
    return "\n".join(lines)


def rsum_check(args: argparse.Namespace) -> dict[str, Any]:
    """Bundled-model rsum on the COCO test split enlarged to camera size, decoded the old and the new way; at
    240 px the two decodings are compared pixel for pixel (identical pixels give identical features)."""
    coco = Path(args.coco)
    if not (coco / "captions.jsonl").is_file():
        sys.exit(f"no dataset at {coco} (expected captions.jsonl); nothing to compare")
    work = Path(args.work) / "rsum"
    model_dir = default_model_dir()
    model = AladinModel.from_pretrained(model_dir)
    encoders = {
        "old": old_decoding(build_image_encoder(model.config.image_encoder)),
        "new": build_image_encoder(model.config.image_encoder),
    }
    test = load_dataset(coco).split("test")
    size = encoders["new"].decode_size
    same_pixels = sum(
        np.array_equal(np.asarray(load_image(it.path)), np.asarray(load_image(it.path, size)))
        for it in test.items
    )
    split_size = len(test.items)
    test.items = test.items[: args.limit or None]
    enlarged = work / f"photos-{args.upscale}-{len(test.items)}"
    stored = (args.upscale, args.upscale * 3 // 4)
    if not (enlarged / ".complete").is_file():
        shutil.rmtree(enlarged, ignore_errors=True)
        enlarged.mkdir(parents=True)
        n = len(test.items)
        # Pillow and numpy release the GIL for the heavy parts
        with ThreadPoolExecutor(os.cpu_count()) as pool:
            sources = [Path(it.path) for it in test.items]
            outs = [enlarged / path.name for path in sources]
            turns = [ORIENTATIONS[i % len(ORIENTATIONS)] for i in range(n)]
            list(pool.map(camera_photo, sources, [stored] * n, turns, outs, range(n)))
        (enlarged / ".complete").write_text("")
    camera = Dataset(
        enlarged,
        [ImageItem(it.image_id, enlarged / Path(it.path).name, it.captions, it.split) for it in test.items],
        name=f"{test.name}-{args.upscale}px",
    )
    text_encoder = build_text_encoder(model.config.text_encoder)
    rows: dict[str, dict[str, float]] = {}
    for mode, encoder in encoders.items():
        cache = work / f"cache-{args.upscale}-{len(test.items)}-{mode}"
        started = time.perf_counter()
        extract_features(camera, encoder, text_encoder, cache, batch_size=32, progress=False)
        extract_s = time.perf_counter() - started
        results = pipeline.evaluate(cache, model_dir, split="test", out_dir=cache / "eval", quiet=True)
        rows[mode] = {res.name: res.metrics["rsum"] for res in results}
        rows[mode]["extract seconds"] = extract_s
        print(mode, rows[mode], flush=True)
    return {
        "test_images": split_size,
        "enlarged_images": len(test.items),
        "identical_pixels_at_240px": same_pixels,
        "enlarged_size": list(stored),
        "enlarged_drafted_to": list(load_image(camera.items[0].path, size).size),
        "rsum": rows,
    }


def rsum_markdown(r: dict[str, Any]) -> str:
    old, new = r["rsum"]["old"], r["rsum"]["new"]
    width, height = r["enlarged_size"]
    drafted = "×".join(map(str, r["enlarged_drafted_to"]))
    lines = [
        "# Bundled model, COCO test split: old (full) vs new (draft) decoding",
        "",
        f"As they are (240 px on the short side) draft mode cannot shrink the photos below the encoder's 448 px: "
        f"{r['identical_pixels_at_240px']} of {r['test_images']} decode to identical pixels both ways, so their "
        f"features and rsum are unchanged. Enlarged to {width}×{height} with grain (EXIF orientations 1/6/8/3), "
        f"draft mode decodes them at {drafted}; recall over the first {r['enlarged_images']} test photos and "
        "their captions:",
        "",
        "| scorer | rsum old | rsum new | change |",
        "|---|---:|---:|---:|",
    ]
    for name in (name for name in old if name != "extract seconds"):
        lines.append(f"| {name} | {old[name]:.1f} | {new[name]:.1f} | {new[name] - old[name]:+.2f} |")
    lines += [
        "",
        f"Target: the change is below 0.5 rsum. Extracting the photos took {old['extract seconds']:.0f} s old, "
        f"{new['extract seconds']:.0f} s new.",
        "",
    ]
    return "\n".join(lines)


def small_photos(folder: Path, first: int, count: int) -> list[Path]:
    """`count` distinct 64-px JPEGs (smooth random colours), named by number from `first`."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(first, first + count):
        rng = np.random.default_rng(i)
        coarse = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).resize(
            (64, 64), Image.BICUBIC
        )
        paths.append(folder / f"photo-{i:05d}.jpg")
        coarse.save(paths[-1], quality=85)
    return paths


class StandInEncoder(ImageEncoder):
    """Regions shaped like `real`'s (one real picture's, with noise) at no cost: fills a large index quickly
    when only the sync on it is timed. Pictures are still decoded, as the real encoder would have them."""

    def __init__(self, real: ImageEncoder, picture: Path):
        self.config, self.decode_size, self.read_ahead = real.config, real.decode_size, real.read_ahead
        self._template = real.encode([load_image(picture, real.decode_size)])
        self._rng = torch.Generator().manual_seed(0)

    @property
    def feature_dim(self) -> int:
        return int(self._template.regions.shape[-1])

    @property
    def num_regions(self) -> int:
        return int(self._template.regions.shape[1])

    def encode(self, images: list[Image.Image]) -> RegionBatch:
        n, t = len(images), self._template
        noise = torch.randn((n, *t.regions.shape[1:]), generator=self._rng)
        return RegionBatch(
            t.regions.expand(n, -1, -1) + noise, t.boxes.expand(n, -1, -1), t.region_mask.expand(n, -1)
        )


def sync_check(args: argparse.Namespace) -> dict[str, Any]:
    """A full build of --sync-photos small photos, then a sync after 1% were added, removed and renamed.

    With --sync-rebuild-sample S < N, the N-photo index is filled by `StandInEncoder` (untimed) and the full
    rebuild is timed on the first S photos with the real encoder, then scaled by N / S: encoding, which is
    linear in the number of photos, is nearly all of a build. The sync is always timed for real on N photos."""
    n = args.sync_photos
    sample = args.sync_rebuild_sample or n
    work = Path(args.work) / f"sync-{n}"
    shutil.rmtree(work, ignore_errors=True)
    model = AladinModel.from_pretrained(default_model_dir()).eval()
    encoder = build_image_encoder(model.config.image_encoder)
    photos = small_photos(work / "photos", 0, n)
    cfg = IndexConfig()  # `aladin index build`'s defaults

    def build(folder: Path, out: Path, image_encoder: ImageEncoder) -> float:
        started = time.perf_counter()
        build_index(folder, model, out, cfg, image_encoder=image_encoder, progress=False)
        return time.perf_counter() - started

    build(small_photos(work / "warm-up", 0, 8)[0].parent, work / "warm-up-index", encoder)
    load_before = os.getloadavg()[1]
    if sample < n:
        (work / "sample").mkdir()
        for path in photos[:sample]:
            shutil.copyfile(path, work / "sample" / path.name)
        sample_s = build(work / "sample", work / "sample-index", encoder)
        build(work / "photos", work / "index", StandInEncoder(encoder, photos[0]))
        build_s = sample_s * n / sample
    else:
        build_s = sample_s = build(work / "photos", work / "index", encoder)
    step = max(1, n // 100)
    for path in photos[:step]:
        path.unlink()
    for path in photos[step : 2 * step]:
        path.rename(path.with_name(f"renamed-{path.name}"))
    small_photos(work / "photos", n, step)
    started = time.perf_counter()
    index = SearchIndex.load(work / "index", model, verify_checksums=False)  # as `aladin index sync` loads it
    report = sync_folder(index, work / "photos", image_encoder=encoder)
    sync_s = time.perf_counter() - started
    plan = report.plan
    counts = {"added": len(plan.added), "removed": len(plan.removed), "moved": len(plan.moved)}
    if counts != {"added": step, "removed": step, "moved": step} or plan.changed or len(index) != n:
        sys.exit(f"sync did not do what was changed: {report.summary()}, {len(index)} images")
    shutil.rmtree(work)
    return {
        "photos": n,
        "rebuild_timed_on": sample,
        "rebuild_sample_seconds": sample_s,
        "changed_each": step,
        "batch_size": cfg.batch_size,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_5min": [load_before, os.getloadavg()[1]],
        "build_seconds": build_s,
        "sync_seconds": sync_s,
        "sync_over_build": sync_s / build_s,
        "sync_summary": report.summary(),
    }


def sync_markdown(r: dict[str, Any]) -> str:
    ratio = r["sync_over_build"]
    return "\n".join(
        [
            f"## Sync vs full rebuild: {r['photos']} synthetic 64-px photos, bundled model",
            "",
            f"One run: a full `index build` (batches of {r['batch_size']}), then {r['changed_each']} photos "
            f"(1%) removed, {r['changed_each']} renamed and {r['changed_each']} added, and `index sync` "
            f"(index load included). {r['cpus']} CPUs (5-minute load average {r['load_average_5min'][0]:.1f} "
            f"before, {r['load_average_5min'][1]:.1f} after), torch on {r['torch_threads']} threads.",
            "",
            "| photos | full build s | photos/s | sync s | sync / build | sync did |",
            "|---:|---:|---:|---:|---:|---|",
            f"| {r['photos']} | {r['build_seconds']:.1f} | {r['photos'] / r['build_seconds']:.2f} | "
            f"{r['sync_seconds']:.2f} | {100 * ratio:.2f}% | {r['sync_summary']} |",
            "",
            *(
                [
                    f"The full build was timed on the first {r['rebuild_timed_on']} photos "
                    f"({r['rebuild_sample_seconds']:.1f} s) and scaled to {r['photos']}; the {r['photos']}-photo "
                    "index was filled with stand-in regions of the same shape, and the sync on it is timed for real.",
                    "",
                ]
                if r["rebuild_timed_on"] < r["photos"]
                else []
            ),
            f"Target: a sync takes ≤ 5% of a full rebuild: {100 * ratio:.2f}% "
            f"({'met' if ratio <= 0.05 else 'missed'}).",
            "",
        ]
    )


_SYNC_HEADING = "## Sync vs full rebuild"


def write_indexing(out: Path, key: str | None, result: dict[str, Any], markdown: str) -> None:
    """indexing.{json,md} with one part replaced (`key` "sync", or None for the throughput rows), the other
    kept as the last run left it."""
    path, md_path = out / "indexing.json", out / "indexing.md"
    old = json.loads(path.read_text()) if path.is_file() else {}
    old_md = md_path.read_text() if md_path.is_file() else ""
    throughput_md, _, sync_md = old_md.partition(_SYNC_HEADING)
    if key is None:
        data = {**result, **({"sync": old["sync"]} if "sync" in old else {})}
        text = markdown + (_SYNC_HEADING + sync_md if sync_md else "")
    else:
        data = {**old, key: result}
        text = throughput_md.rstrip("\n") + "\n\n" + markdown
    write_json(path, data)
    atomic_write(md_path, lambda tmp: tmp.write_text(text))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=32, help="photos per set")
    parser.add_argument("--batch-size", type=int, default=8, help="`aladin index build --batch-size`")
    parser.add_argument("--repeats", type=int, default=2, help="builds per set and decoding (median)")
    parser.add_argument(
        "--decode-sample", type=int, default=8, help="photos per set timed for decoding alone"
    )
    parser.add_argument("--coco", default=str(COCO), help="the COCO subset (its test split is the source)")
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "aladin-indexing-bench"))
    parser.add_argument("--rsum", action="store_true", help="compare the bundled model's test rsum instead")
    parser.add_argument("--upscale", type=int, default=2400, help="--rsum: long side of the enlarged photos")
    parser.add_argument("--limit", type=int, default=0, help="--rsum: the first N test photos only (0: all)")
    parser.add_argument("--sync", action="store_true", help="time `index sync` against a full build instead")
    parser.add_argument("--sync-photos", type=int, default=10_000, help="--sync: photos in the index")
    parser.add_argument(
        "--sync-rebuild-sample",
        type=int,
        default=0,
        help="--sync: time the full rebuild on this many photos and scale it (0: build all of them for real)",
    )
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.rsum:
        result = rsum_check(args)
        markdown = rsum_markdown(result)
        write_json(out / "indexing_rsum.json", result)
        atomic_write(out / "indexing_rsum.md", lambda tmp: tmp.write_text(markdown))
    elif args.sync:
        result = sync_check(args)
        markdown = sync_markdown(result)
        write_indexing(out, "sync", result, markdown)
    else:
        result = throughput(args)
        markdown = throughput_markdown(result)
        write_indexing(out, None, result, markdown)
    print(markdown)
    print(json.dumps(result, indent=1)[:2000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
