"""Experiment tracking: `train --track mlflow=URI` against a real `mlflow server` process on
127.0.0.1 (SQLite backend), read back through MlflowClient; `--track tensorboard` read back
through TensorBoard's own reader; the local store; resume into the same tracked run; a
tracker that is down, and `cifar100 track` sending the run afterwards."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

import cifar100
from cifar100 import cli
from cifar100.config import apply_overrides, load_preset
from cifar100.engine.train import train
from synthetic_cifar import make_cifar10_archive
from tiny_run import SMALL

mlflow = pytest.importorskip("mlflow", reason="MLflow is in the test extra: pip install -e .[test]")
from mlflow import MlflowClient  # noqa: E402

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real MLflow tracking server on 127.0.0.1, SQLite backend, artifacts served by it."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    mlflow_cli = Path(sys.executable).parent / "mlflow"
    process = subprocess.Popen(
        [str(mlflow_cli), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{root / 'store.db'}",
         "--artifacts-destination", str(root / "artifacts")],
        cwd=root, stdout=subprocess.DEVNULL, stderr=open(root / "server.log", "wb"),
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}")
        time.sleep(0.3)
    yield url
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return make_cifar10_archive(tmp_path_factory.mktemp("data") / "c10.tar.gz", 64, 32)


def _train(archive, out, *flags) -> int:
    argv = ["train", *SMALL, "--data", str(archive), "--epochs", "2", "--out", str(out)]
    return cli.main([*argv, "--cache-dir", str(out.parent / "cache"), *flags])


@pytest.fixture(scope="module")
def tracked(server, archive, tmp_path_factory):
    """One run trained with both trackers on: MLflow at the server, TensorBoard."""
    import cifar100.report

    out = tmp_path_factory.mktemp("tracked") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cifar100.report, "build_report", _quick_build_report)
        assert _train(archive, out, "--track", f"mlflow={server}", "--track", "tensorboard") == 0
    return out


def _quick_build_report(run_dir, plots=True):
    """A small report.html and plots/ in place of the real ones, whose plots take most of a
    tracked tiny run's time (test_report.py tests the real report): what the tracker logs is
    whatever `cifar100 report` wrote."""
    (Path(run_dir) / "plots").mkdir(exist_ok=True)
    (Path(run_dir) / "plots" / "curves.png").write_bytes(b"png")
    (Path(run_dir) / "report.html").write_text("<html>report</html>")
    return Path(run_dir) / "report.html"


@pytest.fixture
def quick_report(monkeypatch):
    import cifar100.report

    monkeypatch.setattr(cifar100.report, "build_report", _quick_build_report)


def _numbers(record: dict) -> dict:
    return {k: v for k, v in record.items() if k != "epoch" and isinstance(v, int | float)
            and not isinstance(v, bool)}  # fmt: skip


def _run_id(run_dir: Path) -> str:
    return json.loads((run_dir / "tracking.json").read_text())["mlflow"]["run_id"]


def _assert_metrics_equal_the_log(client: MlflowClient, run_id: str, run_dir: Path) -> None:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    keys = set().union(*(_numbers(r) for r in records))
    assert {"val_top1", "train_loss", "epoch_s"} <= keys
    for key in keys:
        history = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
        logged = [(r["epoch"], r[key]) for r in records if key in r]
        assert [(m.step, m.value) for m in history] == logged, key  # to the digit, once each


def test_the_metrics_read_back_from_a_real_mlflow_server_equal_the_log(server, tracked):
    client = MlflowClient(tracking_uri=server)
    run = client.get_run(_run_id(tracked))
    assert run.info.status == "FINISHED" and run.info.run_name == tracked.name
    _assert_metrics_equal_the_log(client, run.info.run_id, tracked)
    config = json.loads((tracked / "config.json").read_text())
    params = run.data.params
    assert params["train.lr"] == str(config["train"]["lr"])
    assert (
        params["model.backbone"] == "efficientnet_lite0" and params["track.tensorboard"] == "True"
    )
    tags = run.data.tags
    assert tags["preset"] == "scratch" and tags["dataset"] == "cifar10"
    assert tags["env.torch"] == torch.__version__ and "env.torch_threads" in tags
    evaluation = json.loads((tracked / "evaluation.json").read_text())
    assert run.data.metrics["test.top1"] == evaluation["top1"]
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.json", "environment.json", "evaluation.json", "metrics.jsonl",
            "report.html", "plots", "model"} <= names  # fmt: skip
    assert [a.path for a in client.list_artifacts(run.info.run_id, "plots")] == [
        "plots/curves.png"]  # fmt: skip


def test_the_model_logged_in_mlflow_format_predicts_as_the_run_does(server, tracked):
    model_uri = f"runs:/{_run_id(tracked)}/model"
    mlflow.set_tracking_uri(server)
    try:
        logged = mlflow.pyfunc.load_model(model_uri)
    finally:
        mlflow.set_tracking_uri(None)
    inputs = logged.metadata.get_input_schema().inputs[0]
    assert tuple(inputs.shape) == (-1, 3, 32, 32)
    assert logged.metadata.metadata["classes"][0] == "airplane"
    images = np.random.default_rng(0).integers(0, 256, (3, 3, 32, 32)).astype(np.float32)
    ours = cifar100.load(tracked).module.eval()
    with torch.no_grad():
        expected = ours(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(np.asarray(logged.predict(images)), expected, atol=1e-5)


def test_tensorboard_events_read_back_equal_the_log(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tracked / "tensorboard"))
    events.Reload()
    records = [json.loads(line) for line in (tracked / "metrics.jsonl").read_text().splitlines()]
    for key in _numbers(records[0]):
        logged = [(e.step, e.value) for e in events.Scalars(key)]
        assert logged == [(r["epoch"], np.float32(r[key])) for r in records], key  # float32
    evaluation = json.loads((tracked / "evaluation.json").read_text())
    assert events.Scalars("test/top1")[0].value == np.float32(evaluation["top1"])
    assert "config/text_summary" in events.Tags()["tensors"]


def test_the_local_store_and_resume_into_the_same_tracked_run(
    archive, tmp_path, monkeypatch, quick_report
):
    """track.mlflow=local: a store in the runs root (no server, nothing in the working
    directory); a run stopped after its first epoch and resumed goes on in the same MLflow
    run and the same TensorBoard log."""
    monkeypatch.chdir(tmp_path)
    cfg = load_preset("scratch")
    apply_overrides(cfg, [f"{k}={v}" for k, v in {
        "data.dataset": "cifar10", "data.path": archive, "model.backbone": "efficientnet_lite0",
        "model.resize": 1, "train.batch_size": 32, "train.epochs": 2,
        "track.mlflow": "local", "track.tensorboard": True}.items()])  # fmt: skip
    root = tmp_path / "runs"
    out, cache = root / "run", tmp_path / "cache"
    stopped = train(cfg, out=out, cache_dir=cache, progress=False, stop_after_epochs=1)
    assert stopped.stopped and stopped.epochs == 1
    store = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=store)
    run_id = _run_id(out)
    assert client.get_run(run_id).info.status == "KILLED"  # until resumed
    train(resume=out, cache_dir=cache, progress=False)
    assert _run_id(out) == run_id and client.get_run(run_id).info.status == "FINISHED"
    _assert_metrics_equal_the_log(client, run_id, out)
    artifacts = Path(client.get_run(run_id).info.artifact_uri.removeprefix("file://"))
    assert artifacts.is_relative_to(root / "mlartifacts") and (artifacts / "model").is_dir()
    assert not (tmp_path / "mlruns").exists()  # MLflow's default, wherever it is started
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("val_top1")] == [1, 2]
    # An export written after the run ends is what `cifar100 track` sends then, and only it.
    assert cli.main(["export", str(out), "--format", "onnx"]) == 0
    state = json.loads((out / "tracking.json").read_text())["mlflow"]
    assert state["not_logged"] == [] and state["final"]  # not yet counted: written after
    assert cli.main(["track", str(out), "--to", "local"]) == 0
    assert [a.path for a in client.list_artifacts(run_id, "exports")] == ["exports/model.onnx"]
    state = json.loads((out / "tracking.json").read_text())["mlflow"]
    assert state["exports"] == ["model.onnx"] and state["not_logged"] == []


def test_a_run_ended_by_an_error_is_failed_in_mlflow(archive, tmp_path, quick_report):
    class Pruned(Exception):
        pass

    class Prune:
        def on_epoch(self, run, record):
            raise Pruned  # as a search's pruner ends a trial

    cfg = load_preset("scratch")
    apply_overrides(cfg, ["data.dataset=cifar10", f"data.path={archive}", "model.resize=1",
                          "model.backbone=efficientnet_lite0", "train.batch_size=32",
                          "train.epochs=2", "track.mlflow=local"])  # fmt: skip
    out = tmp_path / "runs" / "run"
    with pytest.raises(Pruned):
        train(cfg, out=out, cache_dir=tmp_path / "cache", progress=False, callbacks=[Prune()])
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    run = client.get_run(_run_id(out))
    assert run.info.status == "FAILED" and run.data.metrics["val_top1"] is not None


def test_a_uri_mlflow_cannot_use_is_one_warning_also_when_the_run_stops(archive, tmp_path, capsys):
    cfg = load_preset("scratch")
    apply_overrides(cfg, ["data.dataset=cifar10", f"data.path={archive}", "model.resize=1",
                          "model.backbone=efficientnet_lite0", "train.batch_size=32",
                          "train.epochs=2", "track.mlflow=foo://bar"])  # fmt: skip
    out = tmp_path / "run"
    stopped = train(cfg, out=out, cache_dir=tmp_path / "cache", progress=False, stop_after_epochs=1)
    assert stopped.stopped and stopped.epochs == 1  # the session ended as asked
    err = capsys.readouterr().err.splitlines()
    warnings = [line for line in err if line.startswith("warning: MLflow")]
    assert len(warnings) == 1 and "foo://bar" in warnings[0]


def test_a_tracker_that_is_down_warns_once_and_track_sends_the_run_later(
    server, archive, tmp_path, capsys, quick_report
):
    down = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    out = tmp_path / "run"
    assert _train(archive, out, "--track", f"mlflow={down}") == 0  # training went on
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning: MLflow")]
    assert len(warnings) == 1 and f"cifar100 track {out} --to {down}" in warnings[0], err
    state = json.loads((out / "tracking.json").read_text())["mlflow"]
    assert state["run_id"] is None and state["epochs"] == [] and state["error"]
    assert state["not_logged"] == ["settings", "epochs 1-2", "the final test, artifacts and model"]
    assert (out / "evaluation.json").is_file()

    assert cli.main(["export", str(out), "--format", "onnx"]) == 0  # sent with the run
    assert cli.main(["track", str(out), "--to", server]) == 0
    client = MlflowClient(tracking_uri=server)
    run_id = _run_id(out)
    assert [a.path for a in client.list_artifacts(run_id, "exports")] == ["exports/model.onnx"]
    _assert_metrics_equal_the_log(client, run_id, out)
    assert client.get_run(run_id).info.status == "FINISHED"
    assert json.loads((out / "tracking.json").read_text())["mlflow"]["not_logged"] == []
    assert cli.main(["track", str(out), "--to", server]) == 0  # again: nothing twice
    _assert_metrics_equal_the_log(client, run_id, out)


@pytest.mark.parametrize(
    "argv, words",
    [
        (["train", "--track", "wandb"], "--track 'wandb': choose mlflow, mlflow=URI"),
        (["train", "--track", "mlflow="], "give a tracking URI"),
        (["train", "--resume", "x", "--track", "tensorboard"], "drop --track"),
        (["track", "nowhere", "--to", "local"], "nowhere: not a run directory"),
    ],
)
def test_bad_tracking_input_is_one_line(argv, words, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1, err


def test_tracking_settings_in_a_config_file(tmp_path):
    from cifar100.config import load_config_file

    file = tmp_path / "c.toml"
    file.write_text(
        'extends = "cpu"\n[track]\nmlflow = "http://127.0.0.1:5000"\ntensorboard = true\n'
    )
    cfg = load_config_file(file)
    assert cfg.track.mlflow == "http://127.0.0.1:5000" and cfg.track.tensorboard
    assert os.environ.get("MLFLOW_TRACKING_URI") is None  # nothing global set by reading it


@pytest.mark.parametrize("target, package", [("mlflow", "mlflow"), ("tensorboard", "tensorboard")])
def test_a_tracker_whose_library_is_missing_is_one_line_before_anything_is_written(
    target, package, archive, tmp_path, monkeypatch, capsys
):
    monkeypatch.setitem(sys.modules, package, None)  # as if not installed: import fails
    if package == "tensorboard":
        monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    assert _train(archive, tmp_path / "run", "--track", target) == 2
    err = capsys.readouterr().err.strip()
    assert "pip install 'cifar100[track]'" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "raw",
    [None, [], "x", {"uri": 5, "experiment": "e"}, {"uri": "u", "experiment": "e", "epochs": "12"},
     {"uri": "u", "experiment": "e", "epochs": [1.5]}, {"uri": "u", "bogus": 1}],
)  # fmt: skip
def test_a_damaged_tracking_record_starts_a_new_tracked_run(raw):
    from cifar100.tracking.mlflow_log import MlflowState

    assert MlflowState.from_json(raw) is None
    good = {"uri": "u", "experiment": "e", "run_id": "r", "epochs": [1, 2], "not_logged": []}
    assert MlflowState.from_json(good).epochs == [1, 2]
