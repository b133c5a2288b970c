"""The commands as Python functions, for notebooks and scripts: train, evaluate, export.

    import cifar100
    run = cifar100.train(preset="cpu-finetune", data="cifar-100-python.tar.gz", epochs=3)
    run.metrics.top1, run.paths.report, run.stopped_early
    cifar100.evaluate(run.path, tta=True)
    cifar100.export(run.path, "onnx")

Settings are named as `--set` names them ("train.epochs") or by their field alone where
that is one setting (epochs, lr, backbone; data is data.path, as --data), or come as a
Config (or a TOML file) in `config=`. Ctrl-C stops training at the end of its step, saves
the exact position and returns the run with `stopped` set; `cifar100.train(resume=path)`
continues it.
"""

from __future__ import annotations

import copy
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cifar100.config import SECTIONS, Config, load_config_file, load_preset, set_value
from cifar100.errors import CifarError, ConfigError

if TYPE_CHECKING:
    from cifar100.engine.callbacks import Callback
    from cifar100.export.job import ExportResult
    from cifar100.runtime.evaluation import Evaluation
    from cifar100.runtime.trained_model import TrainedModel
    from cifar100.runtime.training_run import TrainingRun


def train(
    preset: str | None = None,
    *,
    config: Config | str | Path | None = None,
    resume: str | Path | TrainingRun | None = None,
    out: str | Path | None = None,
    runs_root: str | Path = "runs",
    cache_dir: str | Path | None = None,
    progress: bool = True,
    callbacks: Sequence[Callback] = (),
    **settings: Any,
) -> TrainingRun:
    """Train a preset (default: seed) or `config`, with `settings` over it, into a new run
    directory (`out`, default runs_root/<time>-<preset>); or continue the run at `resume`.

    callbacks: cifar100.Callback objects that watch the run (each epoch's metrics as logged).

    Returns the run (TrainingRun): its test metrics, files, model, and how it ended.
    """
    # Imported here, not above: the engine loads torch, and this keeps `import cifar100` light.
    from cifar100.cpu_threads import fit_threads
    from cifar100.engine.train import train as train_run
    from cifar100.runtime.run_dir import recorded_threads
    from cifar100.runtime.training_run import TrainingRun

    if resume is not None:
        given = [n for n, v in (("preset", preset), ("config", config), ("out", out)) if v]
        if given or settings:
            raise ConfigError(
                "resume= continues a run with its saved config; drop "
                + ", ".join(given + list(settings))
            )
        # The run's own thread count (the engine keeps its checkpoint's), as the CLI does.
        fit_threads(keep=recorded_threads(_path(resume)))
        result = train_run(
            resume=_path(resume), cache_dir=cache_dir, progress=progress, callbacks=callbacks
        )
    else:
        cfg = make_config(preset, config, **settings)
        fit_threads()  # the cores other work leaves free, as the CLI does
        result = train_run(
            cfg,
            out=out,
            cache_dir=cache_dir,
            progress=progress,
            runs_root=runs_root,
            callbacks=callbacks,
        )
    run = TrainingRun.read(result.run_dir)
    run.epochs, run.stopped, run.saved_at = result.epochs, result.stopped, result.saved_at
    run.early_stopping = result.early_stop
    if result.stopped is not None:
        run.metrics = None  # an evaluation.json there is an earlier session's
        print(
            f"stopped by {result.stopped}: saved at {result.saved_at}; continue with "
            f"cifar100.train(resume={str(result.run_dir)!r})",
            file=sys.stderr,
        )
    return run


def make_config(
    preset: str | None = None, config: Config | str | Path | None = None, **settings: Any
) -> Config:
    """A preset (default: seed), a Config (copied) or a TOML file, with `settings` over it."""
    if preset is not None and config is not None:
        raise ConfigError('give preset= or config=, not both (a config file can `extends = "P"`)')
    if isinstance(config, Config):
        cfg = copy.deepcopy(config)  # training adjusts its config: the caller's stays as given
    elif config is not None:
        cfg = load_config_file(config)
    else:
        cfg = load_preset(preset or "seed")
    for name, value in settings.items():
        value = str(value) if isinstance(value, Path) else value
        set_value(cfg, setting_name(name), value, origin=f"{name}=")
    return cfg


