"""cifar100 tune: the space file and its checks, a search end to end (run directories,
best.toml that train accepts, study.html), pruning, Ctrl-C, the budget, and two worker
processes sharing one SQLite study.

Trials are the `cpu` preset's head on EfficientNet-Lite0 features of tiny synthetic CIFAR-10
at 32 px: the features are cached by the first trial, so a trial takes well under a second.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from optuna.trial import TrialState

from cifar100 import cli
from cifar100.config import apply_overrides, load_config_file, load_preset
from cifar100.engine.run import TrainResult
from cifar100.errors import ConfigError
from cifar100.runtime.run_dir import RunDir
from cifar100.tune import load_space, parse_space, tune
from cifar100.tune import storage as stores
from cifar100.tune import trial as trial_module
from cifar100.tune.best_config import _toml
from cifar100.tune.study import PRUNERS, make_pruner
from synthetic_cifar import make_cifar10_archive

SPACE = """
train.lr = {low = 1e-4, high = 0.1, log = true}
"train.label_smoothing" = {low = 0.0, high = 0.2}
[model]
dropout = {choices = [0.0, 0.25]}
"""
# (the cpu preset's head at 32 px; freeze_epochs=0 lets a trial have a single epoch)
SETTINGS = ["model.resize=1", "train.batch_size=32", "train.freeze_epochs=0"]
FLAGS = ["--preset", "cpu", "--dataset", "cifar10", "--epochs", "2", "--no-progress"]
FLAGS += [arg for s in SETTINGS for arg in ("--set", s)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A tiny archive and a cache holding its features (the first trial's work, done once)."""
    root = tmp_path_factory.mktemp("tune")
    archive = make_cifar10_archive(root / "c10.tar.gz", 64, 32)
    space = root / "space.toml"
    space.write_text(SPACE)
    cache = root / "cache"
    argv = ["train", *FLAGS, "--data", str(archive), "--out", str(root / "warm")]
    assert cli.main([*argv, "--cache-dir", str(cache), "--no-estimate"]) == 0
    return archive, cache, space


def tiny_config(archive: Path, epochs: int = 2):
    return apply_overrides(
        load_preset("cpu"),
        ["data.dataset=cifar10", f"data.path={archive}", *SETTINGS, f"train.epochs={epochs}"],
    )


def space_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.toml"
    path.write_text(text)
    return path


# The space file


def test_a_space_reads_dotted_nested_and_quoted_keys_with_their_kinds(tmp_path):
    space = load_space(
        space_file(
            tmp_path,
            "train.freeze_epochs = {low = 0, high = 2}\n"
            'train.finetune_bn = {choices = ["batch", "frozen"]}\n' + SPACE,
        )
    )
    kinds = {p.key: (p.kind, p.low, p.high, p.log, p.choices) for p in space.params}
    assert kinds == {
        "train.lr": ("float", 1e-4, 0.1, True, ()),
        "train.label_smoothing": ("float", 0.0, 0.2, False, ()),
        "model.dropout": ("choice", None, None, False, (0.0, 0.25)),
        "train.freeze_epochs": ("int", 0, 2, False, ()),
        "train.finetune_bn": ("choice", None, None, False, ("batch", "frozen")),
    }
    values = space.suggest(
        optuna.trial.FixedTrial(
            {
                "train.lr": 0.01,
                "train.label_smoothing": 0.1,
                "model.dropout": 0.25,
                "train.freeze_epochs": 1,
                "train.finetune_bn": "frozen",
            }
        )
    )
    cfg = space.apply(load_preset("cpu"), values)
    assert (cfg.train.lr, cfg.train.freeze_epochs, cfg.train.finetune_bn) == (0.01, 1, "frozen")
    assert load_preset("cpu").train.lr == 1e-3  # the base is left as it was


