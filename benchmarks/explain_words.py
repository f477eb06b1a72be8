"""Do the explanation's words have maps of their own? The bundled model on real COCO test photos.

    python benchmarks/explain_words.py [--coco ../shared/data/coco] [--images 100]

For every caption (up to 3 of each of the first --images test photos) it compares, over the image's regions, the
maps of the caption's different content words (stop words out, word pieces folded), made two ways:
- before: each word's contextualised state in the caption (the teacher's own words), the pre-#24 explanation;
- after: `aladin.search.explain`: each content word encoded alone through the same model.
A word's map that correlates with every other word's says nothing about that word. Reported: the mean Pearson
correlation of the maps of two different content words of one caption (target ≤ 0.5), and how far apart the
words' best cosines are (the "flat scores" of the issue). Writes benchmarks/results/explain_words.{json,md} and
three examples as heatmaps into docs/explain/.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402

from aladin.data.images import load_image  # noqa: E402
from aladin.encoders.image import build_image_encoder  # noqa: E402
from aladin.encoders.text import build_text_encoder  # noqa: E402
from aladin.evaluate.pointing import mean_pair_correlation  # noqa: E402
from aladin.fileio import atomic_path, atomic_write, write_json  # noqa: E402
from aladin.model.pretrained import load_default_model  # noqa: E402
from aladin.search.explain import explain_pair, fold_piece_maps  # noqa: E402
from aladin.service.heatmap import explain_image, render_heatmap  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: (test photo, caption) pairs drawn for the README: chosen by looking at the maps of the first 300 test photos.
EXAMPLES = (
    ("000000000285.jpg", "A big burly grizzly bear is show with grass in the background."),
    ("000000133819.jpg", "A blue bus driving down a city street."),
    ("000000009448.jpg", "A little girl holds up a big blue umbrella."),
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--coco", default=str(ROOT.parent / "shared" / "data" / "coco"))
    parser.add_argument("--images", type=int, default=100, help="first test photos (3 captions each)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--examples", default=str(ROOT / "docs" / "explain"))
    args = parser.parse_args()
    coco = Path(args.coco)
    rows = [json.loads(line) for line in (coco / "captions.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["split"] == "test"][: args.images]
    model = load_default_model()
    text_encoder = build_text_encoder(model.config.text_encoder)
    image_encoder = build_image_encoder(model.config.image_encoder)

    before, after, old_pieces, spread_before, spread_after = [], [], [], [], []
    started = time.perf_counter()
    with torch.inference_mode():
        for row in rows:
            pixels = image_encoder.encode([load_image(coco / "images" / row["image"])])
            image = model.encode_image(pixels.regions, pixels.boxes, pixels.region_mask, with_global=False)
            real = image.regions[0][image.region_mask[0]]
            for caption in row["captions"][:3]:
                explanation = explain_pair(
                    model, text_encoder, caption, image.regions, image.region_mask, None
                )
                # the caption's contextual words against the same regions: the explanation before
                batch = text_encoder.encode([caption])
                text = model.encode_text(
                    batch.tokens, batch.attention_mask, batch.token_mask, with_global=False
                )
                piece_maps = (F.normalize(text.words[0][text.word_mask[0]], dim=-1) @ real.T).numpy()
                words, contextual = fold_piece_maps(text_encoder.word_pieces(caption), piece_maps)
                assert words == explanation.words, (words, explanation.words)
                pair_before = mean_pair_correlation(contextual)
                if pair_before is None:
                    continue
                before.append(pair_before)
                after.append(mean_pair_correlation(explanation.similarity))
                old_pieces.append(mean_pair_correlation(piece_maps))
                spread_before.append(float(np.ptp(contextual.max(axis=1))))
                spread_after.append(float(np.ptp(explanation.similarity.max(axis=1))))
    seconds = time.perf_counter() - started

    summary = {
        "model": "bundled coco-lite0-minilm",
        "photos": len(rows),
        "captions": len(before),
        "correlation_before": float(np.mean(before)),
        "correlation_after": float(np.mean(after)),
        "correlation_before_all_pieces": float(np.mean(old_pieces)),
        "best_cosine_spread_before": float(np.mean(spread_before)),
        "best_cosine_spread_after": float(np.mean(spread_after)),
        "target": "correlation_after <= 0.5",
        "seconds": seconds,
    }
    out = Path(args.out)
    write_json(out / "explain_words.json", summary)
    table = f"""**Explanation maps of different words of one caption: the bundled model on {len(before)} COCO test captions
({len(rows)} photos, up to 3 captions each, captions with ≥ 2 content words)**

| explanation | mean correlation of two content words' maps (target ≤ 0.5) | spread of the words' best cosines |
|---|---:|---:|
| before: contextual word states, every word piece (as #24 measured) | {summary["correlation_before_all_pieces"]:.3f} | |
| before: contextual word states, content words folded | {summary["correlation_before"]:.3f} | {summary["best_cosine_spread_before"]:.3f} |
| after: each content word alone (`aladin.search.explain`) | {summary["correlation_after"]:.3f} | {summary["best_cosine_spread_after"]:.3f} |

Spread: the best word's best cosine minus the worst word's, per caption, averaged: how much the words' scores
differ. {seconds:.0f} s on 2 shared CPU cores (`python benchmarks/explain_words.py`).
"""
    atomic_write(out / "explain_words.md", lambda tmp: tmp.write_text(table))
    print(table)
    examples = Path(args.examples)
    for name, caption in EXAMPLES:
        image = load_image(coco / "images" / name)
        explanation = explain_image(model, text_encoder, image_encoder, caption, image, name)
        png = render_heatmap(image, explanation, examples / f"{Path(name).stem}.png")
        with atomic_path(png) as tmp:  # smaller, in a palette: a fraction of the size, for the repository
            drawn = Image.open(png).convert("RGB")
            drawn = drawn.resize((drawn.width * 3 // 4, drawn.height * 3 // 4), Image.Resampling.LANCZOS)
            drawn.quantize(colors=128).save(tmp, format="PNG", optimize=True)
        print(
            f"{png}: {caption} → "
            + ", ".join(
                f"{w} {s:.2f}"
                for w, s in zip(explanation.words, explanation.similarity.max(axis=1), strict=True)
            )
        )


if __name__ == "__main__":
    main()
