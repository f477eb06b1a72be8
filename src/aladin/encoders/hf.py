"""Vision towers from a local Hugging Face folder ("hf:PATH"): CLIP, SigLIP, DINOv2 and ViT, full dual-encoder
folders included (their vision tower is used).

Regions are the patch tokens of the last layer (after the tower's final norm), each with its patch's box, plus the
class/pooled token as one more whole-image region. With `multiscale` the tower also runs on the picture at twice its
input size (position embeddings interpolated): the coarse patches, then the fine ones, then the pooled token of the
input size (so the tower's own embedding is unchanged). Pictures are resized whole to the processor's square size (no
centre crop, so every part of the picture is some region) and normalised with the processor's mean and std, read
from preprocessor_config.json: no image processor class is imported, so torchvision never is. Models load with
`local_files_only=True`; nothing is downloaded.
"""

from __future__ import annotations

import copy
import inspect
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from aladin.config import ImageEncoderConfig
from aladin.encoders.image import ImageEncoder, RegionBatch, grid_boxes
from aladin.errors import AladinError
from aladin.fileio import read_json
from aladin.hf_folder import check_revision

_LAYER_PATHS = ("encoder.layers", "encoder.layer", "layers", "layer")
_FINAL_NORMS = ("post_layernorm", "layernorm", "final_layer_norm")


@contextmanager
def _no_progress_bar() -> Iterator[None]:
    """Without transformers' "Loading weights" bar: a local model loads in a blink, and every command loads one."""
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            hf_logging.enable_progress_bar()