@pytest.mark.parametrize(
    "text, words",
    [
        ("train.learning_rate = {low = 0.1, high = 1.0}", "unknown setting 'train.learning_rate'"),
        ("optim.lr = {low = 0.1, high = 1.0}", "'optim' is not section.name"),
        ("train.lr = {low = 0.1, high = 0.01}", "low (0.1) must be below high (0.01)"),
        ("train.lr = {low = 0.0, high = 0.1, log = true}", "log = true needs low > 0"),
        ('train.finetune_bn = {choices = ["batch", "fast"]}', "'fast' is not a choice"),
        ("train.finetune_bn = {choices = []}", "choices must be a non-empty list"),
        ("train.epochs = {low = 1, high = 2.5}", "high must be a whole number"),
        ("model.dropout = {low = 0.0, high = 1.5}", "model.dropout must be in [0, 1)"),
        ("train.optimizer = {low = 1, high = 2}", "search it with choices"),
        ("train.lr = {low = 0.1}", "needs both low and high"),
        ("train.lr = {low = 0.01, high = 0.1, steps = 2}", "unknown field(s) steps"),
        ("train.lr = 0.1", "must be a table"),
        ("train.lr = {low = 0.01, high = 0.1", "not valid TOML"),
        ("", "no settings to search"),
        ('train.lr = {low = "a", high = 0.1}', "low must be a number"),
        ('train.epochs = {choices = [1, "x"]}', "expected int"),
    ],
)
def test_a_bad_space_is_one_error_naming_the_file_and_the_key(tmp_path, text, words):
    path = space_file(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_space(path)
    assert words in str(e.value) and str(path) in str(e.value)


def test_a_space_that_is_not_text_or_missing_is_one_error(tmp_path):
    binary = tmp_path / "space.toml"
    binary.write_bytes(b"\xff\xfe\x00 not text")
    with pytest.raises(ConfigError, match="not a UTF-8 text file"):
        load_space(binary)
    with pytest.raises(ConfigError, match="not found"):
        load_space(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="is not section.name"):
        parse_space({"lr": {"low": 1, "high": 2}})


def test_the_cli_says_a_bad_space_in_one_line_and_exits_2(tmp_path, capsys):
    path = space_file(tmp_path, "train.lr = {low = 0.1, high = 0.01}")
    code = cli.main(
        ["tune", *FLAGS, "--space", str(path), "--trials", "2", "--out", str(tmp_path / "out")]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("cifar100 tune: error:") and "train.lr" in err
    assert not (tmp_path / "out").exists()  # refused before any study or trial


def test_best_toml_values_are_toml_that_reads_back():
    import tomllib

    values = {"a": 1e-05, "b": 3, "c": True, "d": 'q"\\\x7f\u00e9', "e": None, "f": 0.1}
    text = "\n".join(f"{k} = {_toml(v)}" for k, v in values.items())
    assert tomllib.loads(text) == {**values, "e": ""}


# The budget


def test_failed_trials_that_were_queued_again_and_surplus_ones_do_not_count():
    study = optuna.create_study(direction="maximize")
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}
    study.add_trial(optuna.create_trial(value=0.5, params={"x": 0.1}, distributions=dist))
    crashed = optuna.create_trial(state=TrialState.FAIL, params={"x": 0.2}, distributions=dist)
    study.add_trial(crashed)
    stores.retry_trial(study, study.trials[1])  # as the heartbeat's callback does
    trials = study.trials
    assert trials[2].state == TrialState.WAITING and trials[2].params == {"x": 0.2}
    assert [t.number for t in stores.counted(trials)] == [0, 2]
    assert stores.may_ask(study, 2)  # a waiting retry is always run
    study.add_trial(optuna.create_trial(state=TrialState.FAIL, user_attrs={stores.SURPLUS: True}))
    assert [t.number for t in stores.counted(study.trials)] == [0, 2]
    assert stores.over_budget(study, 3, 2) and not stores.over_budget(study, 2, 2)


# Searches, in process


@pytest.mark.slow
def test_a_search_writes_run_dirs_best_toml_that_train_accepts_and_a_page(data, tmp_path):
    archive, cache, space = data
    out = tmp_path / "search"
    result = tune(tiny_config(archive), load_space(space), 3, out, cache_dir=cache, pruner="none")
    study = optuna.load_study(study_name=result.study_name, storage=result.storage)
    assert result.states == {"COMPLETE": 3} and len(study.trials) == 3
    for t in study.trials:
        run = RunDir(t.user_attrs["run_dir"])
        assert run.path == out / f"trial-{t.number:04d}" and run.evaluation.is_file()
        cfg = run.read_config()
        assert (cfg.train.lr, cfg.model.dropout) == (
            t.params["train.lr"],
            t.params["model.dropout"],
        )
        last_val = run.read_metrics()[-1]["val_top1"]
        assert t.value == pytest.approx(last_val)  # the tested (last) weights' validation top-1
        assert t.user_attrs["test_top1"] == json.loads(run.evaluation.read_text())["top1"]
    best = max(study.trials, key=lambda t: t.value)
    assert result.best_number == best.number and result.best_value == best.value
    again = load_config_file(result.best_config)
    assert again.to_dict() == RunDir(best.user_attrs["run_dir"]).read_config().to_dict()
    assert 'extends = "cpu"' in result.best_config.read_text()
    page = result.page.read_text()
    assert page.count("data:image/png;base64,") == 3 and "http" not in page
    assert all(f"trial-{n:04d}" in page for n in range(3))
    # train --config accepts best.toml, and --report rewrites the page of the study as it is
    retrain = tmp_path / "retrain"
    assert (
        cli.main(
            [
                "train",
                "--config",
                str(result.best_config),
                "--epochs",
                "1",  # (the trials had 2)
                "--out",
                str(retrain),
                "--cache-dir",
                str(cache),
                "--no-progress",
                "--no-estimate",
            ]
        )
        == 0
    )
    assert RunDir(retrain).read_config().train.lr == best.params["train.lr"]
    result.page.unlink()
    assert cli.main(["tune", "--report", "--out", str(out)]) == 0 and result.page.is_file()


class AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study, trial) -> bool:
        return True


