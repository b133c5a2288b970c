"""cifar100: the report's ResNet50V2 CIFAR-100 classifier, and better recipes beside it.

    import cifar100
    model = cifar100.load("runs/my-run")         # a run, checkpoint, safetensors or ONNX export
    model.predict(["cat.jpg"], k=5)[0].top       # [("cat", 0.93), ("tiger", 0.03), ...]

    run = cifar100.train(preset="cpu-finetune", epochs=3)   # -> TrainingRun
    run.metrics.top1, run.model, run.paths.report
    cifar100.evaluate(run, tta=True); cifar100.export(run, "onnx")

The public names are imported on first use, so that `import cifar100` and the command line's
lighter commands never load PyTorch.
"""

import sys
import types

from cifar100.version import __version__ as __version__  # re-exported

__all__ = [
    "Callback",
    "Config",
    "Prediction",
    "TrainedModel",
    "TrainingRun",
    "__version__",
    "evaluate",
    "export",
    "load",
    "make_config",
    "train",
]

# Where each public name lives, imported on first use.
_HOMES = {
    "Prediction": "trained_model",
    "TrainedModel": "trained_model",
    "load": "trained_model",
    "TrainingRun": "training_run",
    "train": "api",
    "evaluate": "api",
    "export": "api",
    "make_config": "api",
    "Config": "config",
    "Callback": "callbacks",
}


def __getattr__(name: str):
    home = _HOMES.get(name)
    # Imported on first use: `import cifar100` and the CLI's light commands never load PyTorch.
    if home == "trained_model":
        from cifar100.runtime import trained_model as module  # on first use (above)
    elif home == "training_run":
        from cifar100.runtime import training_run as module  # on first use (above)
    elif home == "api":
        from cifar100 import api as module  # on first use (above)
    elif home == "config":
        from cifar100 import config as module  # on first use (above)
    elif home == "callbacks":
        from cifar100.engine import callbacks as module  # on first use (above)
    else:
        raise AttributeError(f"module 'cifar100' has no attribute {name!r}")
    return getattr(module, name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__} - {"sys", "types"})


class _Package(types.ModuleType):
    """`cifar100.evaluate` and `cifar100.export` are the API's functions, though modules of
    those names exist (cifar100/evaluate.py, cifar100/export/): importing a submodule sets the
    package's attribute of its name, and would put the module where the function is. The
    modules stay importable by name (`from cifar100.evaluate import evaluate_checkpoint`)."""

    def __setattr__(self, name: str, value: object) -> None:
        if name in ("evaluate", "export") and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
