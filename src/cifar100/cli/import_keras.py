"""`cifar100 import-keras`: a trained Keras model of the report's architecture as a run."""

from __future__ import annotations

import argparse

from cifar100.cli.args import add_common
from cifar100.config import CHOICES, DataConfig

HELP = "bring in a trained Keras model of the report's architecture"
DESCRIPTION = (
    "Convert a Keras model of the report's architecture (.h5 or .keras, as model.save writes "
    "them; read with h5py, no TensorFlow needed) into a cifar100 run directory, to evaluate, "
    "predict with, or fine-tune (train --init RUN_DIR)."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE", help="the Keras model file")
    p.add_argument("--out", required=True, metavar="DIR", help="the run directory to create")
    p.add_argument(
        "--dataset",
        choices=CHOICES["data.dataset"],
        default=DataConfig.dataset,
        help=f"the data it was trained on, for class names (default: {DataConfig.dataset})",
    )
    p.add_argument(
        "--data",
        metavar="PATH",
        help="that data's archive or folder (default: CIFAR's, downloaded or from the cache)",
    )
    p.add_argument(
        "--class-names",
        metavar="FILE",
        help="a text file of class names, one per line in output order (instead of the data)",
    )
    p.add_argument(
        "--preprocess",
        # the model.preprocess modes but EfficientNet-Lite's: a Keras model's input scalings
        choices=tuple(m for m in CHOICES["model.preprocess"] if m != "lite"),
        help="how the Keras model's inputs were scaled (the converted model takes 0..255 pixels "
        "and scales them itself): tf = x/127.5-1, ResNet50V2's and what a Rescaling(1/127.5, "
        "-1) layer in the model does (default); torch = x/255, then minus the ImageNet mean "
        "and over its std per RGB channel, as torchvision models expect; none = x/255; "
        "raw = 0..255 pixels unscaled",
    )
    add_common(p, device=False)


def run(args: argparse.Namespace) -> int:
    # Imported here, not above, to keep the CLI's start fast: the import loads torch.
    from cifar100.data.class_names import read_class_names
    from cifar100.keras_import import import_keras_model
    from cifar100.paths import resolve_cache_dir

    names = read_class_names(args.class_names) if args.class_names else None
    out = import_keras_model(
        args.file,
        args.out,
        DataConfig(dataset=args.dataset, path=args.data),
        resolve_cache_dir(args.cache_dir),
        class_names=names,
        preprocess=args.preprocess,
        progress=not args.no_progress,
    )
    print(f"imported {args.file} into {out}; next: cifar100 evaluate {out}")
    return 0