def setting_name(name: str) -> str:
    """ "train.epochs" as given; "epochs" as the one setting of that name; "data" as data.path."""
    if "." in name:
        return name
    if name == "data":
        return "data.path"  # as --data
    found = [
        f"{section}.{name}"
        for section, kind in SECTIONS.items()
        if name in {f.name for f in dataclasses.fields(kind)}
    ]
    if len(found) != 1:
        what = "is in several sections" if found else "is not a setting"
        raise ConfigError(
            f"{name}=: {what}; name it as section.name, e.g. **{{'train.epochs': 3}} "
            f"(sections: {', '.join(SECTIONS)})"
        )
    return found[0]


def evaluate(
    target: str | Path | TrainingRun,
    *,
    checkpoint: str | None = None,
    data: str | Path | None = None,
    tta: bool = False,
    ema: bool = False,
    device: str = "auto",
    batch_size: int | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    ood_acceptance: float | None = None,
) -> Evaluation:
    """Test a run (its `checkpoint`: last or best; a TrainingRun's tested one by default), a
    checkpoint or an export on its data's test split (or `data`), as `cifar100 evaluate`
    does: the evaluation is written beside it (RUN/evaluation[-VARIANT].json,
    FILE.eval.json) and returned.

    ood_acceptance: fit the temperature and the "none of these" threshold again on the
    validation split, accepting this share of it, and save them into the checkpoint."""
    # Imported here, not above: evaluation loads torch, and this keeps `import cifar100` light.
    from cifar100.evaluate import evaluate_checkpoint, variant_suffix
    from cifar100.runtime.run_dir import RunDir, file_evaluation

    checkpoint = _checkpoint(target, checkpoint)
    target = _path(target)
    variant = variant_suffix(checkpoint, tta, ema, target)  # before this evaluation replaces it
    evaluation = evaluate_checkpoint(
        target,
        which=checkpoint,
        data_path=str(data) if data is not None else None,
        cache_dir=cache_dir,
        device=device,
        batch_size=batch_size,
        progress=progress,
        tta_flip=tta,
        ema=ema,
        ood_acceptance=ood_acceptance,
    )
    if target.is_dir():
        evaluation.write(RunDir(target).evaluation_variant(variant))
    else:
        evaluation.write(file_evaluation(target, variant))
    return evaluation


def export(
    target: str | Path | TrainingRun | TrainedModel,
    format: str = "onnx",
    out: str | Path | None = None,
    *,
    checkpoint: str | None = None,
    force: bool = False,
    quantize: str | None = None,
    name: str = "cifar100",
    max_batch: int = 64,
    data: str | Path | None = None,
    cache_dir: str | Path | None = None,
) -> ExportResult:
    """Write a trained model as onnx, safetensors, keras or triton, as `cifar100 export`
    does (checked against PyTorch on its test images where they can be read). A run's
    `checkpoint`: last or best; a TrainingRun's tested one by default."""
    # Imported here, not above: exporting loads torch, and this keeps `import cifar100` light.
    from cifar100.export.formats import export_model, model_images
    from cifar100.runtime.trained_model import TrainedModel, load

    if isinstance(target, TrainedModel):
        model = target
    else:
        model = load(_path(target), device="cpu", checkpoint=_checkpoint(target, checkpoint))
    images = None
    if format in ("onnx", "triton") and model.runtime == "torch":
        images, why = model_images(model, str(data) if data else None, cache_dir)
        if images is None and (data or quantize):
            raise CifarError(f"cannot read the images to check and calibrate on: {why}")
    return export_model(
        model,
        format,
        out,
        force=force,
        quantize=quantize,
        name=name,
        images=images,
        max_batch=max_batch,
    )


def _path(target: str | Path | TrainingRun) -> Path:
    """A run's directory, or the path given."""
    return Path(getattr(target, "path", target))


def _checkpoint(target: object, checkpoint: str | None) -> str:
    """The checkpoint asked for; else a TrainingRun's tested one; else None: a run directory's
    tested one (evaluation.tested_checkpoint)."""
    return checkpoint or getattr(target, "checkpoint", None)