@pytest.mark.slow
def test_pruning_stops_a_run_after_its_first_epoch_but_never_at_its_last(data, tmp_path):
    archive, cache, space = data
    result = tune(
        tiny_config(archive, epochs=3),
        load_space(space),
        1,
        tmp_path / "p",
        cache_dir=cache,
        pruner=AlwaysPrune(),
    )
    assert result.states == {"PRUNED": 1} and result.best_config is None
    for n in range(1):
        run = RunDir(tmp_path / "p" / f"trial-{n:04d}")
        assert [m["epoch"] for m in run.read_metrics()] == [1] and not run.evaluation.exists()
    one = tune(
        tiny_config(archive, epochs=1),
        load_space(space),
        1,
        tmp_path / "q",
        cache_dir=cache,
        pruner=AlwaysPrune(),
    )
    assert one.states == {"COMPLETE": 1}  # its only epoch is its last: trained, not pruned


def test_the_median_pruner_prunes_a_trial_clearly_worse_than_the_others():
    study = optuna.create_study(direction="maximize", pruner=make_pruner("median", 3))
    for _ in range(5):
        study.add_trial(optuna.create_trial(value=0.9, intermediate_values={1: 0.8, 2: 0.9}))
    run = SimpleNamespace(cfg=tiny_config(Path("x"), epochs=3), say=print)
    good, bad = study.ask(), study.ask()
    trial_module.Pruning(good).on_epoch(run, {"epoch": 1, "val_top1": 0.85})
    with pytest.raises(optuna.TrialPruned):
        trial_module.Pruning(bad).on_epoch(run, {"epoch": 1, "val_top1": 0.1})
    last = study.ask()  # however bad, a trial's last epoch is its result, not a prune
    trial_module.Pruning(last).on_epoch(run, {"epoch": 3, "val_top1": 0.1})
    # nor is a frozen-backbone epoch, before the fine-tuning settings have acted; and a good
    # one is not reported, so it does not shield the epochs after it (the median pruner
    # compares a trial's best value so far)
    warm_up = study.ask()
    pruning = trial_module.Pruning(warm_up)
    pruning.on_epoch(run, {"epoch": 1, "val_top1": 0.95, "phase": "frozen"})
    with pytest.raises(optuna.TrialPruned):
        pruning.on_epoch(run, {"epoch": 2, "val_top1": 0.1, "phase": "finetune"})
    assert dict(study._storage.get_trial(warm_up._trial_id).intermediate_values) == {2: 0.1}


@pytest.mark.slow
def test_ctrl_c_marks_the_trial_failed_queues_it_again_and_writes_the_page(
    data, tmp_path, monkeypatch, capsys
):
    archive, cache, space = data
    stopped = TrainResult(tmp_path / "x", {}, 0, 0.1, stopped="SIGINT")
    monkeypatch.setattr(trial_module, "train", lambda *a, **k: stopped)
    result = tune(tiny_config(archive), load_space(space), 2, tmp_path, cache_dir=cache)
    assert result.stopped == "interrupted" and result.page.is_file()
    study = optuna.load_study(study_name=result.study_name, storage=result.storage)
    first, retry = study.trials
    assert first.state == TrialState.FAIL and first.user_attrs["interrupted"]
    assert retry.state == TrialState.WAITING and retry.params == first.params
    assert len(stores.counted(study.trials)) == 1  # the retry counts in the stopped one's place
    monkeypatch.undo()
    done = tune(tiny_config(archive), load_space(space), 2, tmp_path, cache_dir=cache)
    trials = optuna.load_study(study_name=done.study_name, storage=done.storage).trials
    assert [t.state for t in trials] == [TrialState.FAIL] + [TrialState.COMPLETE] * 2
    assert trials[1].params == first.params  # the stopped settings ran again first
    assert not trials[1].user_attrs.get("interrupted")  # (the retry began as the failed one's copy)
    assert trials[1].user_attrs["run_dir"].endswith("trial-0001")


