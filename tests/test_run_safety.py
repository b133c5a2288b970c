"""A run survives what happens around it: a second trainer, a full disk, a changed byte, a
read-only folder, a file of the wrong kind. Each gets one line naming the file and exit 2."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cifar100 import cli, fileio
from cifar100.engine.run_lock import RunLock
from cifar100.errors import CheckpointError, WriteError
from cifar100.runtime import checkpoint as checkpoint_module
from cifar100.runtime.checkpoint import load_checkpoint, resolve_checkpoint, save_checkpoint
from synthetic_cifar import make_cifar10_archive
from tiny_run import SMALL


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return make_cifar10_archive(tmp_path_factory.mktemp("data") / "c10.tar.gz", 64, 32)


def train_args(archive: Path, out: Path, cache: Path, epochs: int = 2) -> list[str]:
    return ["train", *SMALL, "--data", str(archive), "--epochs", str(epochs),
            "--out", str(out), "--cache-dir", str(cache)]  # fmt: skip


def one_error_line(err: str, *words: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err and "unexpected error" not in err
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


# --- a digest on every checkpoint ----------------------------------------------------------------


def test_a_changed_byte_in_a_checkpoint_is_refused(tmp_path):
    path = tmp_path / "last.pt"
    weights = torch.linspace(-1, 1, 4096)
    save_checkpoint({"model": {"w": weights}, "classes": ["a", "b"]}, path)
    assert torch.equal(load_checkpoint(path)["model"]["w"], weights)
    raw = bytearray(path.read_bytes())
    at = bytes(raw).index(weights[1000:1004].numpy().tobytes())  # inside the tensor's bytes
    raw[at + 3] ^= 0x7F  # one flipped byte: a weight of about 1e36, as seen in the field
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="do not match the digest") as e:
        load_checkpoint(path)
    assert str(e.value).startswith(str(path)) and "best.pt may still be intact" in str(e.value)


def test_a_checkpoint_without_a_digest_from_version_1_still_loads(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"format": "cifar100-checkpoint", "version": 1, "model": {}}, path)
    assert load_checkpoint(path)["version"] == 1


# --- a trained run to try things on --------------------------------------------------------------


@pytest.fixture(scope="module")
def run(archive, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    out, cache = root / "run", root / "cache"
    assert cli.main(train_args(archive, out, cache)) == 0
    return out, cache


@pytest.mark.slow
def test_predict_refuses_a_corrupted_checkpoint(run, tmp_path, capsys):
    out, _ = run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    tested = resolve_checkpoint(copy)  # what predict takes from a run: its tested weights
    raw = bytearray(tested.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    tested.write_bytes(bytes(raw))
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (32, 32), (200, 10, 10)).save(image)
    capsys.readouterr()
    assert cli.main(["predict", str(copy), str(image)]) == 2
    one_error_line(capsys.readouterr().err, str(tested), "damaged")


@pytest.mark.parametrize("content", [b"just some text\n", b"", b"PK\x03\x04 not a zip"])
def test_a_file_of_another_kind_given_as_a_checkpoint_is_one_line(content, tmp_path, capsys):
    bad = tmp_path / "notes.pt"
    bad.write_bytes(content)
    assert cli.main(["evaluate", str(bad)]) == 2
    one_error_line(capsys.readouterr().err, str(bad))


def test_weights_that_do_not_fit_name_the_file_and_the_first_difference(run, tmp_path, capsys):
    out, _ = run
    state = load_checkpoint(out / "last.pt")
    state["info"]["config"]["model"]["head_units"] = (
        128  # settings that no longer match the weights
    )
    bad = tmp_path / "mismatch.pt"
    save_checkpoint(state, bad)
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (32, 32)).save(image)
    assert cli.main(["predict", str(bad), str(image)]) == 2
    line = one_error_line(capsys.readouterr().err, str(bad), "head.dense.weight", "(256,", "(128,")
    assert line.endswith("tensors expected)")  # not cut off


def test_files_written_by_the_tool_get_the_usual_mode(run):
    out, _ = run
    mask = os.umask(0o022)
    os.umask(mask)
    for name in ("last.pt", "config.json", "evaluation.json"):
        assert (out / name).stat().st_mode & 0o777 == 0o666 & ~mask, name


# --- one trainer per run directory -------------------------------------------------------------


def test_a_second_trainer_on_a_run_is_refused_naming_the_first(run, tmp_path, capsys):
    out, cache = run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    with RunLock(copy):
        capsys.readouterr()
        assert cli.main(["train", "--resume", str(copy), "--cache-dir", str(cache)]) == 2
        one_error_line(capsys.readouterr().err, f"process {os.getpid()}", "in use", str(copy))
    # released: now it resumes (all epochs done, so it evaluates again)
    assert cli.main(["train", "--resume", str(copy), "--cache-dir", str(cache)]) == 0


HOLD = """
import os, sys, time
from cifar100.engine.run_lock import RunLock
RunLock(sys.argv[1]).acquire()
if os.fork() == 0:  # a forked child (as the image decoders are) outlives its parent
    time.sleep(60)
    os._exit(0)
