"""Before a long run: the expected time on this device, and on a CPU the presets made for one
(issue 19, item 4). The wording is tested on stubbed timings; one real timing is short."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import pytest

from cifar100 import cli
from cifar100.config import load_preset
from cifar100.engine import estimate
from cifar100.engine.estimate import StepTimes, bench_lines, estimate_lines, estimate_run

# ResNet50V2 at 224 on a 2-core VM: the seed preset's first epoch showed an ETA of 2:19:29
# for 352 steps of 128 images, about 0.19 s per image (issue 19).
SLOW_CPU = StepTimes(train_s=0.186, infer_s=0.06, batch=16, steps=2, device="cpu",
                     device_name="x86_64 CPU, 2 threads")  # fmt: skip
GPU = dataclasses.replace(SLOW_CPU, train_s=2e-4, infer_s=5e-5, device="cuda", device_name="H100")


def test_the_seed_preset_on_a_cpu_is_said_to_take_a_day_and_names_the_cpu_presets():
    lines = estimate_lines(estimate_run(load_preset("seed"), SLOW_CPU), "seed")
    assert len(lines) == 2
    hours = float(lines[0].split("about ")[1].split(" h")[0])
    assert 27 < hours < 30  # 12 epochs x 45,000 images x 0.186 s, and validation and test
    assert "12 epochs of 45,000 training images" in lines[0] and "an estimate" in lines[0]
    assert "x86_64 CPU, 2 threads" in lines[0]
    assert "--preset cpu-finetune" in lines[1] and "7 min 50 s" in lines[1]


def test_a_short_run_or_a_gpu_gets_the_time_alone():
    fast_cpu = dataclasses.replace(SLOW_CPU, train_s=0.002, infer_s=0.0005)
    (line,) = estimate_lines(estimate_run(load_preset("cpu-finetune"), fast_cpu), "cpu-finetune")
    assert "about 5 min for 3 epochs of 45,000 training images" in line
    (line,) = estimate_lines(estimate_run(load_preset("seed"), GPU), "seed")
    assert "on H100" in line and "about 2 min" in line
    # Features mode: the backbone once over every image, then the head.
    (line,) = estimate_lines(estimate_run(load_preset("cpu"), fast_cpu), "cpu")
    assert "the backbone over" in line and "then the head" in line


def test_an_image_folder_is_estimated_per_thousand_images():
    cfg = load_preset("seed")
    cfg.data.dataset, cfg.data.path = "folder", "pets.tar.gz"
    lines = estimate_lines(estimate_run(cfg, SLOW_CPU), "seed")
    assert "per 1,000 training images per epoch" in lines[0]
    assert "--preset cpu-finetune" in lines[1]  # unknown length on a slow CPU: say it


def test_train_says_the_estimate_before_it_starts(monkeypatch, capsys):
    import cifar100.engine.train as engine_train

    said_before = []

    def fake_train(cfg, before_epochs=None, **kwargs):
        """The engine: sets the run up (where a bad input stops it), then calls before_epochs
        ahead of its first epoch."""
        capsys.readouterr()
        if before_epochs is not None:
            before_epochs(cfg)
        said_before.append(capsys.readouterr().err)
        return SimpleNamespace(stopped=None)

    monkeypatch.delenv("CIFAR100_NO_ESTIMATE")  # conftest's: the other tests start at once
    monkeypatch.setattr(estimate, "time_steps", lambda cfg, device: SLOW_CPU)
    monkeypatch.setattr(engine_train, "train", fake_train)
    assert cli.main(["train", "--preset", "seed", "--device", "cpu"]) == 0
    assert "expected time on this CPU" in said_before[0]
    assert "--preset cpu-finetune" in said_before[0]
    assert cli.main(["train", "--preset", "seed", "--device", "cpu", "--no-estimate"]) == 0
    assert "expected time" not in said_before[1]


def test_a_real_timing_of_a_small_model_is_short_and_positive():
    cfg = load_preset("cpu-finetune")
    cfg.model.resize, cfg.train.batch_size = 1, 4
    times = estimate.time_steps(cfg, estimate.torch.device("cpu"), steps=1, warmup=1)
    assert times.train_s > 0 and times.infer_s > 0 and times.batch == 4
    assert times.device == "cpu" and "CPU" in times.device_name
    assert "expected time on this CPU" in estimate_lines(estimate_run(cfg, times), "x")[0]


def test_bench_says_what_it_will_do_and_roughly_how_long(monkeypatch, capsys):
    lines = bench_lines("resnet50v2", 224, 64, ["eager fp32", "tuned"], 3, 10, SLOW_CPU)
    assert "eager fp32 and tuned, each 3 warm-up + 10 timed training steps" in lines[0]
    # 2 variants x 13 steps x 64 images x (0.186 + 0.06) s
    assert "about 7 min" in lines[1] and "an estimate" in lines[1]
    import cifar100.engine.throughput as throughput

    said_before = []

    def fake_bench(*args):
        said_before.append(capsys.readouterr().err)
        return {"rows": []}

    monkeypatch.setattr(estimate, "bench_times", lambda *args: SLOW_CPU)
    monkeypatch.setattr(throughput, "run_bench", fake_bench)
    assert cli.main(["bench", "--device", "cpu", "--json"]) == 0
    assert "bench: resnet50v2 at 224x224, batch 64" in said_before[0]
    assert "expected time: about" in said_before[0]
    assert json.loads(capsys.readouterr().out) == {"rows": []}  # stdout stays the JSON alone


@pytest.mark.parametrize("seconds, text", [(40, "40 s"), (600, "10 min"), (100440, "27.9 h")])
def test_durations_read_as_a_person_says_them(seconds, text):
    assert estimate.duration(seconds) == text


def test_a_bad_input_is_one_line_before_any_estimate(monkeypatch, tmp_path, capsys):
    """The estimate comes once the run is set up: a weights file that is not one is refused
    at once, in one line, not after seconds of timing."""
    monkeypatch.delenv("CIFAR100_NO_ESTIMATE")
    timed = []
    monkeypatch.setattr(estimate, "time_steps", lambda cfg, device: timed.append(1) or SLOW_CPU)
    (tmp_path / "weights.pth").write_text("not weights")
    argv = ["train", "--preset", "cpu-finetune", "--device", "cpu", "--dataset", "cifar10",
            "--data", str(tmp_path / "missing.tar.gz"), "--out", str(tmp_path / "run")]  # fmt: skip
    assert cli.main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("note:")]
    assert len(err) == 1 and "missing.tar.gz" in err[0] and timed == []
