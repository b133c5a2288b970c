"""`cifar100 backbones`: each registered backbone with its weights, resolution and size."""

from __future__ import annotations

import argparse
import json

HELP = "list the backbones with their weights, resolution and size"
DESCRIPTION = (
    "Each registered backbone with its weight sources, native resolution, input preprocessing "
    "and parameter count (Keras-style, batch-norm statistics included). Any timm model also "
    "works as --backbone timm:NAME where timm is installed."
)
SCALING = {  # each preprocessing mode (model.preprocess) as the table shows it
    "tf": "x/127.5 - 1",
    "torch": "ImageNet mean/std",
    "none": "x/255",
    "raw": "0..255",
    "lite": "(x - 127)/128",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    # Imported here, not above, to keep the CLI's start fast: the models load torch.
    from cifar100.models.registry import describe_backbones

    rows = describe_backbones()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'backbone':<20} {'params':>12} {'features':>8} {'native':>7}  input scaling")
    for r in rows:
        print(
            f"{r['name']:<20} {r['params']:>12,} {r['out_features']:>8} "
            f"{r['native_size']:>7}  {SCALING.get(r['preprocessing'], r['preprocessing'])}"
        )
        for source, origin in r["weights"].items():
            print(f"{'':<22}--weights {source}: {origin}")
    print("any timm model: --backbone timm:NAME (needs `pip install timm`)")
    return 0
