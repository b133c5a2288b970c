"""torch's CPU threads fit the cores that other work leaves free (cifar100.cpu_threads)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch

from cifar100 import cli, cpu_threads
from cifar100.cpu_threads import busy_cores_elsewhere, fit_threads, usable_cores


@pytest.fixture
def threads(monkeypatch):
    """Lets fit_threads choose (the suite fixes OMP_NUM_THREADS), restoring torch's count."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
@pytest.mark.skipif(len(usable_cores()) < 2, reason="needs 2 cores to keep one busy")
def test_a_busy_process_is_seen_as_a_busy_core():
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        busy = busy_cores_elsewhere(0.5)
    finally:
        spin.kill()
        spin.wait()
    assert busy is not None and busy >= 0.7  # one core, give or take the machine's other work


def test_the_count_is_the_cores_left_free(threads, monkeypatch):
    cores = len(usable_cores())
    for busy, want in [(0.0, cores), (0.2, cores), (cores - 0.9, 1), (cores + 3.0, 1)]:
        monkeypatch.setattr(cpu_threads, "busy_cores_elsewhere", lambda seconds=0, b=busy: b)
        assert fit_threads() == want == torch.get_num_threads()


def test_a_resumed_run_keeps_its_count_when_the_machine_has_it(threads, monkeypatch):
    monkeypatch.setattr(cpu_threads, "busy_cores_elsewhere", lambda seconds=0: 99.0)
    assert fit_threads(keep=1) == 1
    assert fit_threads(keep=len(usable_cores()) + 1) == 1  # more than there are: chosen anew


def test_omp_num_threads_decides_when_set(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(cpu_threads, "busy_cores_elsewhere", lambda seconds=0: 99.0)
    before = torch.get_num_threads()
    assert fit_threads() == before


def test_train_says_when_it_uses_fewer_threads_than_cores(threads, monkeypatch, capsys):
    if len(usable_cores()) < 2:
        pytest.skip("one core: never fewer threads than cores")
    monkeypatch.setattr(cpu_threads, "busy_cores_elsewhere", lambda seconds=0: 1.0)
    cli.main(["train", "--set", "train.lr=-1"])  # refused at once, after the threads are set
    err = capsys.readouterr().err
    assert "CPU cores are busy with other work" in err and "OMP_NUM_THREADS" in err


@pytest.mark.slow
@pytest.mark.skipif(len(usable_cores()) < 2, reason="one core: no second one to come free")
def test_a_run_started_beside_a_busy_core_uses_it_once_it_is_free(threads, monkeypatch, tmp_path):
    """The count is fitted again between epochs (issue 19: a snapshot at the start left a run
    on one core for all its minutes), recorded per epoch, and kept in the checkpoint."""
    import json

    from cifar100.engine import epoch_end
    from cifar100.runtime.checkpoint import Checkpoint
    from synthetic_cifar import make_cifar10_archive
    from tiny_run import SMALL

    busy = iter([1.0])  # another process holds a core as the run starts, then ends
    monkeypatch.setattr(cpu_threads, "busy_cores_elsewhere", lambda seconds=0: next(busy, 0.0))
    monkeypatch.setattr(epoch_end, "REFIT_EVERY_S", 0.0)
    archive = make_cifar10_archive(tmp_path / "c10.tar.gz", 64, 32)
    run = tmp_path / "run"
    argv = ["train", *SMALL, "--data", str(archive), "--epochs", "2", "--out", str(run)]
    assert cli.main([*argv, "--cache-dir", str(tmp_path / "cache")]) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    cores = len(usable_cores())
    assert [r["threads"] for r in records] == [cores - 1, cores]
    assert Checkpoint.load(run / "last.pt").threads == cores  # what a resume goes on with
