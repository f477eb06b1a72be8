"""The one place where command-line flags become typed configs."""

from __future__ import annotations

import argparse
import os
from dataclasses import replace

from aladin.config import (
    CHOICES,
    DatasetSplitConfig,
    ImageEncoderConfig,
    RecipeConfig,
    RunConfig,
    TextEncoderConfig,
    recipe_from_saved,
)
from aladin.fileio import read_json
from aladin.hf_folder import HF_PREFIX, is_hf_name


def encoder_name(text: str) -> str:
    """An encoder name as typed; an "hf:PATH" folder made absolute, so that the checkpoints, caches and indexes
    that record it find it again from any working directory."""
    if not is_hf_name(text):
        return text
    return HF_PREFIX + os.path.abspath(os.path.expanduser(text[len(HF_PREFIX) :]))


def add_encoder_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--image-encoder",
        type=encoder_name,
        default=ImageEncoderConfig.name,
        help="image backbone name, or hf:PATH: a local Hugging Face CLIP, SigLIP, DINOv2 or ViT folder (its patch "
        "tokens are the regions)",
    )
    parser.add_argument(
        "--multiscale",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="regions from the 7×7 grid and the 14×14 map at twice the resolution (default for the bundled "
        "encoder; --no-multiscale: the 7×7 grid only, 4× faster to extract); for hf:PATH, the patch tokens at the "
        "input size and at twice it (off unless given: not measured on real weights yet)",
    )
    parser.add_argument(
        "--image-finetune-layers",
        type=int,
        default=ImageEncoderConfig.finetune_layers,
        help="backbone stages (transformer layers for hf:PATH) left trainable",
    )
    parser.add_argument(
        "--train-views",
        type=int,
        default=ImageEncoderConfig.train_views,
        help="views cached per training image: the picture plus random resized crops (1 = no augmentation)",
    )
    parser.add_argument(
        "--region-features",
        default=ImageEncoderConfig.features_path,
        help="with --image-encoder precomputed: .npz folder or HDF5 file",
    )
    parser.add_argument(
        "--max-regions",
        type=int,
        default=ImageEncoderConfig.max_regions,
        help="precomputed regions kept per image",
    )
    parser.add_argument(
        "--object-tags",
        action="store_true",
        help="with --image-encoder precomputed: append the detector's object tags to the regions as words",
    )
    parser.add_argument(
        "--classifier-tags",
        action="store_true",
        help="with the bundled EfficientNet: append what its ImageNet classifier names in the picture and in each "
        "cell (e.g. 'brown bear') to the regions as words, encoded by --text-encoder",
    )
    parser.add_argument(
        "--text-encoder",
        type=encoder_name,
        default=TextEncoderConfig.name,
        help="bundled model name, a local HF BERT folder, or hf:PATH: a local CLIP, SigLIP or BERT-family folder",
    )
    parser.add_argument("--max-words", type=int, default=TextEncoderConfig.max_length, help="token limit")
    parser.add_argument(
        "--text-finetune-layers",
        type=int,
        default=TextEncoderConfig.finetune_layers,
        help="text layers left trainable",
    )


def encoder_configs(args: argparse.Namespace) -> tuple[ImageEncoderConfig, TextEncoderConfig]:
    image = ImageEncoderConfig(
        name=args.image_encoder,
        multiscale=args.multiscale,
        train_views=args.train_views,
        finetune_layers=args.image_finetune_layers,
        features_path=args.region_features,
        max_regions=args.max_regions,
        tags_text_encoder=args.text_encoder if args.object_tags or args.classifier_tags else "",
        classifier_tags=args.classifier_tags,
    )
    text = TextEncoderConfig(
        name=args.text_encoder, max_length=args.max_words, finetune_layers=args.text_finetune_layers
    )
    return image, text


def add_split_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=DatasetSplitConfig.val_fraction,
        help="share of train carved out for validation when the data has no val split",
    )
    parser.add_argument(
        "--split-seed", type=int, default=DatasetSplitConfig.seed, help="seed of that carve-out"
    )


def split_config(args: argparse.Namespace) -> DatasetSplitConfig:
    return DatasetSplitConfig(val_fraction=args.val_fraction, seed=args.split_seed)


