"""Small typed configs shared by every layer, with strict JSON (de)serialisation and format versions."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field, fields
from typing import Any, TypeVar

from aladin.errors import AladinError
from aladin.hf_folder import is_hf_name, resolve_revision
from aladin.migrations import SCHEMA_KEY, SCHEMA_VERSION, migrate, stored_version

#: Bumped whenever the on-disk layout of checkpoints or feature caches changes incompatibly.
CHECKPOINT_FORMAT_VERSION = 1
CACHE_FORMAT_VERSION = 1

T = TypeVar("T")


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Dataclass → plain dict (nested dataclasses included)."""
    return asdict(cfg)


def config_from_dict(cls: type[T], data: Any, where: str = "config", *, partial: bool = True) -> T:
    """Dict → dataclass, refusing unknown fields and wrong types with a message naming the field.

    `partial` lets absent fields (and absent fields of a nested section) keep their defaults: what hand-written
    `--config` recipes rely on. Saved files are read with `partial=False` after their migrations
    (aladin.migrations), so a field missing there is an error, never a silent default.
    """
    if not isinstance(data, dict):
        raise AladinError(f"{where}: expected an object for {cls.__name__}, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise AladinError(f"{where}: unknown field(s) {', '.join(unknown)} for {cls.__name__}")
    missing = sorted(set(known) - set(data))
    if missing and not partial:
        raise AladinError(f"{where}: missing field(s) {', '.join(missing)} for {cls.__name__}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        spec = known[name]
        sub_type = _nested_type(spec)
        if sub_type is not None:
            if partial and isinstance(value, dict):
                # a partial section keeps the rest of this field's own default (e.g. the matching stage's loss)
                value = {**config_to_dict(spec.default_factory()), **value}  # type: ignore[misc]
            kwargs[name] = config_from_dict(sub_type, value, f"{where}.{name}", partial=partial)
            continue
        default = spec.default
        if default is not dataclasses.MISSING and default is not None and not _compatible(default, value):
            raise AladinError(
                f"{where}.{name}: expected {type(default).__name__}, got {type(value).__name__} ({value!r})"
            )
        kwargs[name] = value
    return cls(**kwargs)


def first_difference(stored: Any, wanted: Any, prefix: str) -> str | None:
    """Dotted name and values of the first field that differs, e.g. "image_encoder.multiscale was False when
    saved, True now"; None when equal."""
    if isinstance(stored, dict) and isinstance(wanted, dict):
        for key in sorted(set(stored) | set(wanted)):
            diff = first_difference(stored.get(key), wanted.get(key), f"{prefix}.{key}")
            if diff:
                return diff
        return None
    return None if stored == wanted else f"{prefix} was {stored!r} when saved, {wanted!r} now"


def _nested_type(f: dataclasses.Field) -> type | None:
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        made = f.default_factory()  # type: ignore[misc]
        if dataclasses.is_dataclass(made):
            return type(made)
    return None


def _compatible(default: Any, value: Any) -> bool:
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    return isinstance(value, type(default))


#: The training stages a recipe holds, in the order `aladin train` runs them.
STAGES = ("baseline", "alignment", "matching")

#: Every closed set of choices a config field takes, by dotted field name: read by the dataclasses' validation,
#: the training stages and the CLI's `choices=` (the index backends' names live in the index package's registry).
CHOICES: dict[str, tuple[str, ...]] = {
    "alignment.loss": ("infonce", "hinge", "infonce+hinge"),
    "matching.loss": ("distill", "infonce", "distill+infonce"),
    "baseline.loss": ("infonce",),
    "model.word_aggregation": ("mean", "sum"),
    "model.global_pooling": ("mean", "max"),
    "model.matching_input": ("contextual", "frozen"),
    "model.matching_form": ("pooled", "detectors"),
    "image_encoder.tag_boxes": ("image", "cell"),
}


def default_multiscale(name: str) -> bool:
    """Whether an image encoder runs at two resolutions unless told otherwise: yes for the bundled CNN (measured,
    see ImageEncoderConfig.multiscale), no for hf:PATH towers (two resolutions of patch tokens are not measured on
    real weights yet) and for precomputed regions (they have no scales)."""
    return not (name == "precomputed" or is_hf_name(name))


@dataclass(frozen=True)
class ImageEncoderConfig:
    """Which image backbone gives the regions, and how."""

    name: str = "efficientnet-lite0"
    image_size: int = 224
    #: Run the CNN at twice the resolution and keep both the 7×7 grid (2×2-pooled) and the 14×14 map as regions
    #: (49 + 196). Validation preferred it on real photos by 30 rsum for the best scorer (benchmarks/ablation.py),
    #: for 4× the extraction time; the synthetic demo turns it off to fit its time budget. For hf:PATH towers:
    #: the patch tokens at the input size and at twice it. Precomputed regions ignore it. None (unset) = the
    #: encoder's default, `default_multiscale(name)`; the made config always holds a bool.
    multiscale: bool | None = None
    #: Number of final backbone stages kept trainable; the cache then holds the map before them.
    finetune_layers: int = 0
    #: For name="precomputed": a folder of per-image .npy/.npz files or one HDF5 file of detector regions.
    features_path: str = ""
    #: For name="precomputed": keep at most this many regions per image (0 = the most any image has).
    max_regions: int = 0
    #: For name="precomputed": append each image's detector object tags to its regions as word-piece
    #: features of this text encoder (a bundled name or a local HF folder), the Oscar/VinVL way; "" = no tags.
    tags_text_encoder: str = ""
    #: Word pieces of the tags kept per image (the tag encoder's [CLS]/[SEP] come on top). None (unset) = 24
    #: with `classifier_tags` (measured on the COCO subset, issue #28), else 16; the made config holds an int.
    max_tag_tokens: int | None = None
    #: For the bundled EfficientNet encoders: name what the ImageNet classifier head sees in the whole image
    #: (the pooled map) and in each cell (the coarse cells when multi-scale) and append those class names as
    #: word-piece regions, as `tags_text_encoder` does for detector tags (its text encoder; "" = the default
    #: text encoder's). The thresholds, cap and boxes below won on validation against more and fewer tags and
    #: cell boxes (COCO subset, three seeds each; README, "Classifier tags").
    classifier_tags: bool = False
    #: Whole-image tags: at most this many top classes of the pooled map, each with probability ≥ the minimum.
    tag_global_top: int = 5
    tag_global_min_p: float = 0.02
    #: Cell tags: each cell's top class when its probability is ≥ this.
    tag_cell_min_p: float = 0.3
    #: Distinct class names kept per image (whole-image tags first, by probability, then cell tags).
    max_tags: int = 10
    #: The box of a tag's word pieces: "image" (the whole picture, as detector tags) or "cell" (the cells that
    #: named it; a whole-image tag keeps the whole picture).
    tag_boxes: str = "image"
    #: Views cached per training image: the picture itself plus `train_views - 1` random resized crops (seeded
    #: per image), one of which each training step draws, so the heads see augmented images at no encoder cost.
    train_views: int = 1
    #: For name="hf:PATH" (a local `transformers` vision folder): the folder's name and hashes of its config and
    #: weights, filled in when the config is made (`aladin.hf_folder`), so features and heads from another
    #: folder are refused. "" for the bundled encoders.
    revision: str = ""

    def __post_init__(self) -> None:
        if self.name == "precomputed":
            # stored regions have no scales: recorded as single-scale, so caches stay comparable (set here,
            # before anyone holds the frozen instance)
            object.__setattr__(self, "multiscale", False)
        elif self.multiscale is None:
            object.__setattr__(self, "multiscale", default_multiscale(self.name))
        elif not isinstance(self.multiscale, bool):
            raise AladinError(f"image_encoder.multiscale: expected true or false, got {self.multiscale!r}")
        object.__setattr__(self, "revision", resolve_revision(self.name, self.revision, "image_encoder"))
        if self.train_views < 1:
            raise AladinError(f"image_encoder.train_views: must be at least 1, got {self.train_views}")
        if self.train_views > 1 and self.name == "precomputed":
            raise AladinError(
                "image_encoder.train_views: augmented views are crops of the pictures, which precomputed "
                "regions do not have"
            )
        if self.classifier_tags:
            self._check_classifier_tags()
        elif self.tags_text_encoder and self.name != "precomputed":
            raise AladinError(
                f"image_encoder.tags_text_encoder: object tags come with precomputed detector regions, "
                f"but the image encoder is {self.name!r}"
            )
        if self.max_tag_tokens is None:
            object.__setattr__(self, "max_tag_tokens", 24 if self.classifier_tags else 16)
        if not isinstance(self.max_tag_tokens, int) or isinstance(self.max_tag_tokens, bool):
            raise AladinError(
                f"image_encoder.max_tag_tokens: expected an integer, got {self.max_tag_tokens!r}"
            )
        if self.max_tag_tokens < 1:
            raise AladinError(f"image_encoder.max_tag_tokens: must be at least 1, got {self.max_tag_tokens}")

    def _check_classifier_tags(self) -> None:
        """Classifier tags need the bundled CNN's ImageNet head on the final map, and sane thresholds."""
        if self.name == "precomputed" or is_hf_name(self.name):
            raise AladinError(
                f"image_encoder.classifier_tags: the tags come from the bundled EfficientNet's ImageNet "
                f"classifier, but the image encoder is {self.name!r}"
            )
        if self.finetune_layers:
            raise AladinError(
                "image_encoder.classifier_tags: the classifier reads the final frozen map, which a fine-tuned "
                "tail changes; set finetune_layers to 0"
            )
        _choice("image_encoder.tag_boxes", self.tag_boxes, CHOICES["image_encoder.tag_boxes"])
        for name in ("tag_global_min_p", "tag_cell_min_p"):
            if not 0 <= getattr(self, name) <= 1:
                raise AladinError(f"image_encoder.{name}: a probability in [0, 1], got {getattr(self, name)}")
        if self.tag_global_top < 0 or self.max_tags < 1:
            raise AladinError(
                f"image_encoder: need tag_global_top ≥ 0 and max_tags ≥ 1, got {self.tag_global_top} and "
                f"{self.max_tags}"
            )
        if not self.tags_text_encoder:
            object.__setattr__(self, "tags_text_encoder", TextEncoderConfig.name)


@dataclass(frozen=True)
class TextEncoderConfig:
    """Which text encoder gives the word features: a name of a bundled model or a local HF folder."""

    name: str = "all-MiniLM-L6-v2"
    max_length: int = 40
    #: Number of final transformer layers kept trainable; the cache holds the hidden states before them.
    finetune_layers: int = 0
    #: For name="hf:PATH": the folder's identity, as for ImageEncoderConfig.revision.
    revision: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "revision", resolve_revision(self.name, self.revision, "text_encoder"))


@dataclass(frozen=True)
class ModelConfig:
    """Heads on top of the encoders. Dimensions of the encoder features are recorded so loading can check them."""

    image_feature_dim: int = 1280
    text_feature_dim: int = 384
    box_dim: int = 5
    embed_dim: int = 256
    global_dim: int = 256
    num_layers: int = 1
    #: Transformer layers of the matching head on top of the teacher's contextualised features. 0 (pool and
    #: project) generalised better than 1 on the demo's validation split: 267 against 258 rsum.
    matching_layers: int = 0
    num_heads: int = 4
    ff_dim: int = 1024
    dropout: float = 0.1
    #: How word scores combine into one pair score: "mean" or "sum" over words.
    word_aggregation: str = "mean"
    #: How the matching head pools the contextualised sequence: "mean" (masked) or "max".
    global_pooling: str = "mean"
    #: What the matching head reads: "contextual" (the teacher's contextualised regions and words, as in
    #: ALADIN) or "frozen" (the encoders' own features, so the student does not inherit a weak teacher's view).
    matching_input: str = "contextual"
    #: The matching head's form: "pooled" (pool the sequence, then project; a linear map of the mean on frozen
    #: features) or "detectors" (a per-region and per-word MLP into global_dim detectors, its hidden width the
    #: teacher's ff_dim and no dropout; the image keeps each detector's best region, the caption the mean of its
    #: words' non-negative demands).
    matching_form: str = "pooled"
    #: Learn a weight per word (softmax over the caption's words) in the alignment score, so that function
    #: words can fade instead of counting as much as nouns.
    word_weights: bool = False

    def __post_init__(self) -> None:
        for name in ("word_aggregation", "global_pooling", "matching_input", "matching_form"):
            _choice(f"model.{name}", getattr(self, name), CHOICES[f"model.{name}"])
        if self.matching_form == "detectors" and self.matching_layers:
            raise AladinError(
                "model.matching_layers: the detectors form has no transformer layers; set it to 0"
            )
        if self.matching_form == "detectors" and self.global_pooling != "mean":
            raise AladinError(
                "model.global_pooling: the detectors form pools its own way (max over regions, mean over "
                "words); leave it at 'mean'"
            )
        for name in (
            "image_feature_dim",
            "text_feature_dim",
            "embed_dim",
            "global_dim",
            "num_heads",
            "ff_dim",
        ):
            if getattr(self, name) < 1:
                raise AladinError(f"model.{name}: must be at least 1, got {getattr(self, name)}")
        if self.embed_dim % self.num_heads:
            raise AladinError(
                f"model.embed_dim: {self.embed_dim} is not divisible by num_heads={self.num_heads}"
            )
        if not 0 <= self.dropout < 1:
            raise AladinError(f"model.dropout: must be in [0, 1), got {self.dropout}")


@dataclass(frozen=True)
class TrainConfig:
    """One training stage. Stage "alignment" trains the teacher; stage "matching" the student."""

    stage: str = "alignment"
    #: alignment stage: "infonce", "hinge", or "infonce+hinge" (hinge added after `hinge_warmup_epochs`).
    #: matching stage: "distill", "infonce" or "distill+infonce".
    loss: str = "infonce"
    epochs: int = 20
    batch_size: int = 128
    lr: float = 5e-4
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    grad_clip: float = 2.0
    seed: int = 0
    margin: float = 0.2
    hinge_warmup_epochs: int = 2
    distill_temperature: float = 1.0
    distill_weight: float = 1.0
    infonce_weight: float = 1.0
    #: Stop after this many epochs without a better validation rsum (0 = never stop early).
    patience: int = 4
    amp: bool = True

    def __post_init__(self) -> None:
        _choice(f"{self.stage}.stage", self.stage, STAGES)
        _choice(f"{self.stage}.loss", self.loss, CHOICES[f"{self.stage}.loss"])
        if self.epochs < 1 or self.batch_size < 2 or self.lr <= 0:
            raise AladinError(
                f"{self.stage}: need epochs ≥ 1, batch_size ≥ 2 and lr > 0, got {self.epochs}, "
                f"{self.batch_size}, {self.lr}"
            )


def _choice(field_name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise AladinError(f"{field_name}: must be one of {', '.join(allowed)}; got {value!r}")


@dataclass(frozen=True)
class DatasetSplitConfig:
    """How a validation split is carved from train when a dataset has none."""

    val_fraction: float = 0.1
    val_size: int = 0
    seed: int = 0


@dataclass(frozen=True)
class AladinConfig:
    """Everything that defines a trained model: saved in its checkpoint's config.json."""

    image_encoder: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    model: ModelConfig = field(default_factory=ModelConfig)


def _default_heads() -> ModelConfig:
    """The heads `aladin train` builds: the student reads the frozen encoder features, which validation preferred
    on the real-photo COCO subset (334.2 against 317.6 rsum). The synthetic demo's validation chose another
    student (`pipeline.demo_recipe`). ModelConfig's own default stays "contextual", what models trained before
    the option existed did (aladin.migrations records that for their files)."""
    return ModelConfig(matching_input="frozen")


def recipe_from_saved(data: Any, where: str, partial: bool = False) -> RecipeConfig:
    """A recipe as a run saved it (`<run>/recipe.json`), migrated from its schema version; `partial` also accepts
    a hand-written recipe that sets only some fields (`aladin train --config`), the rest at their defaults."""
    if isinstance(data, dict):
        version = stored_version(data)
        data = migrate("recipe", {k: v for k, v in data.items() if k != SCHEMA_KEY}, version, where)
    return config_from_dict(RecipeConfig, data, where, partial=partial)


def recipe_to_saved(recipe: RecipeConfig) -> dict[str, Any]:
    """What `<run>/recipe.json` holds: the recipe and its schema version."""
    return {SCHEMA_KEY: SCHEMA_VERSION, **config_to_dict(recipe)}


def model_config_from_saved(data: Any, version: Any, where: str) -> AladinConfig:
    """A model's config as a checkpoint saved it at schema `version`, migrated."""
    return config_from_dict(AladinConfig, migrate("model", data, version, where), where, partial=False)


def _alignment_defaults() -> TrainConfig:
    return TrainConfig(stage="alignment", loss="infonce", epochs=20, lr=5e-4, patience=3)


def _matching_defaults() -> TrainConfig:
    return TrainConfig(stage="matching", loss="distill+infonce", epochs=20, lr=1e-3, patience=4)


def _baseline_defaults() -> TrainConfig:
    return TrainConfig(stage="baseline", loss="infonce", epochs=20, lr=2e-3, warmup_steps=20, patience=3)


@dataclass(frozen=True)
class RecipeConfig:
    """A whole training run: the heads, each stage's settings, and the re-rank depth used in evaluation."""

    model: ModelConfig = field(default_factory=_default_heads)
    alignment: TrainConfig = field(default_factory=_alignment_defaults)
    matching: TrainConfig = field(default_factory=_matching_defaults)
    baseline: TrainConfig = field(default_factory=_baseline_defaults)
    #: The no-distillation ablation: the same student trained with plain InfoNCE.
    train_infonce_student: bool = True
    #: The deepest re-rank tried when validation chooses the re-rank depth and fusion weight (10, 20, 50 and
    #: this); also the depth for models trained before that choice was recorded.
    rerank_k: int = 100


@dataclass(frozen=True)
class RunConfig:
    """Where and how a run executes: not part of the recipe (a run may resume elsewhere), never saved with it."""

    #: "auto" (CUDA when present), "cpu" or "cuda[:N]".
    device: str = "auto"