print("locked", flush=True)
time.sleep(60)
"""


def test_the_lock_goes_with_a_killed_process_even_if_its_children_live(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(CheckpointError, match=f"process {proc.pid}"):
            RunLock(tmp_path).acquire()
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        # The orphaned child (alive for a minute) does not hold it: it closed its copy as it
        # started, which on a busy machine may be a moment after its parent printed.
        deadline = time.monotonic() + 5
        while True:
            try:
                RunLock(tmp_path).acquire().release()
                break
            except CheckpointError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
    finally:
        proc.kill()
        subprocess.run(["pkill", "-f", str(tmp_path)], check=False)


@pytest.mark.slow
def test_resume_of_a_run_still_training_is_refused_and_logs_no_epoch_twice(archive, tmp_path):
    out, cache = tmp_path / "run", tmp_path / "cache"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen(
        [sys.executable, "-m", "cifar100", *train_args(archive, out, cache, epochs=200)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        for line in first.stdout:  # wait for its first epoch
            if line.startswith("epoch 1/"):
                break
        second = subprocess.run(
            [
                sys.executable,
                "-m",
                "cifar100",
                "train",
                "--resume",
                str(out),
                "--no-progress",
                "--cache-dir",
                str(cache),
            ],  # fmt: skip
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert second.returncode == 2
        one_error_line(second.stderr, f"process {first.pid}", "in use")
        first.send_signal(signal.SIGINT)  # it saves its position and stops
        assert first.wait(60) == 130
    finally:
        first.kill()
    epochs = [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs == sorted(set(epochs))


def test_a_failed_run_leaves_no_directory_behind(tmp_path, capsys):
    out = tmp_path / "run"
    missing = tmp_path / "missing.tar.gz"
    assert cli.main(["train", *SMALL, "--data", str(missing), "--out", str(out)]) == 2
    assert not out.exists()


# --- a full disk ---------------------------------------------------------------------------------


@contextlib.contextmanager
def small_filesystem(path: Path, megabytes: int):
    """A size-limited tmpfs at `path` (root on Linux only); the test skips elsewhere."""
    path.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("a size-limited tmpfs needs root and mount(8); the injected ENOSPC test runs")
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if made.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({made.stderr.strip()})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def grow(path: Path, megabytes: int) -> None:
    subprocess.run(["mount", "-o", f"remount,size={megabytes}m", str(path)], check=True)


@pytest.mark.slow
@pytest.mark.parametrize("precheck", [True, False], ids=["checked-first", "torch-fails"])
def test_a_full_disk_while_checkpointing_keeps_a_resumable_run(
    precheck, archive, tmp_path, capsys, monkeypatch
):
    if not precheck:  # let torch run into the full disk itself, as on a disk shared with others
        monkeypatch.setattr(fileio, "check_free_space", lambda *a: None)
    cache = tmp_path / "cache"
    with small_filesystem(tmp_path / "disk", 75) as disk:
        out = disk / "run"
        # epoch 1 writes last.pt and best.pt (30 MB each); epoch 2's last.pt needs 30 MB more
        assert cli.main(train_args(archive, out, cache, epochs=3)) == 2
        line = one_error_line(capsys.readouterr().err, f"no space left on {disk}", "needed about")
        assert "MB" in line and f"cifar100 train --resume {out}" in line
        assert not list(out.glob(".*.tmp"))  # no half-written file left behind
        assert load_checkpoint(out / "last.pt")["epoch"] == 1  # the previous one is intact
        grow(disk, 200)
        assert cli.main(["train", "--resume", str(out), "--cache-dir", str(cache)]) == 0
    # (the file system is gone now; what it held was checked above and in the resumed run)


@pytest.mark.slow
def test_the_first_save_failing_leaves_a_run_that_starts_again(archive, tmp_path, monkeypatch):
    """An injected ENOSPC, so this runs everywhere: nothing trained is kept, yet the run is
    neither stuck ("checkpoint not found") nor refused as existing."""
    out, cache = tmp_path / "run", tmp_path / "cache"
    real = checkpoint_module.torch_save_atomic

    def full(state, target, what, needed):  # as a disk that fills while torch writes
        with fileio.atomic_path(target, what, needed) as tmp:
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp))

    monkeypatch.setattr(checkpoint_module, "torch_save_atomic", full)
    with pytest.raises(WriteError, match="no space left on .*needed about.*starts it again"):
        from cifar100.config import apply_overrides, load_preset
        from cifar100.engine.train import train

        cfg = load_preset("scratch")
        apply_overrides(cfg, SMALL_SETS + [f"data.path={archive}", "train.epochs=2"])
        train(cfg, out=out, cache_dir=cache, progress=False)
    assert (out / "config.json").is_file() and not (out / "last.pt").exists()
    monkeypatch.setattr(checkpoint_module, "torch_save_atomic", real)
    assert cli.main(["train", "--resume", str(out), "--cache-dir", str(cache)]) == 0
    epochs = [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]


SMALL_SETS = ["data.dataset=cifar10", "model.backbone=efficientnet_lite0", "model.resize=1",
              "train.batch_size=32"]  # fmt: skip


# --- unwritable places ---------------------------------------------------------------------------


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder nobody may write to: a read-only tmpfs as root (root ignores mode bits)."""
    path = tmp_path / "ro"
    path.mkdir()
    if os.geteuid() == 0:
        made = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)])
        if made.returncode:
            pytest.skip("root, and cannot mount a read-only tmpfs here")
        yield path
        subprocess.run(["umount", "-l", str(path)], check=False)
    else:
        path.chmod(0o555)
        yield path
        path.chmod(0o755)


