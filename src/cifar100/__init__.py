"""cifar100: the report's ResNet50V2 CIFAR-100 classifier, and better recipes beside it.

    import cifar100
    model = cifar100.load("runs/my-run")         # a run, checkpoint, safetensors or ONNX export
    model.predict(["cat.jpg"], k=5)[0].top       # [("cat", 0.93), ("tiger", 0.03), ...]

`load` and `TrainedModel` are imported on first use, so that the command line's lighter
commands never load PyTorch.
"""

from cifar100.version import __version__ as __version__  # re-exported

__all__ = ["Prediction", "TrainedModel", "load"]


def __getattr__(name: str):
    if name in __all__:
        # Imported on first use: the CLI's light commands never load PyTorch.
        from cifar100.runtime import trained_model

        return getattr(trained_model, name)
    raise AttributeError(f"module 'cifar100' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