def load_hf_model(folder: Path, where: str) -> nn.Module:
    """The model of a local folder, frozen, in eval mode. `AutoModel`, except for the `...WithProjection`
    towers, which `AutoModel` would load without their projection."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # read when transformers is first imported
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import transformers

    try:
        config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
        arch = (getattr(config, "architectures", None) or [""])[0]
        loader = getattr(transformers, arch) if arch.endswith("WithProjection") else transformers.AutoModel
        with _no_progress_bar():
            model = loader.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError, AttributeError) as exc:
        raise AladinError(f"{where}: {folder}: cannot load the model ({exc})") from exc
    return model.eval().requires_grad_(False)


def tower_layers(tower: nn.Module, folder: Path, where: str) -> nn.ModuleList:
    """The transformer layers of a tower, wherever its family keeps them."""
    for path in _LAYER_PATHS:
        found: Any = tower
        for attr in path.split("."):
            found = getattr(found, attr, None)
        if isinstance(found, nn.ModuleList):
            return found
    raise AladinError(f"{where}: {folder}: no transformer layers found ({type(tower).__name__})")


def run_layer(layer: nn.Module, hidden: torch.Tensor, mask: Any, **kwargs: Any) -> torch.Tensor:
    """One transformer layer, whatever its version returns (a tensor, or a tuple led by it)."""
    out = layer(hidden, mask, **kwargs)
    return out[0] if isinstance(out, tuple) else out


class HFVisionTail(nn.Module):
    """The last layers of a vision tower, its final norm and its pooling: forward(hidden [B, S, D]) → regions
    [B, sum(patches) + 1, D], the patch tokens in row-major order then the pooled token (the class token, or
    SigLIP's attention-pooling head). With no layers it only normalises and pools (the frozen encoder's last step).

    `patches` holds the patch count of each scale: `hidden` is then each scale's token sequence (its class and
    register tokens, then its patches) one after the other, and every scale runs through the layers on its own
    (tokens of one resolution never attend to the other's, as in the frozen tower); the pooled token is the
    first scale's."""

    def __init__(
        self, layers: list[nn.Module], norm: nn.Module, head: nn.Module | None, patches: tuple[int, ...]
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.norm = norm
        self.head = head
        self.patches = patches

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        prefix = (hidden.shape[1] - sum(self.patches)) // len(self.patches)  # class and register tokens
        scales = []
        for scale in hidden.split([prefix + n for n in self.patches], dim=1):
            for layer in self.layers:
                scale = run_layer(layer, scale, None)
            scales.append(self.norm(scale))
        first = scales[0]
        if self.head is not None:
            pooled = self.head(first)
        else:
            pooled = first[:, 0] if prefix else first.mean(dim=1)
        return torch.cat([*(normed[:, prefix:] for normed in scales), pooled.unsqueeze(1)], dim=1)


def _square_size(processor: dict[str, Any], default: int) -> int:
    """The side the processor feeds the model: its crop when it crops, else its size."""
    size = processor.get("crop_size") if processor.get("do_center_crop") else None
    size = size or processor.get("size")
    if isinstance(size, dict):
        size = size.get("height") or size.get("shortest_edge")
    return int(size) if isinstance(size, (int, float)) and size > 0 else default


def _normalisation(folder: Path, where: str) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor]:
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        raise AladinError(
            f"{where}: {folder} has no preprocessor_config.json (the image processor's size, image_mean, "
            "image_std); save the model's processor into the folder"
        )
    processor = read_json(path, "image processor settings")
    stats = []
    for key in ("image_mean", "image_std"):
        value = processor.get(key) if isinstance(processor, dict) else None
        if not (
            isinstance(value, list) and len(value) == 3 and all(isinstance(v, (int, float)) for v in value)
        ):
            raise AladinError(f"{path}: {key} must be a list of 3 numbers, got {value!r}")
        stats.append(torch.tensor(value, dtype=torch.float32).view(1, 3, 1, 1))
    return processor, stats[0], stats[1]


class HFVisionEncoder(ImageEncoder):
    """Patch tokens of a local `transformers` vision tower as regions (see the module docstring).

    With `finetune_layers=K` the last K layers, the final norm and the pooling form a trainable tail
    (`make_tail()`), and `encode` returns the hidden states of every token before them. `projected` (the tower's
    own embedding in the space it shares with its text tower: CLIP's projected class token, SigLIP's pooled
    output) is computed with the frozen tower in every case.
    """

    def __init__(
        self, cfg: ImageEncoderConfig, batch_size: int = 32, device: torch.device | str = "cpu"
    ) -> None:
        folder = check_revision(cfg.name, cfg.revision, "image_encoder")
        model = load_hf_model(folder, "image_encoder")
        tower = model
        while hasattr(tower, "vision_model"):
            tower = tower.vision_model
        if not hasattr(tower, "embeddings") or not hasattr(tower.config, "patch_size"):
            raise AladinError(
                f"image_encoder: {folder} is not a vision transformer folder ({type(model).__name__}); "
                "expected CLIP, SigLIP, DINOv2 or ViT"
            )
        self.config = cfg
        self.batch_size = batch_size
        self.device = torch.device(device)
        vision = tower.config
        processor, self._mean, self._std = _normalisation(folder, "image_encoder")
        patch = int(vision.patch_size)
        self.input_size = max(patch, _square_size(processor, int(vision.image_size)) // patch * patch)
        self._sizes = (self.input_size, 2 * self.input_size) if cfg.multiscale else (self.input_size,)
        self.decode_size = (self._sizes[-1], self._sizes[-1])  # camera JPEGs decode at a reduced scale
        self.read_ahead = 2
        self._resample = int(processor.get("resample", Image.BICUBIC))
        self._rescale = float(processor.get("rescale_factor", 1 / 255))
        self._embeddings = tower.embeddings
        accepts = inspect.signature(tower.embeddings.forward).parameters
        self._interpolate = "interpolate_pos_encoding" in accepts
        if cfg.multiscale and not self._interpolate and "dinov2" not in str(vision.model_type):
            raise AladinError(  # DINOv2 interpolates its position embeddings always; others need the flag
                f"image_encoder.multiscale: {folder} ({type(tower).__name__}) cannot interpolate its position "
                "embeddings to twice its input size; use --no-multiscale"
            )
        self._image_size = int(vision.image_size)
        self._pre_norm = getattr(tower, "pre_layrnorm", None) or nn.Identity()
        layers = tower_layers(tower, folder, "image_encoder")
        k = cfg.finetune_layers
        if not 0 <= k <= len(layers):
            raise AladinError(
                f"image_encoder.finetune_layers: must be in 0..{len(layers)} for {folder}, got {k}"
            )
        norm = next((getattr(tower, n) for n in _FINAL_NORMS if hasattr(tower, n)), nn.Identity())
        head = tower.head if getattr(tower, "use_head", False) else None
        grids = [size // patch for size in self._sizes]
        split = len(layers) - k
        self._trunk = nn.ModuleList(layers[:split])
        self._tail = HFVisionTail(list(layers[split:]), norm, head, tuple(g * g for g in grids))
        projection = getattr(model, "visual_projection", None)
        if (
            projection is None
            and head is not None
            and "siglip" in str(getattr(model.config, "model_type", ""))
        ):
            projection = nn.Identity()  # SigLIP's pooled output is already in the shared space
        self._projection = projection
        self.shared_space = cfg.revision if projection is not None else None
        self._feature_dim = int(vision.hidden_size)
        whole = torch.tensor([[0.0, 0.0, 1.0, 1.0, 1.0]])
        self._boxes = torch.cat([*(grid_boxes(g, g) for g in grids), whole])
        for module in (self._embeddings, self._pre_norm, self._trunk, self._tail, self._projection):
            if module is not None:
                module.to(self.device)

    @property
    def feature_dim(self) -> int:
        return self._feature_dim

    @property
    def num_regions(self) -> int:
        return self._boxes.shape[0]

    def make_tail(self) -> HFVisionTail | None:
        if not self.config.finetune_layers:
            return None
        return copy.deepcopy(self._tail).train(False).requires_grad_(True)

    def pixels(self, images: list[Image.Image], size: int | None = None) -> torch.Tensor:
        """Whole pictures resized to a square side (the model's input size by default) and normalised as its
        processor says."""
        side = (size or self.input_size,) * 2
        arrays = [np.asarray(img.convert("RGB").resize(side, self._resample)) for img in images]
        batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() * self._rescale
        return (batch - self._mean) / self._std

    def _hidden(self, images: list[Image.Image]) -> torch.Tensor:
        """Hidden states of every token before the tail, each scale's sequence after the other."""
        scales = []
        for size in self._sizes:
            interpolate = self._interpolate and size != self._image_size
            kwargs = {"interpolate_pos_encoding": True} if interpolate else {}
            hidden = self._pre_norm(self._embeddings(self.pixels(images, size).to(self.device), **kwargs))
            for layer in self._trunk:
                hidden = run_layer(layer, hidden, None)
            scales.append(hidden)
        return torch.cat(scales, dim=1)

    def encode(self, images: list[Image.Image]) -> RegionBatch:
        """Regions of `images` (the hidden states before the tail when fine-tuning) and their projected
        embeddings when the tower has a shared space; ordinary tensors, computed under inference mode."""
        if not images:
            raise AladinError("encode: no images given")
        outputs, projected = [], []
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                hidden = self._hidden(images[start : start + self.batch_size])
                final = self._tail(hidden)
                outputs.append(hidden if self.config.finetune_layers else final)
                if self._projection is not None:
                    projected.append(self._projection(final[:, -1]))
        regions = torch.cat(outputs).float()
        n = regions.shape[0]
        boxes = self._boxes.to(self.device).expand(n, -1, -1).clone()
        mask = torch.ones(n, self.num_regions, dtype=torch.bool, device=self.device)
        return RegionBatch(regions, boxes, mask, torch.cat(projected).float() if projected else None)
