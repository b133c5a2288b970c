"""The `cifar100` command: a thin layer that parses arguments and calls the Python API."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cifar100 import __version__
from cifar100.errors import CifarError

EPILOG = """examples:
  cifar100 train --preset seed                      the report's model and recipe on CIFAR-100
  cifar100 train --preset cpu --dataset folder --data images.tar.gz   (no GPU)
  cifar100 evaluate runs/20261125-120000-seed       test top-1/top-5, per class and superclass
  cifar100 evaluate RUN --tta flip --ema            mirror-image TTA, the EMA weights
  cifar100 compare runs/*                           one table of runs
  cifar100 predict runs/20261125-120000-seed cat.jpg dog.png
  cifar100 summary --preset seed                    the report's parameter table
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cifar100",
        description="Train, evaluate and use ImageNet-backbone image "
        "classifiers on CIFAR-100, CIFAR-10 and image folders.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"cifar100 {__version__}")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    # --debug also works after the command name (`cifar100 train --debug`).
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show full tracebacks on errors",
    )

    t = sub.add_parser(
        "train",
        parents=[debug],
        help="train a model (a preset, a config file, overrides)",
        description="Train a classifier into a run directory holding its "
        "config, environment, metrics log and checkpoints.",
    )
    _config_args(t)
    t.add_argument("--out", metavar="DIR", help="run directory (default: runs/<time>-<preset>)")
    t.add_argument(
        "--runs-root",
        default="runs",
        metavar="DIR",
        help="where new run directories go (default: ./runs)",
    )
    t.add_argument(
        "--init",
        metavar="RUN_OR_CHECKPOINT",
        help="start from this checkpoint's weights and model settings (model.init)",
    )
    t.add_argument(
        "--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint"
    )
    _common_args(t)

    e = sub.add_parser(
        "evaluate",
        parents=[debug],
        help="test accuracy of a run or checkpoint",
        description="Top-1 and top-5 test accuracy, macro-F1 and calibration (ECE), per "
        "class and (CIFAR-100) per superclass; printed, and written as JSON, with the "
        "predictions (logits, labels, images) beside it as predictions.npz. --checkpoint "
        "best, --ema and --tta write evaluation-best.json, -ema, -tta (and predictions-...) "
        "instead, so the run's own evaluation.json stays what report and compare read.",
    )
    e.add_argument("target", metavar="RUN_OR_CHECKPOINT", help="a run directory or a .pt file")
    e.add_argument(
        "--checkpoint",
        choices=["last", "best"],
        default="last",
        help="which checkpoint of a run directory (default: last)",
    )
    e.add_argument("--data", metavar="PATH", help="read the test data from here instead")
    e.add_argument("--batch-size", type=int, metavar="N", help="images per inference batch")
    e.add_argument("--json", action="store_true", help="print the JSON result only")
    e.add_argument(
        "--output",
        metavar="FILE",
        help="write the JSON here (default: RUN_DIR/evaluation[-VARIANT].json)",
    )
    e.add_argument(
        "--tta",
        choices=["none", "flip"],
        default="none",
        help="test-time augmentation: flip = average the image's and its mirror's softmax",
    )
    e.add_argument(
        "--ema", action="store_true", help="evaluate the checkpoint's EMA weights (train.ema_decay)"
    )
    _common_args(e)

    rp = sub.add_parser(
        "report",
        parents=[debug],
        help="write a run's self-contained HTML report (plots, tables, config)",
        description="Write RUN_DIR/report.html: the model table as in the report, the resolved "
        "config and environment, the metrics and every plot (PNG and SVG in RUN_DIR/plots), "
        "images embedded so it opens offline. Built from the run directory's files alone, so "
        "an interrupted run can be reported too; run `cifar100 evaluate RUN_DIR` first for the "
        "confusion matrices and example images.",
    )
    rp.add_argument("run_dir", metavar="RUN_DIR", help="a run directory")

    c = sub.add_parser(
        "compare",
        parents=[debug],
        help="one table of several runs",
        description="Preset, backbone, weights, mode, epochs, best validation and test "
        "accuracy, wall time, throughput and device of each run directory.",
    )
    c.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories")
    c.add_argument("--json", action="store_true", help="print JSON instead of a table")

    r = sub.add_parser(
        "predict",
        parents=[debug],
        help="classify image files with a trained model",
        description="Top-k classes with probabilities for each image (any size "
        "or mode), prepared exactly as in training. Exit code 1 if any image "
        "could not be read; the others are still predicted.",
    )
    r.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT", help="a run directory or a .pt file")
    r.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any size or mode)")
    r.add_argument(
        "-k",
        "--top",
        type=int,
        default=5,
        metavar="K",
        help="how many classes to show (default: 5)",
    )
    r.add_argument("--json", action="store_true", help="print JSON lines instead of text")
    r.add_argument("--device", default="auto", help="auto | cuda | mps | cpu")

    s = sub.add_parser(
        "summary",
        parents=[debug],
        help="print the model's layer and parameter table",
        description="The report's table: layer, input and output shape, "
        "parameters (counting batch-norm moving statistics, as Keras does).",
    )
    _config_args(s, data=False)
    s.add_argument(
        "--classes", type=int, metavar="N", help="number of classes (default: from the dataset)"
    )

    b = sub.add_parser(
        "backbones",
        parents=[debug],
        help="list the backbones with their weights, resolution and size",
        description="Each registered backbone with its weight sources, native resolution, "
        "input preprocessing and parameter count (Keras-style, batch-norm statistics "
        "included). Any timm model also works as --backbone timm:NAME where timm is installed.",
    )
    b.add_argument("--json", action="store_true", help="print JSON instead of a table")

    n = sub.add_parser(
        "bench",
        parents=[debug],
        help="measure training and inference images/s against an eager fp32 baseline",
        description="Time a training step and an inference batch of a backbone on random data, "
        "as a plain eager fp32 model and as this tool runs it (channels-last, fused optimizer; "
        "bf16 autocast on CUDA; torch.compile with --compile), in the same process, and print "
        "the ratios. Absolute numbers on a shared machine are noisy; the ratio is not.",
    )
    n.add_argument("--backbone", default="resnet50v2", metavar="NAME")
    n.add_argument(
        "--size",
        type=int,
        default=None,
        metavar="PX",
        help="input side (default: the backbone's native size, 224 for resnet50v2)",
    )
    n.add_argument("--batch-size", type=int, default=64, metavar="N")
    n.add_argument("--steps", type=int, default=10, metavar="N", help="timed steps (median)")
    n.add_argument("--warmup", type=int, default=3, metavar="N")
    n.add_argument("--compile", action="store_true", help="torch.compile the tuned variant")
    n.add_argument("--device", default="auto", help="auto | cuda | mps | cpu")
    n.add_argument("--json", action="store_true", help="print JSON instead of a table")

    sub.add_parser(
        "presets",
        parents=[debug],
        help="list the shipped presets",
        description="List the presets shipped with cifar100.",
    )

    k = sub.add_parser(
        "import-keras",
        parents=[debug],
        help="bring in a trained Keras model of the report's architecture",
        description="Convert a Keras model of the report's architecture (.h5 or .keras, as "
        "model.save writes them; read with h5py, no TensorFlow needed) into a cifar100 run "
        "directory, to evaluate, predict with, or fine-tune (train --init RUN_DIR).",
    )
    k.add_argument("file", metavar="FILE", help="the Keras model file")
    k.add_argument("--out", required=True, metavar="DIR", help="the run directory to create")
    k.add_argument(
        "--dataset",
        choices=["cifar100", "cifar10", "folder"],
        default="cifar100",
        help="the data it was trained on, for class names (default: cifar100)",
    )
    k.add_argument("--data", metavar="PATH", help="that data's archive or folder")
    k.add_argument(
        "--class-names",
        metavar="FILE",
        help="a text file of class names, one per line in output order (instead of the data)",
    )
    k.add_argument(
        "--preprocess",
        choices=["tf", "torch", "none", "raw"],
        help="how its inputs were scaled: tf = x/127.5-1 (ResNet50V2's, the default unless "
        "the model has its own Rescaling layer), none = x/255, raw = 0..255 pixels",
    )
    _common_args(k, device=False)

    d = sub.add_parser(
        "data",
        parents=[debug],
        help="download or decode a dataset and describe it",
        description="Fetch (or read) and cache a dataset, then print its splits "
        "and classes: useful to prepare an offline machine.",
    )
    d.add_argument("--dataset", choices=["cifar100", "cifar10", "folder"], default="cifar100")
    d.add_argument("--data", metavar="PATH", help="archive, extracted folder or image folder")
    d.add_argument(
        "--image-size",
        type=int,
        default=32,
        metavar="N",
        help="image folders are decoded to N x N (default: 32)",
    )
    _common_args(d, device=False)

    ca = sub.add_parser(
        "cache",
        parents=[debug],
        help="list or clear downloads, decoded data and feature caches",
        description="List what the cache holds (kind, size, last use), or clear it. `clear` "
        "removes by default only what is rebuilt without the network (decoded data, image "
        "folders, features, partial files); name kinds, or `all`, to remove downloads too.",
    )
    ca.add_argument("action", nargs="?", choices=["list", "clear"], default="list")
    ca.add_argument(
        "kinds", nargs="*", metavar="KIND", help="downloads weights decoded folders features "
        "partial all (clear's default: decoded folders features partial)",
    )  # fmt: skip
    ca.add_argument(
        "--older-than", type=float, metavar="DAYS", help="only entries unused for DAYS days"
    )
    ca.add_argument(
        "--max-gb", type=float, metavar="N", help="least recently used first, until N GB remain"
    )
    ca.add_argument("--dry-run", action="store_true", help="say what would go; remove nothing")
    ca.add_argument("--cache-dir", metavar="DIR", help="default: $CIFAR100_CACHE or the user cache")
    return p


def _config_args(p: argparse.ArgumentParser, data: bool = True) -> None:
    p.add_argument(
        "--preset",
        default=None,
        metavar="NAME",
        help="seed (the report, default), cpu, ...: see `cifar100 presets`",
    )
    p.add_argument("--config", metavar="FILE", help="a TOML config file (may `extends` a preset)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any setting, e.g. --set train.lr=3e-4 (repeatable)",
    )
    p.add_argument(
        "--backbone",
        metavar="NAME",
        help="backbone (model.backbone): resnet50v2, efficientnet_lite0/1/2, timm:NAME; "
        "see `cifar100 backbones`",
    )
    p.add_argument(
        "--dataset",
        choices=["cifar100", "cifar10", "folder"],
        help="which data (data.dataset); default: cifar100",
    )
    if data:
        p.add_argument(
            "--weights",
            metavar="SOURCE",
            help="backbone weights (model.weights): imagenet, none (from scratch) or a file",
        )
        p.add_argument(
            "--data",
            metavar="PATH",
            help="CIFAR archive or extracted folder, or "
            "an image folder / tarball (data.path); default: download CIFAR",
        )
        p.add_argument("--epochs", type=int, metavar="N", help="total epochs (train.epochs)")
        p.add_argument("--batch-size", type=int, metavar="N", help="train.batch_size")
        p.add_argument(
            "--lr", type=float, metavar="LR", help="fine-tuning peak learning rate (train.lr)"
        )
        p.add_argument("--seed", type=int, metavar="N", help="random seed (train.seed)")
        p.add_argument(
            "--deterministic",
            action="store_const",
            const="true",
            help="deterministic kernels only (train.deterministic)",
        )


def _common_args(p: argparse.ArgumentParser, device: bool = True) -> None:
    p.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="downloads and decoded data (default: $CIFAR100_CACHE or the user cache dir)",
    )
    if device:
        p.add_argument("--device", default=None, help="auto | cuda | mps | cpu")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def resolve_config(args: argparse.Namespace):
    """Preset or file, then the named flags, then --set overrides."""
    from cifar100.config import apply_overrides, load_config_file, load_preset, set_value

    if args.config and args.preset:
        raise CifarError(
            'give --preset or --config, not both (a config file can `extends = "PRESET"`)'
        )
    cfg = load_config_file(args.config) if args.config else load_preset(args.preset or "seed")
    flags = {
        "model.backbone": args.backbone,
        "model.weights": getattr(args, "weights", None),
        "data.dataset": args.dataset,
        "data.path": getattr(args, "data", None),
        "train.epochs": getattr(args, "epochs", None),
        "train.batch_size": getattr(args, "batch_size", None),
        "train.lr": getattr(args, "lr", None),
        "train.seed": getattr(args, "seed", None),
        "train.deterministic": getattr(args, "deterministic", None),
        "train.device": getattr(args, "device", None),
        "model.init": getattr(args, "init", None),
    }
    for key, value in flags.items():
        if value is not None:
            set_value(cfg, key, value, origin="--" + key.split(".")[1].replace("_", "-"))
    return apply_overrides(cfg, args.set)


def cmd_train(args: argparse.Namespace) -> int:
    from cifar100.engine.train import train

    if args.resume:
        given = [
            f
            for f in (
                "preset",
                "config",
                "backbone",
                "weights",
                "dataset",
                "data",
                "epochs",
                "batch_size",
                "lr",
                "seed",
                "init",
                "deterministic",
            )
            if getattr(args, f)
        ]
        if given or args.set:
            raise CifarError(
                "--resume continues a run with its saved config; drop "
                f"{', '.join('--' + g.replace('_', '-') for g in given) or '--set'}"
            )
        result = train(resume=args.resume, cache_dir=args.cache_dir, progress=not args.no_progress)
        return _train_exit(result)
    cfg = resolve_config(args)
    result = train(
        cfg,
        out=args.out,
        cache_dir=args.cache_dir,
        progress=not args.no_progress,
        runs_root=args.runs_root,
    )
    return _train_exit(result)


def _train_exit(result) -> int:
    """0 for a finished run; for one a signal stopped, where it stands and how to go on."""
    if result.stopped is None or not result.stopped.startswith(("SIG", "a signal")):
        return 0
    print(
        f"stopped by {result.stopped}: saved at {result.saved_at} in "
        f"{result.run_dir / 'last.pt'}; continue with: cifar100 train --resume {result.run_dir}",
        file=sys.stderr,
    )
    return 143 if result.stopped == "SIGTERM" else 130


def cmd_evaluate(args: argparse.Namespace) -> int:
    from cifar100.evaluate import evaluate_checkpoint, variant_suffix
    from cifar100.fileio import write_json_atomic

    target = Path(args.target)
    variant = variant_suffix(args.checkpoint, args.tta == "flip", args.ema)
    out = (
        Path(args.output)
        if args.output
        else (
            target / f"evaluation{variant}.json"
            if target.is_dir()
            else target.with_suffix(f".eval{variant}.json")
        )
    )
    metrics = evaluate_checkpoint(
        args.target,
        which=args.checkpoint,
        data_path=args.data,
        cache_dir=args.cache_dir,
        device=args.device or "auto",
        batch_size=args.batch_size,
        progress=not args.no_progress,
        tta_flip=args.tta == "flip",
        ema=args.ema,
        # Beside the JSON; the default (None) is RUN_DIR/predictions{variant}.npz.
        predictions_path=out.with_name(out.stem + ".predictions.npz") if args.output else None,
    )
    write_json_atomic(out, metrics)
    if args.json:
        print(json.dumps(metrics, indent=2))
        return 0
    print(format_evaluation(metrics))
    print(f"written to {out}")
    return 0


def format_evaluation(m: dict) -> str:
    lines = [
        f"{m['dataset']}: {m['images']} test images, checkpoint {m['checkpoint']} "
        f"(epoch {m['epoch']})",
        f"  top-1 {m['top1']:.2%}   top-5 {m['top5']:.2%}   loss {m['loss']:.4f}",
    ]
    if "macro_f1" in m:
        lines.append(
            f"  macro-F1 {m['macro_f1']:.4f}   ECE {m['calibration']['ece']:.4f} (15 bins)"
            + ("   TTA: flip" if m.get("tta") == "flip" else "")
            + ("   EMA weights" if m.get("weights") == "ema" else "")
        )
    if "ema" in m:
        e = m["ema"]
        lines.append(f"  EMA weights: top-1 {e['top1']:.2%}   top-5 {e['top5']:.2%}")
    if "superclass_top1" in m:
        lines.append(f"  superclass top-1 {m['superclass_top1']:.2%}")
        lines.append("  per superclass (fine top-1 / superclass top-1):")
        for name, v in m["per_superclass"].items():
            lines.append(f"    {name:<32} {v['fine_top1']:7.2%}  {v['superclass_top1']:7.2%}")
    per_class = sorted(m["per_class"].items(), key=lambda kv: kv[1])
    if per_class:
        worst = ", ".join(f"{c} {a:.0%}" for c, a in per_class[:5])
        best = ", ".join(f"{c} {a:.0%}" for c, a in per_class[::-1][:5])
        lines.append(f"  hardest classes: {worst}")
        lines.append(f"  easiest classes: {best}")
    return "\n".join(lines)


def cmd_report(args: argparse.Namespace) -> int:
    from cifar100.report import build_report

    out = build_report(args.run_dir)
    print(f"wrote {out} (plots in {out.parent / 'plots'})")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from cifar100.compare import compare_runs, format_comparison

    rows = compare_runs(args.runs)
    print(json.dumps(rows, indent=2) if args.json else format_comparison(rows))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from cifar100.predict import Predictor

    if args.top < 1:
        raise CifarError("-k/--top must be at least 1")
    predictor = Predictor(args.checkpoint, device=args.device)
    results = predictor.predict_files(args.images, k=args.top)
    for r in results:
        if args.json:
            print(json.dumps(r.to_dict()))
        elif r.error:
            print(f"{r.path}: error: {r.error}", file=sys.stderr)
        else:
            print(f"{r.path}: " + ", ".join(f"{c} {p:.1%}" for c, p in r.top))
    return 1 if any(r.error for r in results) else 0


def cmd_summary(args: argparse.Namespace) -> int:
    from cifar100.models.registry import build_model
    from cifar100.models.summary import format_summary

    cfg = resolve_config(args)
    cfg.model.weights = "none"  # the table needs shapes and counts, not trained values
    n = args.classes or {"cifar100": 100 if cfg.data.label == "fine" else 20, "cifar10": 10}.get(
        cfg.data.dataset
    )
    if n is None:
        raise CifarError("an image folder's class count comes from its data: pass --classes N")
    model = build_model(cfg.model, num_classes=n)
    size = 32 if cfg.data.dataset != "folder" else cfg.data.image_size
    print(format_summary(model, size))
    return 0


def cmd_backbones(args: argparse.Namespace) -> int:
    from cifar100.models.registry import describe_backbones

    rows = describe_backbones()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'backbone':<20} {'params':>12} {'features':>8} {'native':>7}  input scaling")
    scaling = {
        "tf": "x/127.5 - 1",
        "torch": "ImageNet mean/std",
        "none": "x/255",
        "raw": "0..255",
        "lite": "(x - 127)/128",
    }
    for r in rows:
        print(
            f"{r['name']:<20} {r['params']:>12,} {r['out_features']:>8} "
            f"{r['native_size']:>7}  {scaling.get(r['preprocessing'], r['preprocessing'])}"
        )
        for source, origin in r["weights"].items():
            print(f"{'':<22}--weights {source}: {origin}")
    print("any timm model: --backbone timm:NAME (needs `pip install timm`)")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from cifar100.bench import format_bench, run_bench
    from cifar100.models.registry import get_backbone

    if min(args.batch_size, args.steps) < 1 or args.warmup < 0:
        raise CifarError("--batch-size and --steps must be >= 1, --warmup >= 0")
    size = args.size or get_backbone(args.backbone).native_size
    result = run_bench(args.backbone, size, args.batch_size, args.device, args.compile,
                       args.warmup, args.steps)  # fmt: skip
    print(json.dumps(result, indent=2) if args.json else format_bench(result))
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from cifar100.config import load_preset, preset_names

    for name in preset_names():
        cfg = load_preset(name)
        print(f"{name:<8} {cfg.description}")
    return 0


def cmd_import_keras(args: argparse.Namespace) -> int:
    from cifar100.config import DataConfig
    from cifar100.keras_import import import_keras_model
    from cifar100.paths import resolve_cache_dir

    names = None
    if args.class_names:
        try:
            text = Path(args.class_names).read_text(encoding="utf-8")
        except OSError as e:
            raise CifarError(
                f"{args.class_names}: cannot read class names ({e.strerror})"
            ) from None
        names = [line.strip() for line in text.splitlines() if line.strip()]
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


def cmd_data(args: argparse.Namespace) -> int:
    from cifar100.config import DataConfig
    from cifar100.data import load_data
    from cifar100.paths import resolve_cache_dir

    if args.dataset == "folder" and not args.data:
        raise CifarError("--dataset folder needs --data PATH (a folder or tarball)")
    cfg = DataConfig(dataset=args.dataset, path=args.data, image_size=args.image_size)
    splits = load_data(cfg, resolve_cache_dir(args.cache_dir), progress=not args.no_progress)
    print(
        f"{splits.name}: {len(splits.train)} train / {len(splits.test)} test images, "
        f"{splits.train.image_size}x{splits.train.image_size}, {len(splits.classes)} classes"
    )
    print(f"  source: {splits.source}")
    print(f"  classes: {', '.join(splits.classes)}")
    if splits.train.coarse_classes:
        print(f"  superclasses: {', '.join(splits.train.coarse_classes)}")
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from cifar100.cache import (
        cache_entries,
        format_cache,
        human_size,
        remove_entries,
        select_for_clearing,
    )
    from cifar100.paths import default_cache_dir

    root = Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_dir()
    entries = cache_entries(root) if root.is_dir() else []
    if args.action == "list":
        if args.kinds or args.older_than is not None or args.max_gb is not None:
            raise CifarError("kinds, --older-than and --max-gb go with `cifar100 cache clear`")
        print(format_cache(root, entries))
        return 0
    chosen = select_for_clearing(entries, args.kinds, args.older_than, args.max_gb)
    size = human_size(sum(e.size for e in chosen))
    if args.dry_run:
        for entry in chosen:
            print(f"would remove {entry.path} ({human_size(entry.size)})")
        print(f"would free {size} ({len(chosen)} of {len(entries)} entries) in {root}")
        return 0
    freed = remove_entries(chosen)
    print(f"removed {len(chosen)} of {len(entries)} entries ({human_size(freed)}) from {root}")
    return 0


COMMANDS = {
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "compare": cmd_compare,
    "report": cmd_report,
    "predict": cmd_predict,
    "summary": cmd_summary,
    "presets": cmd_presets,
    "backbones": cmd_backbones,
    "bench": cmd_bench,
    "data": cmd_data,
    "import-keras": cmd_import_keras,
    "cache": cmd_cache,
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    try:
        return COMMANDS[args.command](args)
    except CifarError as e:
        if args.debug:
            raise
        print(f"cifar100 {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "interrupted (checkpoints already written are intact; `cifar100 train --resume "
            "RUN_DIR` continues a run)",
            file=sys.stderr,
        )
        return 130
    except Exception as e:  # noqa: BLE001 - the last line of defence: one line, not a traceback
        if args.debug:
            raise
        print(
            f"cifar100 {args.command}: unexpected error: {type(e).__name__}: {e} "
            "(run with --debug for the traceback, and please report it)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