def test_training_into_a_read_only_folder_is_one_line(archive, read_only_dir, tmp_path, capsys):
    out = read_only_dir / "run"
    assert cli.main(train_args(archive, out, tmp_path / "cache")) == 2
    one_error_line(capsys.readouterr().err, str(out), "choose a location you can write to")


def test_evaluate_into_a_read_only_folder_is_one_line(run, read_only_dir, capsys):
    out, cache = run
    target = read_only_dir / "eval.json"
    capsys.readouterr()
    rc = cli.main(["evaluate", str(out), "--output", str(target), "--cache-dir", str(cache)])
    assert rc == 2
    one_error_line(capsys.readouterr().err, str(read_only_dir), "write")


def test_class_names_must_be_unique_text(tmp_path, capsys):
    names = tmp_path / "names.txt"
    names.write_text("cat\ndog\n\ncat\n")
    argv = ["import-keras", str(tmp_path / "m.h5"), "--out", str(tmp_path / "o")]
    assert cli.main([*argv, "--class-names", str(names)]) == 2
    one_error_line(capsys.readouterr().err, "'cat' appears twice", "lines 1 and 4")
    names.write_bytes(b"\xff\xfe\x00binary")
    assert cli.main([*argv, "--class-names", str(names)]) == 2
    one_error_line(capsys.readouterr().err, "not a UTF-8 text file")


def test_import_keras_onto_a_run_does_not_suggest_resume(run, tmp_path, capsys):
    out, _ = run
    assert cli.main(["import-keras", str(tmp_path / "m.h5"), "--out", str(out)]) == 2
    line = one_error_line(capsys.readouterr().err, "already holds a run", "another --out")
    assert "--resume" not in line


# --- the rest of each class: other files the tool reads or writes --------------------------------


