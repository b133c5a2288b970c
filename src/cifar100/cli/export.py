"""`cifar100 export`: a trained model in a format other tools run."""

from __future__ import annotations

import argparse
import sys

from cifar100.cli.args import add_checkpoint_choice, add_common, at_least
from cifar100.errors import CifarError
from cifar100.export.formats import FORMATS  # the registry alone: no torch

HELP = "write a trained model as ONNX, safetensors, Keras or a Triton model repository"
DESCRIPTION = (
    "Write a trained model (a run directory, a checkpoint, or a safetensors export) in a "
    "format other tools run: onnx (uint8 images in; calibrated probabilities, logits, the OOD "
    "score and the 'none of these' verdict out; the scaling, upsampling, temperature and "
    "threshold inside; checked against PyTorch on the model's test images before it is "
    "written), safetensors (weights and settings, no pickle), keras (a .keras file for the "
    "report's ResNet50V2 architecture, with the same four outputs) or triton (a Triton "
    "Inference Server model repository around the ONNX graph). Each carries the model's "
    "classes, image size, settings and provenance."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="RUN_OR_CHECKPOINT", help="a run directory or a model file")
    p.add_argument(
        "--format",
        required=True,
        choices=list(FORMATS),
        help="; ".join(f"{f.name}: {f.description}" for f in FORMATS.values()),
    )
    p.add_argument(
        "--out", metavar="PATH", help="default: RUN_DIR/model.FORMAT (RUN_DIR/triton for triton)"
    )
    p.add_argument("--force", action="store_true", help="replace an existing output")
    p.add_argument(
        "--quantize",
        choices=["int8"],
        help="onnx, triton: ONNX Runtime static int8 quantisation, calibrated on training images",
    )
    add_checkpoint_choice(p)
    p.add_argument(
        "--name", default="cifar100", help="triton: the model's name (default: cifar100)"
    )
    p.add_argument(
        "--max-batch",
        type=at_least(1),
        default=64,
        metavar="N",
        help="triton: max_batch_size of the model config (default: 64)",
    )
    p.add_argument(
        "--data",
        metavar="PATH",
        help="the model's data, for the ONNX check and int8 calibration (default: its own)",
    )
    add_common(p, device=False)


def run(args: argparse.Namespace) -> int:
    # Imported here, not above, to keep the CLI's start fast: the export loads torch.
    from cifar100.export.formats import check_output, export_model, model_images
    from cifar100.runtime.trained_model import load

    model = load(args.target, device="cpu", checkpoint=args.checkpoint)
    # Before reading the data: a refusal comes at once, not after the work it would waste.
    check_output(model, args.format, args.out, force=args.force, quantize=args.quantize,
                 name=args.name)  # fmt: skip
    images, why = None, ""
    if args.format in ("onnx", "triton") and model.runtime == "torch":
        images, why = model_images(model, args.data, args.cache_dir)
        if images is None and (args.data or args.quantize):
            raise CifarError(f"cannot read the images to check and calibrate on: {why}")
    result = export_model(
        model,
        args.format,
        args.out,
        force=args.force,
        quantize=args.quantize,
        name=args.name,
        images=images,
        max_batch=args.max_batch,
    )
    print(f"wrote {result.path} ({args.format}{_details(args, result)})")
    if args.quantize:
        print("\n".join(_int8_lines(result)))
    if result.note:
        print(f"note: {result.note}" + (f" ({why})" if why else ""), file=sys.stderr)
    return 0


def _details(args: argparse.Namespace, result) -> str:
    checked = result.details.get("max_abs_diff")
    return (", int8, quantised from the fp32 graph" if args.quantize else "") + (
        f"; the fp32 graph in ONNX Runtime vs PyTorch: max |difference| of probabilities "
        f"and OOD scores "
        f"{checked:.1e} on {result.details.get('images_checked')} images"
        if checked is not None
        else ""
    )


def _int8_lines(result) -> list[str]:
    """What the int8 graph was measured on: its top-1 against the fp32 graph's on the check
    images; its test accuracy is not measured by the export (the fp32 one's is not its)."""
    int8 = result.details.get("int8") or {}
    lines = []
    if "int8_top1_differ" in int8:
        lines.append(
            f"the int8 graph vs the fp32 graph: top-1 differs on {int8['int8_top1_differ']} of "
            f"{int8['int8_images_compared']} test images (max |difference| of probabilities "
            f"{int8['int8_max_abs_diff']:.1e})"
        )
    lines.append(
        f"the int8 model's test accuracy is not measured: `cifar100 evaluate {result.path}` "
        "measures it (cifar100.load reads it from there)"
        if result.format == "onnx"
        else "the int8 model's test accuracy is not measured"
    )
    return lines