def test_the_cli_offers_the_pruners_the_search_knows():
    from cifar100.cli import tune as tune_command

    assert tune_command.PRUNERS == PRUNERS


@pytest.mark.slow
def test_the_cli_exits_130_after_ctrl_c(data, tmp_path, monkeypatch, capsys):
    archive, cache, space = data
    stopped = TrainResult(tmp_path / "x", {}, 0, 0.1, stopped="SIGINT")
    monkeypatch.setattr(trial_module, "train", lambda *a, **k: stopped)
    argv = ["tune", *FLAGS, "--data", str(archive), "--space", str(space), "--trials", "2"]
    assert cli.main([*argv, "--out", str(tmp_path), "--cache-dir", str(cache)]) == 130
    assert "run the same command to go on" in capsys.readouterr().out


@pytest.mark.slow
def test_a_study_begun_with_another_space_is_refused(data, tmp_path, monkeypatch):
    archive, cache, space = data
    stopped = TrainResult(tmp_path / "x", {}, 0, 0.1, stopped="SIGINT")
    monkeypatch.setattr(trial_module, "train", lambda *a, **k: stopped)
    tune(tiny_config(archive), load_space(space), 1, tmp_path, cache_dir=cache)
    other = parse_space({"train.lr": {"low": 0.1, "high": 0.2}})
    with pytest.raises(ConfigError, match="another preset or search space"):
        tune(tiny_config(archive), other, 1, tmp_path, cache_dir=cache)


# Two worker processes, one study


@pytest.mark.slow
def test_two_worker_processes_share_one_sqlite_study_without_running_a_trial_twice(data, tmp_path):
    archive, cache, space = data
    out, n = tmp_path / "shared", 4
    argv = [
        sys.executable,
        "-m",
        "cifar100",
        "tune",
        *FLAGS,
        "--data",
        str(archive),
        "--space",
        str(space),
        "--trials",
        str(n),
        "--out",
        str(out),
        "--cache-dir",
        str(cache),
        "--pruner",
        "none",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    start = time.perf_counter()
    workers = [
        subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    outputs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    trials = optuna.load_study(
        study_name="shared-cpu", storage=stores.storage_url(None, out)
    ).trials
    assert [t.number for t in trials] == list(range(n))
    assert all(t.state == TrialState.COMPLETE for t in trials)
    dirs = [t.user_attrs["run_dir"] for t in trials]
    assert len(set(dirs)) == n and all(RunDir(d).evaluation.is_file() for d in dirs)
    assert sorted(p.name for p in out.glob("trial-*")) == [f"trial-{i:04d}" for i in range(n)]
    # each worker ran some of them (both began before either could finish the study)
    ran = [sum(f"trial {i}:" in o for i in range(n)) for o in outputs]
    assert sum(ran) == n, ran
    assert (out / "study.html").is_file() and (out / "best.toml").is_file()
    print(f"two workers, {n} trials: {time.perf_counter() - start:.1f} s, {ran}")


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # the test's own ask(), as a worker's
def test_a_crashed_workers_trial_is_failed_by_its_silence_and_run_again(
    data, tmp_path, monkeypatch
):
    archive, cache, space = data
    monkeypatch.setattr(stores, "GRACE_S", 1)
    url = stores.storage_url(None, tmp_path)
    study = optuna.create_study(
        storage=stores.open_storage(url), study_name="c", direction="maximize"
    )
    crashed = study.ask()  # a worker that drew its settings, beat once, then died
    load_space(space).suggest(crashed)
    study._storage.record_heartbeat(crashed._trial_id)
    time.sleep(2.5)  # (the storage keeps heartbeats to the second)
    result = tune(
        tiny_config(archive), load_space(space), 1, tmp_path, study_name="c", cache_dir=cache
    )
    first, retry = optuna.load_study(study_name="c", storage=url).trials
    assert first.state == TrialState.FAIL and retry.state == TrialState.COMPLETE
    assert retry.params == first.params and result.states == {"FAIL": 1, "COMPLETE": 1}