def test_a_download_onto_a_full_disk_names_the_file_and_the_space(tmp_path):
    from cifar100.data import download as dl
    from http_server import serve_directory

    root = tmp_path / "www"
    root.mkdir()
    (root / "big.bin").write_bytes(os.urandom(3 << 20))
    with serve_directory(root) as server, small_filesystem(tmp_path / "disk", 2) as disk:
        for announce in (True, False):  # refused at once, or when the disk fills
            server.announce["/big.bin"] = (3 << 20) if announce else None
            with pytest.raises(WriteError, match=f"no space left on {disk}.*big.bin") as e:
                dl.download(server.url("big.bin"), disk / "big.bin", progress=False)
            assert "\n" not in str(e.value) and not list(disk.iterdir())


def test_a_checkpoint_that_would_inflate_is_refused_before_loading(tmp_path):
    import zipfile

    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", b"\0" * (64 << 20))  # 64 MB of zeros in about 64 KB
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(CheckpointError, match="inflate to 67108864 bytes"):
        load_checkpoint(bomb)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, content, words",
    [
        ("config.json", b"\xff\xfe binary", "unreadable"),
        ("config.json", b"[1, 2]", "not a JSON object"),
        ("evaluation.json", b"{truncated", "damaged"),
        ("predictions.npz", b"PK\x03\x04 cut short", "damaged predictions file"),
    ],
)
def test_a_damaged_run_file_is_one_line_naming_it(run, tmp_path, capsys, name, content, words):
    out, _ = run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    if name == "predictions.npz" and not (copy / name).exists():
        shutil.copy(out / "evaluation.json", copy / "evaluation.json")
    (copy / name).write_bytes(content)
    command = ["report", str(copy)] if name != "config.json" else ["train", "--resume", str(copy)]
    assert cli.main(command) == 2
    one_error_line(capsys.readouterr().err, str(copy / name), words)


def test_a_predictions_file_with_a_changed_value_is_refused(tmp_path):
    import numpy as np

    from cifar100.predictions_file import read_predictions, write_predictions

    arrays = {"labels": np.arange(4), "logits": np.eye(4, dtype=np.float32),
              "classes": np.array(list("abcd"))}  # fmt: skip
    path = tmp_path / "predictions.npz"
    write_predictions(path, arrays)
    assert set(read_predictions(path)) == set(arrays)
    with np.load(path) as z:
        changed = {k: z[k] for k in z.files}
    changed["logits"][0, 1] = 5.0
    np.savez_compressed(path, **changed)
    with pytest.raises(CheckpointError, match="do not match their digest"):
        read_predictions(path)


def test_metrics_with_binary_garbage_keep_their_good_lines(tmp_path):
    from cifar100.runtime.run_dir import read_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"epoch": 1}\n\xff\xfe\x00garbage\n[3]\n{"epoch": 2}\n')
    assert read_metrics(path) == [{"epoch": 1}, {"epoch": 2}]


def test_a_config_file_that_is_not_text_is_one_line(tmp_path, capsys):
    bad = tmp_path / "c.toml"
    bad.write_bytes(b"\xff\xfe\x00\x01")
    assert cli.main(["train", "--config", str(bad)]) == 2
    one_error_line(capsys.readouterr().err, str(bad), "not a UTF-8 text file")


@pytest.mark.parametrize(
    "config",
    [
        {"config": {"layers": [1]}},
        {"config": {"layers": [{"class_name": "Dense", "config": 3}]}},
        {"config": []},
    ],  # fmt: skip
)
def test_a_keras_config_of_another_shape_is_a_model_error(config):
    from cifar100.errors import ModelError
    from cifar100.weights.keras_report_config import parse_report_config

    with pytest.raises(ModelError, match="m.h5: "):
        parse_report_config(config, "m.h5")


@pytest.mark.parametrize("fmt", ["safetensors", "onnx", "triton"])
def test_exporting_into_a_read_only_folder_is_one_line(fmt, run, read_only_dir, capsys):
    out, cache = run
    target = read_only_dir / ("repo" if fmt == "triton" else f"m.{fmt}")
    argv = ["export", str(out), "--format", fmt, "--out", str(target), "--cache-dir", str(cache)]
    capsys.readouterr()
    assert cli.main(argv) == 2
    one_error_line(capsys.readouterr().err, str(read_only_dir))
