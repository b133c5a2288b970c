"""`cifar100 evaluate`: test accuracy of a run or checkpoint, printed and written as JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cifar100.cli.args import (
    add_checkpoint_choice,
    add_common,
    add_model_target,
    at_least,
    share,
)
from cifar100.cli.threads import use_free_cores
from cifar100.errors import ConfigError

HELP = "test accuracy of a run or checkpoint"
DESCRIPTION = (
    "Top-1 and top-5 test accuracy, macro-F1 and calibration (ECE), per class and (CIFAR-100) "
    "per superclass; printed, and written as JSON, with the predictions (logits, labels, "
    "images) beside it as predictions.npz. --checkpoint best, --ema and --tta write "
    "evaluation-best.json, -ema, -tta (and predictions-...) instead, so the run's own "
    "evaluation.json stays what report and compare read. A model file's results go beside it "
    "under its whole name (model.onnx.eval.json, model.onnx.predictions.npz). --corruptions "
    "measures top-1 and ECE under the 15 common corruptions (CIFAR-10-C) at each severity "
    "instead, into evaluation-corruptions.json (FILE.eval-corruptions.json)."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_target(p, "target")
    add_checkpoint_choice(p)
    p.add_argument(
        "--data", metavar="PATH", help="read the test data from here (default: the run's own)"
    )
    p.add_argument(
        "--batch-size",
        type=at_least(1),
        metavar="N",
        help="images per inference batch (default: the run's train.eval_batch_size)",
    )
    p.add_argument("--json", action="store_true", help="print the JSON result only")
    p.add_argument(
        "--output",
        metavar="FILE",
        help="write the JSON here (default: RUN_DIR/evaluation[-VARIANT].json; for a model "
        "file, FILE.eval[-VARIANT].json beside it)",
    )
    p.add_argument(
        "--tta",
        choices=["none", "flip"],
        default="none",
        help="test-time augmentation: flip = average the image's and its mirror's softmax "
        "(default: none)",
    )
    p.add_argument(
        "--ema", action="store_true", help="evaluate the checkpoint's EMA weights (train.ema_decay)"
    )
    p.add_argument(
        "--ood-acceptance",
        type=share,
        metavar="SHARE",
        help="fit the calibration and the 'none of these' threshold again on the validation "
        "split, accepting this share of it (e.g. 0.99), and save them into the checkpoint "
        "(default: keep the fitted ones; a checkpoint saved without them gets them at the "
        "run's train.ood_acceptance, 0.95)",
    )
    p.add_argument(
        "--corruptions",
        nargs="?",
        const="all",
        metavar="NAMES",
        help="accuracy under corruption: all 15 (no value, or all), or comma-separated names "
        "and families (noise, blur, weather, digital), e.g. fog,noise",
    )
    p.add_argument(
        "--severities",
        metavar="LIST",
        help="with --corruptions: comma-separated severities of 1..5 (default: all)",
    )
    p.add_argument(
        "--corruption-images",
        type=at_least(1),
        metavar="N",
        help="with --corruptions: a seeded, class-stratified subset of N test images "
        "(default: all; 75 passes over 10,000 images are long on a CPU)",
    )
    add_common(p)


def run(args: argparse.Namespace) -> int:
    # Imported here, not above, to keep the CLI's start fast: evaluation loads torch.
    from cifar100.evaluate import evaluate_checkpoint, variant_suffix
    from cifar100.runtime.run_dir import RunDir, file_evaluation, predictions_beside

    target = Path(args.target)
    if args.corruptions is not None:
        return _run_corruptions(args, target)
    if args.severities is not None or args.corruption_images is not None:
        raise ConfigError("--severities and --corruption-images go with --corruptions")
    variant = variant_suffix(args.checkpoint, args.tta == "flip", args.ema, target)
    use_free_cores()
    if args.output:
        out = Path(args.output)
    elif target.is_dir():
        out = RunDir(target).evaluation_variant(variant)
    else:
        out = file_evaluation(target, variant)
    evaluation = evaluate_checkpoint(
        args.target,
        which=args.checkpoint,
        data_path=args.data,
        cache_dir=args.cache_dir,
        device=args.device or "auto",
        batch_size=args.batch_size,
        progress=not args.no_progress,
        tta_flip=args.tta == "flip",
        ema=args.ema,
        ood_acceptance=args.ood_acceptance,
        # Beside the JSON; the default (None) is RUN_DIR/predictions{variant}.npz.
        predictions_path=predictions_beside(out) if args.output else None,
    )
    evaluation.write(out)
    if args.json:
        print(json.dumps(evaluation.to_json(), indent=2))
        return 0
    print(evaluation.format())
    print(f"written to {out}")
    return 0


def _run_corruptions(args: argparse.Namespace, target: Path) -> int:
    """evaluate --corruptions: the plain weights (no TTA, EMA or refitting), written at the end."""
    # Imported here, not above, to keep the CLI's start fast: the corruptions load torch.
    from cifar100.robustness import corruption_names, evaluate_corruptions, severity_list
    from cifar100.runtime.run_dir import CORRUPTIONS_VARIANT, RunDir, file_evaluation

    others = [flag for flag, given in (("--tta flip", args.tta == "flip"), ("--ema", args.ema),
              ("--ood-acceptance", args.ood_acceptance is not None),
              ("--checkpoint", args.checkpoint is not None)) if given]  # fmt: skip
    if others:
        raise ConfigError(
            f"--corruptions evaluates the run's tested weights as they are: drop {others[0]}"
        )
    names, severities = corruption_names(args.corruptions), severity_list(args.severities)
    if args.output:
        out = Path(args.output)
    elif target.is_dir():
        out = RunDir(target).corruption_evaluation
    else:
        out = file_evaluation(target, CORRUPTIONS_VARIANT)
    use_free_cores()
    result = evaluate_corruptions(
        target,
        names,
        severities,
        images=args.corruption_images,
        data_path=args.data,
        cache_dir=args.cache_dir,
        device=args.device or "auto",
        batch_size=args.batch_size,
        progress=not args.no_progress,
    )
    result.write(out)  # once, at the end: an interrupted evaluation leaves no file
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
        return 0
    print(result.format())
    print(f"written to {out}")
    return 0
