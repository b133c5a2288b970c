"""The subcommands: each turns parsed arguments into calls of the Python API and prints."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cifar100.display_text import DISPLAY_LIMIT, display_name, display_names, visible
from cifar100.errors import CifarError


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
        "data.strict": getattr(args, "strict", None),
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


def use_free_cores(keep: int | None = None, say: bool = False, reserve: int = 0) -> None:
    """Torch's CPU threads: the cores other processes leave free (cifar100.cpu_threads)."""
    from cifar100.cpu_threads import fit_threads, usable_cores

    threads, cores = fit_threads(keep, reserve), len(usable_cores())
    if say and threads < cores and keep is None:
        print(
            f"note: {cores - threads} of {cores} CPU cores are busy with other work: using "
            f"{threads} thread{'s' * (threads > 1)} (OMP_NUM_THREADS=N sets the count)",
            file=sys.stderr,
        )


def cmd_train(args: argparse.Namespace) -> int:
    from cifar100.engine.train import train
    from cifar100.runtime import run_dir as runs

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
                "strict",
            )
            if getattr(args, f)
        ]
        if given or args.set:
            raise CifarError(
                "--resume continues a run with its saved config; drop "
                f"{', '.join('--' + g.replace('_', '-') for g in given) or '--set'}"
            )
        # The run's own thread count, so that it goes on computing exactly as it began.
        use_free_cores(keep=runs.recorded_threads(Path(args.resume)), say=True)
        result = train(resume=args.resume, cache_dir=args.cache_dir, progress=not args.no_progress)
        return _train_exit(result)
    cfg = resolve_config(args)
    use_free_cores(say=True)
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
    from cifar100.evaluate import evaluate_checkpoint, format_evaluation, variant_suffix
    from cifar100.fileio import write_json_atomic

    target = Path(args.target)
    variant = variant_suffix(args.checkpoint, args.tta == "flip", args.ema)
    use_free_cores()
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


def cmd_report(args: argparse.Namespace) -> int:
    from cifar100.report import build_report

    out = build_report(args.run_dir)
    print(visible(f"wrote {out} (plots in {out.parent / 'plots'})"))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from cifar100.compare import format_comparison, read_runs

    # The runs that can be read are compared; each that cannot is one line: exit 1 then, and
    # 2 when none could be read.
    rows, broken = read_runs(args.runs)
    for line in broken:
        print(f"cifar100 compare: skipped: {line}", file=sys.stderr)
    if rows:
        print(json.dumps(rows, indent=2) if args.json else format_comparison(rows))
    return 0 if not broken else 1 if rows else 2


def cmd_predict(args: argparse.Namespace) -> int:
    from cifar100.predict import predict_files
    from cifar100.runtime.trained_model import load

    use_free_cores()
    model = load(args.checkpoint, device=args.device)
    results = predict_files(model, args.images, k=args.top)
    for r in results:
        if args.json:
            print(json.dumps(r.to_dict()))
        elif r.error:  # names shown, not obeyed (display_text); --json keeps them exact
            print(visible(f"{r.name}: error: {r.error}"), file=sys.stderr)
        else:
            top = ", ".join(f"{display_name(c, DISPLAY_LIMIT)} {p:.1%}" for c, p in r.top)
            print(f"{visible(r.name)}: {top}")
    return 1 if any(r.error for r in results) else 0


def cmd_summary(args: argparse.Namespace) -> int:
    from cifar100.config import validate
    from cifar100.models.registry import build_model
    from cifar100.models.summary import format_summary

    cfg = validate(resolve_config(args))
    cfg.model.weights = "none"  # the table needs shapes and counts, not trained values
    n = args.classes or cfg.data.class_count()
    if n is None:
        raise CifarError("an image folder's class count comes from its data: pass --classes N")
    model = build_model(cfg.model, num_classes=n)
    print(format_summary(model, cfg.data.decoded_size()))
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
    from cifar100.bench import format_runtime_bench, run_runtime_bench
    from cifar100.engine.throughput import format_bench, run_bench
    from cifar100.models.registry import get_backbone

    use_free_cores()
    if args.model:
        result = run_runtime_bench(args.model, args.batch_size, args.warmup, args.steps)
        print(json.dumps(result, indent=2) if args.json else format_runtime_bench(result))
        return 0
    size = args.size or get_backbone(args.backbone).native_size
    result = run_bench(args.backbone, size, args.batch_size, args.device, args.compile,
                       args.warmup, args.steps)  # fmt: skip
    print(json.dumps(result, indent=2) if args.json else format_bench(result))
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from cifar100.config import load_preset, preset_names

    names = preset_names()
    width = max(map(len, names))
    for name in names:
        print(f"{name:<{width}}  {load_preset(name).description}")
    return 0


def cmd_import_keras(args: argparse.Namespace) -> int:
    from cifar100.config import DataConfig
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


def read_class_names(path: str) -> list[str]:
    """Moved to data/class_names.py; tests/test_hostile_files.py still imports it from here."""
    from cifar100.data.class_names import read_class_names as read  # keeps the start fast

    return read(path)


def cmd_export(args: argparse.Namespace) -> int:
    from cifar100.export.formats import export_model, model_images
    from cifar100.runtime.trained_model import load

    model = load(args.target, device="cpu", checkpoint=args.checkpoint)
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
    checked = result.details.get("max_abs_diff")
    print(
        f"wrote {result.path} ({args.format}"
        + (", int8, quantised from the fp32 graph" if args.quantize else "")
        + (
            f"; the fp32 graph in ONNX Runtime vs PyTorch: max |difference| of probabilities "
            f"{checked:.1e} on {result.details.get('images_checked')} images"
            if checked is not None
            else ""
        )
        + ")"
    )
    if result.note:
        print(f"note: {result.note}" + (f" ({why})" if why else ""), file=sys.stderr)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from cifar100.serve.server import serve
    from cifar100.serve.settings import ServeSettings

    use_free_cores()  # a light model then leaves one to the HTTP side (serve.server)
    given = {f.name: getattr(args, f.name) for f in fields(ServeSettings) if hasattr(args, f.name)}
    settings = ServeSettings(**given)
    return serve(
        args.model, args.host, args.port, args.runtime, args.device, settings, args.workers
    )


def cmd_data(args: argparse.Namespace) -> int:
    from cifar100.config import DataConfig
    from cifar100.data import load_data
    from cifar100.paths import resolve_cache_dir

    if args.dataset == "folder" and not args.data:
        raise CifarError("--dataset folder needs --data PATH (a folder or tarball)")
    cfg = DataConfig(
        dataset=args.dataset, path=args.data, image_size=args.image_size, strict=args.strict
    )
    splits = load_data(cfg, resolve_cache_dir(args.cache_dir), progress=not args.no_progress)
    print(
        f"{splits.name}: {len(splits.train)} train / {len(splits.test)} test images, "
        f"{splits.train.image_size}x{splits.train.image_size}, {len(splits.classes)} classes"
    )
    print(visible(f"  source: {splits.source}"))
    print(f"  classes: {', '.join(display_names(splits.classes, DISPLAY_LIMIT))}")
    if splits.train.coarse_classes:
        print(f"  superclasses: {', '.join(display_names(splits.train.coarse_classes))}")
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
