"""DDP through torchrun: 2 CPU processes (gloo), rank 0 alone writes, same result as 1 process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cifar100 import cli
from cifar100.data.loader import DeviceBatches
from cifar100.data.tensors import ImageSet
from cifar100.engine.distributed import DistInfo, local_slice
from cifar100.runtime.checkpoint import load_checkpoint
from synthetic_cifar import make_cifar100_archive
from synthetic_folders import write_classes

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="this PyTorch build has no gloo backend",
)


def test_rank_slices_tile_the_global_batch():
    parts = [local_slice(12, DistInfo(rank=r, world=3)) for r in range(3)]
    assert [(s.start, s.stop) for s in parts] == [(0, 4), (4, 8), (8, 12)]
    data = ImageSet(torch.zeros(20, 4, 4, 3, dtype=torch.uint8), torch.arange(20), ["a"] * 20)
    batches = DeviceBatches(data, torch.device("cpu"), 12, shuffle=True, drop_last=True)
    ((images, labels),) = list(batches.epoch(0))
    seen = torch.cat([labels[s] for s in parts])
    assert torch.equal(seen, labels) and len(set(seen.tolist())) == 12


def _settings(*extra):
    return [
        "train.batch_size=32",
        "model.dropout=0",
        "train.lr=0.01",
        "data.limit_train=32",
        "data.val_fraction=0",
        *extra,
    ]


def _args(archive, out, cache, *extra):
    settings = _settings(*extra)
    return ["train", "--preset", "scratch", "--data", str(archive), "--epochs", "1",
            *[a for kv in settings for a in ("--set", kv)],
            "--out", str(out), "--cache-dir", str(cache), "--no-progress"]  # fmt: skip


# Built here, as module-scoped fixtures run before conftest's per-test isolation.
ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "PYTHONUNBUFFERED": "1",
    "CIFAR100_MIRROR": "http://127.0.0.1:9/",
    "CIFAR100_WEIGHTS_MIRROR": "http://127.0.0.1:9/",
}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


def _torchrun(*args, timeout=600):
    cmd = [*TORCHRUN, "--standalone", "--nproc_per_node=2", *args]
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def standalone(tmp_path_factory):
    """A 2-process DDP run started by torchrun --standalone: (archive, cache, run, stdout)."""
    root = tmp_path_factory.mktemp("ddp")
    archive = make_cifar100_archive(root / "c100.tar.gz", n_train=160, n_test=40)
    cache = root / "cache"
    settings = ("train.sync_bn=true", "track.tensorboard=true")  # tracked by rank 0 alone
    out = _torchrun("-m", "cifar100", *_args(archive, root / "ddp", cache, *settings))
    return archive, cache, root / "ddp", out


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(standalone, tmp_path):
    archive, cache, ddp_dir, stdout = standalone
    assert stdout.count("test top-1") == 1  # rank 0 alone reports
    assert "x 2 processes" in stdout
    assert stdout.count("train.sync_bn needs CUDA") == 1  # said once, and ignored on CPU
    assert sorted(p.name for p in ddp_dir.iterdir()) == [
        ".lock",  # rank 0's: one trainer per run directory
        "best.pt",
        "config.json",
        "environment.json",
        "evaluation.json",
        "last.pt",
        "metrics.jsonl",
        "predictions.npz",  # rank 0's too
        "tensorboard",
    ]
    assert len(list((ddp_dir / "tensorboard").iterdir())) == 1  # one writer: rank 0's
    assert json.loads((ddp_dir / "environment.json").read_text())["world_size"] == 2
    assert len((ddp_dir / "metrics.jsonl").read_text().splitlines()) == 1

    # One process with the same global batch in two micro-batches of 16 sees exactly what
    # the two ranks see (batch-norm statistics over 16 images each), and must take the same
    # step, here bit for bit. (One step: this network at random init on noise is so badly
    # conditioned that rounding differences grow quickly over further steps.)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each DDP process runs: kernels then sum in the same order
    try:
        assert cli.main(_args(archive, tmp_path / "single", cache, "train.accumulate=2")) == 0
    finally:
        torch.set_num_threads(threads)
    ddp = load_checkpoint(ddp_dir / "last.pt")["model"]
    one = load_checkpoint(tmp_path / "single" / "last.pt")["model"]
    params = [k for k in one if "running" not in k and "num_batches" not in k]
    worst = max(float((ddp[k] - one[k]).abs().max()) for k in params)
    print(f"DDP (2 processes) vs 1 process with 2 micro-batches: max |difference| {worst:.2e}")
    assert all(torch.allclose(ddp[k], one[k], rtol=1e-4, atol=1e-5) for k in params)


@pytest.mark.slow
def test_ddp_run_stopped_mid_epoch_resumes_exactly(tmp_path):
    archive = make_cifar100_archive(tmp_path / "c100.tar.gz", n_train=160, n_test=40)
    cache = tmp_path / "cache"
    # 96 images in global batches of 32: 3 steps an epoch; the ranks agree at every step.
    settings = ["data.limit_train=96", "train.epochs=2", "train.log_every=1", "train.ema_decay=0.9"]
    _torchrun("-m", "cifar100", *_args(archive, tmp_path / "whole", cache, *settings))
    ddp_stop = str(Path(__file__).with_name("ddp_stop_after.py"))
    part = str(tmp_path / "part")
    out = _torchrun(ddp_stop, part, str(cache), "4", f"data.path={archive}", *_settings(*settings))
    assert out.count("stopped: max_steps at epoch 2, step 1 of 3") == 2  # both ranks
    state = load_checkpoint(tmp_path / "part" / "last.pt")
    assert state["position"]["step"] == 1 and len(state["position"]["rng"]) == 2
    _torchrun("-m", "cifar100", "train", "--resume", str(tmp_path / "part"),
              "--cache-dir", str(cache), "--no-progress")  # fmt: skip
    whole = load_checkpoint(tmp_path / "whole" / "last.pt")
    resumed = load_checkpoint(tmp_path / "part" / "last.pt")
    assert whole["epoch"] == resumed["epoch"] == 2
    assert all(torch.equal(whole["model"][k], resumed["model"][k]) for k in whole["model"])
    assert all(torch.equal(whole["ema"]["model"][k], v) for k, v in resumed["ema"]["model"].items())


@pytest.mark.slow
def test_two_nodes_through_the_rendezvous_equal_one_node(standalone, tmp_path):
    archive, cache, ddp_dir, _ = standalone
    with socket.socket() as free:  # a port for the c10d rendezvous on this machine
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    nodes = [
        subprocess.Popen(
            [
                *TORCHRUN,
                "--nnodes=2",
                "--nproc_per_node=1",
                "--rdzv-backend=c10d",
                f"--rdzv-endpoint=127.0.0.1:{port}",
                "--rdzv-id=cifar100-test",
                "-m",
                "cifar100",
                *_args(archive, tmp_path / "nodes", cache),
            ],
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for _ in range(2)
    ]
    results = [node.communicate(timeout=600) for node in nodes]
    for node, (_, err) in zip(nodes, results):
        assert node.returncode == 0, err[-3000:]
    assert sum(out.count("x 2 processes") for out, _ in results) == 1  # global rank 0 alone
    one = load_checkpoint(ddp_dir / "last.pt")["model"]
    two = load_checkpoint(tmp_path / "nodes" / "last.pt")["model"]
    assert all(torch.equal(one[k], two[k]) for k in one)


def test_a_process_that_joined_a_group_ends_without_interpreter_shutdown(monkeypatch):
    # Under torchrun the CLI ends with os._exit after flushing: a DDP model keeps its Gloo
    # group alive past destroy_process_group, and its threads' teardown during interpreter
    # shutdown sometimes aborted a finished run (engine.distributed.exit_process).
    from cifar100.engine import distributed

    exits, flushed = [], []
    monkeypatch.setattr(distributed.os, "_exit", exits.append)
    monkeypatch.setattr(distributed.sys.stdout, "flush", lambda: flushed.append("out"))
    distributed.exit_process(0)
    assert exits == [] and flushed == []  # an ordinary process returns normally
    monkeypatch.setattr(distributed, "_joined", True)
    distributed.exit_process(143)
    assert exits == [143] and flushed == ["out"]


@pytest.mark.slow
def test_rank_0_alone_warns_about_an_image_folders_skipped_files(tmp_path):
    data = tmp_path / "images"
    write_classes(data, {"a": 12, "b": 12})
    (data / "a" / "readme.txt").write_text("not an image")
    settings = ["train.batch_size=8", "data.val_fraction=0", "model.resize=1"]
    cmd = [*TORCHRUN, "--standalone", "--nproc_per_node=2", "-m", "cifar100", "train",
           "--preset", "scratch", "--dataset", "folder", "--data", str(data), "--epochs", "1",
           *[a for kv in settings for a in ("--set", kv)], "--out", str(tmp_path / "run"),
           "--cache-dir", str(tmp_path / "cache"), "--no-progress"]  # fmt: skip
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    said = done.stdout + done.stderr
    assert said.count("skipped 1 file that is not a readable image") == 1