def add_recipe_flags(parser: argparse.ArgumentParser) -> None:
    defaults = RecipeConfig()
    parser.add_argument(
        "--config", help="recipe JSON (as written to <run>/recipe.json); flags below override it"
    )
    parser.add_argument("--alignment-loss", choices=CHOICES["alignment.loss"])
    parser.add_argument("--matching-loss", choices=CHOICES["matching.loss"])
    parser.add_argument("--alignment-epochs", type=int, help=f"default {defaults.alignment.epochs}")
    parser.add_argument("--matching-epochs", type=int, help=f"default {defaults.matching.epochs}")
    parser.add_argument("--batch-size", type=int, help=f"default {defaults.alignment.batch_size}")
    parser.add_argument(
        "--lr",
        type=float,
        help=f"learning rate of the alignment and matching stages (defaults {defaults.alignment.lr} and "
        f"{defaults.matching.lr}); the linear baseline keeps its own ({defaults.baseline.lr})",
    )
    parser.add_argument(
        "--layers", type=int, help=f"transformer layers per modality (default {defaults.model.num_layers})"
    )
    parser.add_argument("--embed-dim", type=int, help=f"default {defaults.model.embed_dim}")
    parser.add_argument(
        "--global-dim", type=int, help=f"matching-head vector size (default {defaults.model.global_dim})"
    )
    parser.add_argument(
        "--matching-input",
        choices=CHOICES["model.matching_input"],
        help="what the matching head reads: the frozen encoder features (default; better on validation: "
        "benchmarks/results/ablation.md) or the teacher's contextualised features, as in ALADIN",
    )
    parser.add_argument(
        "--matching-form",
        choices=CHOICES["model.matching_form"],
        help="the matching head: pooled features projected (default) or learned detectors, max over regions "
        "and a non-negative mean over words (the teacher's form in one vector; best on the synthetic demo)",
    )
    parser.add_argument(
        "--word-weights", action="store_true", help="learn a weight per word in the alignment score"
    )
    parser.add_argument("--seed", type=int, help=f"seed of every stage (default {defaults.alignment.seed})")
    parser.add_argument("--rerank-k", type=int, help=f"default {defaults.rerank_k}")
    parser.add_argument("--no-infonce-student", action="store_true", help="skip the no-distillation ablation")
    parser.add_argument(
        "--device",
        default=RunConfig.device,
        help=f"where the run executes, not part of its recipe: auto, cpu or cuda (default {RunConfig.device})",
    )


def run_config(args: argparse.Namespace) -> RunConfig:
    """Where the run executes: resuming a run elsewhere keeps its recipe."""
    return RunConfig(device=args.device)


def recipe_config(args: argparse.Namespace) -> RecipeConfig:
    """Recipe = defaults, then the --config file (a saved recipe.json, or a hand-written one setting only some
    fields), then explicit flags."""
    recipe = (
        recipe_from_saved(read_json(args.config, "recipe"), args.config, partial=True)
        if args.config
        else RecipeConfig()
    )
    model = recipe.model
    if args.layers is not None:
        model = replace(model, num_layers=args.layers)
    if args.embed_dim is not None:
        model = replace(model, embed_dim=args.embed_dim)
    if args.global_dim is not None:
        model = replace(model, global_dim=args.global_dim)
    if args.matching_input is not None:
        model = replace(model, matching_input=args.matching_input)
    if args.matching_form is not None:
        model = replace(model, matching_form=args.matching_form)
    if args.word_weights:
        model = replace(model, word_weights=True)
    shared = {
        k: v
        for k, v in {"batch_size": args.batch_size, "lr": args.lr, "seed": args.seed}.items()
        if v is not None
    }
    alignment = replace(recipe.alignment, **shared)
    matching = replace(recipe.matching, **shared)
    if args.alignment_loss:
        alignment = replace(alignment, loss=args.alignment_loss)
    if args.matching_loss:
        matching = replace(matching, loss=args.matching_loss)
    if args.alignment_epochs is not None:
        alignment = replace(alignment, epochs=args.alignment_epochs)
    if args.matching_epochs is not None:
        matching = replace(matching, epochs=args.matching_epochs)
    return replace(
        recipe,
        model=model,
        alignment=alignment,
        matching=matching,
        baseline=replace(recipe.baseline, **{k: v for k, v in shared.items() if k == "seed"}),
        rerank_k=args.rerank_k if args.rerank_k is not None else recipe.rerank_k,
        train_infonce_student=recipe.train_infonce_student and not args.no_infonce_student,
    )
