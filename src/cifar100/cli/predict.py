"""`cifar100 predict`: the top classes of image files with a trained model."""

from __future__ import annotations

import argparse
import json
import sys

from cifar100.cli.args import DEVICE_DEFAULT_HELP, add_model_target, at_least
from cifar100.cli.threads import use_free_cores
from cifar100.display_text import DISPLAY_LIMIT, display_name, visible

HELP = "classify image files with a trained model"
DESCRIPTION = (
    "Top-k classes with probabilities for each image (any size or mode), prepared exactly as "
    "in training. Exit code 1 if any image could not be read; the others are still predicted."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_target(p, "checkpoint")
    p.add_argument(
        "images",
        nargs="+",
        metavar="IMAGE",
        help="image files (any size or mode), or folders: the images under them",
    )
    p.add_argument(
        "-k",
        "--top",
        type=at_least(1),
        default=5,
        metavar="K",
        help="how many classes to show (default: 5)",
    )
    p.add_argument("--json", action="store_true", help="print JSON lines instead of text")
    p.add_argument(
        "--explain",
        metavar="DIR",
        help="also write DIR/<image name>.png for each image: what the model saw | where it "
        "looked for the predicted class (a heatmap over it); needs a PyTorch model, not ONNX",
    )
    p.add_argument(
        "--explain-method",
        choices=("gradcam", "occlusion"),  # runtime/explain.py's METHODS (not imported: torch)
        help="gradcam: the last feature map weighted by its gradients (fast); occlusion: how "
        "much the probability falls when each patch is greyed out (slower) (default: gradcam, "
        "or occlusion for a model whose last feature map is a single cell)",
    )
    p.add_argument("--device", default="auto", help=DEVICE_DEFAULT_HELP)


def run(args: argparse.Namespace) -> int:
    # Imported here, not above, to keep the CLI's start fast: the model loads torch.
    from cifar100.predict import predict_files
    from cifar100.runtime.trained_model import load

    use_free_cores()
    model = load(args.checkpoint, device=args.device)
    results = predict_files(
        model, args.images, k=args.top, explain_dir=args.explain, explain_method=args.explain_method
    )
    for r in results:
        if args.json:
            print(json.dumps(r.to_dict()))
        elif r.error:  # names shown, not obeyed (display_text); --json keeps them exact
            print(visible(f"{r.name}: error: {r.error}"), file=sys.stderr)
        else:
            top = ", ".join(f"{display_name(c, DISPLAY_LIMIT)} {p:.1%}" for c, p in r.top)
            if r.none_of_these:  # said first, plainly: the guesses after it are only guesses
                top = f"none of the {len(model.classes)} classes (best guesses: {top})"
            print(f"{visible(r.name)}: {top}")
    explained = sum(1 for r in results if not r.error)
    if args.explain and explained:
        what = "explanation" if explained == 1 else "explanations"
        print(f"{explained} {what} written to {visible(args.explain)}", file=sys.stderr)
    return 1 if any(r.error for r in results) else 0
