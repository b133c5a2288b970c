"""cifar100.train, evaluate and export from Python: settings by name, the run it returns,
Ctrl-C in the main thread (a notebook's interrupt) stopping cleanly, resume=, dir()."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import cifar100
from cifar100.config import Config, load_preset
from cifar100.engine.interrupt import StepWatch
from cifar100.errors import ConfigError
from cifar100.runtime.evaluation import Evaluation
from synthetic_cifar import make_cifar10_archive

# tiny_run.SMALL as keyword arguments: EfficientNet-Lite0 from scratch at 32x32, batch 32
SMALL = {"preset": "scratch", "dataset": "cifar10", "backbone": "efficientnet_lite0",
         "model.resize": 1, "train.batch_size": 32}  # fmt: skip


def test_dir_lists_the_public_names_and_importing_them_loads_no_torch():
    code = (
        "import sys, cifar100\n"
        "print(sorted(dir(cifar100)))\n"
        "print(cifar100.train.__module__, cifar100.evaluate.__name__, cifar100.Config.__name__)\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.splitlines()  # fmt: skip
    names = eval(out[0])  # noqa: S307 - our own printed list
    public = {"train", "evaluate", "export", "load", "make_config", "Config", "TrainedModel",
              "TrainingRun", "Prediction", "Callback", "__version__"}  # fmt: skip
    assert public <= set(names) and set(cifar100.__all__) == public
    assert out[1] == "cifar100.api evaluate Config"
    assert out[2] == "False"  # `import cifar100` and its names stay light


def test_settings_by_dotted_name_by_field_name_or_a_config():
    lite = "efficientnet_lite0"
    cfg = cifar100.make_config("scratch", epochs=3, data=Path("c.tar.gz"), backbone=lite,
                               **{"train.lr": 0.1})  # fmt: skip
    assert (cfg.train.epochs, cfg.data.path, cfg.model.backbone) == (3, "c.tar.gz", lite)
    assert cfg.train.lr == 0.1 and cfg.preset == "scratch"
    base = load_preset("cpu")
    cfg = cifar100.make_config(config=base, lr=0.5)
    assert cfg.train.lr == 0.5 and base.train.lr != 0.5  # the caller's Config is not changed
    assert isinstance(cfg, Config)
    with pytest.raises(ConfigError, match="epoch=: is not a setting"):
        cifar100.make_config("scratch", epoch=3)
    with pytest.raises(ConfigError, match="unknown setting 'train.nope'"):
        cifar100.make_config("scratch", **{"train.nope": 1})
    with pytest.raises(ConfigError, match="not both"):
        cifar100.make_config("scratch", config=base)
    with pytest.raises(ConfigError, match="resume= continues a run"):
        cifar100.train(resume="runs/x", epochs=3)


def test_the_evaluate_and_export_functions_survive_their_modules_import():
    import cifar100.evaluate  # noqa: F401 - the module of that name, imported
    from cifar100.export.formats import FORMATS  # the package of that name

    assert callable(cifar100.evaluate) and callable(cifar100.export) and "onnx" in FORMATS
    assert cifar100.evaluate.__module__ == cifar100.export.__module__ == "cifar100.api"


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return make_cifar10_archive(tmp_path_factory.mktemp("data") / "c10.tar.gz", 64, 32)


@pytest.mark.slow
def test_train_evaluate_and_export_from_python(archive, tmp_path):
    cache = tmp_path / "cache"
    run = cifar100.train(**SMALL, data=archive, epochs=1, out=tmp_path / "run", cache_dir=cache,
                         progress=False)  # fmt: skip
    assert isinstance(run, cifar100.TrainingRun)
    assert run.finished and run.epochs == 1 and not run.stopped_early and run.stopped is None
    assert run.path == tmp_path / "run" and run.paths.last.is_file()
    assert run.metrics.top1 == Evaluation.read(run.paths.evaluation).top1
    assert f"TrainingRun({run.path}, 1 epochs, test top-1 " in repr(run)
    assert "model" not in vars(run)  # loaded on first use
    assert len(run.model.classes) == 10 and run.model.test_top1 == run.metrics.top1
    again = cifar100.evaluate(run, cache_dir=cache, progress=False)
    # the run's tested weights: best.pt (train.final=best; here also the last epoch's)
    assert again.checkpoint.endswith("best.pt") and again.top1 is not None
    assert Evaluation.read(run.paths.evaluation).top1 == again.top1  # written, as the CLI does
    exported = cifar100.export(run, "safetensors")
    assert exported.path == run.path / "model.safetensors" and exported.path.is_file()
    assert cifar100.load(exported.path).classes == run.model.classes


@pytest.mark.slow
def test_ctrl_c_in_python_stops_cleanly_and_resume_continues(archive, tmp_path, monkeypatch,
                                                             capsys):  # fmt: skip
    """SIGINT in the main thread, as a notebook's interrupt sends it, after the first step."""
    first_step = StepWatch.after_step

    def interrupted(self, logging_step):
        if self.steps == 0:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C
        return first_step(self, logging_step)

    monkeypatch.setattr(StepWatch, "after_step", interrupted)
    cache = tmp_path / "cache"
    run = cifar100.train(**SMALL, data=archive, epochs=2, out=tmp_path / "run", cache_dir=cache,
                         progress=False)  # fmt: skip
    assert run.stopped == "SIGINT" and not run.finished and run.metrics is None
    assert run.paths.last.is_file() and not run.paths.evaluation.exists()
    assert f"cifar100.train(resume={str(run.path)!r})" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handed back
    monkeypatch.setattr(StepWatch, "after_step", first_step)
    resumed = cifar100.train(resume=run.path, cache_dir=cache, progress=False)
    assert resumed.finished and resumed.epochs == 2 and resumed.metrics.top1 is not None
    assert len(resumed.paths.read_metrics()) == 2


class Stop(Exception):
    pass


class Watch(cifar100.Callback):
    """Records what the run shows it; raises Stop after epoch `stop_at` (as a pruner does)."""

    def __init__(self, stop_at=None):
        self.calls, self.records, self.stop_at = [], [], stop_at

    def on_start(self, run):
        self.calls.append(("start", run.epochs_done))

    def on_epoch(self, run, record):
        self.calls.append(("epoch", record["epoch"]))
        self.records.append(record)
        if record["epoch"] == self.stop_at:
            raise Stop

    def on_end(self, run, result):
        self.calls.append(("end", result.test.get("top1") is not None))

    def on_error(self, run, error):
        self.calls.append(("error", type(error).__name__))


@pytest.mark.slow
def test_callbacks_see_each_epoch_as_logged_and_can_end_a_run(archive, tmp_path):
    cache, out = tmp_path / "cache", tmp_path / "run"
    watch = Watch(stop_at=1)
    with pytest.raises(Stop):  # a callback's exception ends the run at once ...
        cifar100.train(**SMALL, data=archive, epochs=3, out=out, cache_dir=cache,
                       progress=False, callbacks=[watch])  # fmt: skip
    assert watch.calls == [("start", 0), ("epoch", 1), ("error", "Stop")]
    again = Watch()  # ... with that epoch saved: resume goes on from it
    run = cifar100.train(resume=out, cache_dir=cache, progress=False, callbacks=[again])
    assert run.finished and again.calls == [("start", 1), ("epoch", 2), ("epoch", 3), ("end", True)]
    assert watch.records + again.records == run.paths.read_metrics()  # each line as logged
