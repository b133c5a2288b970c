"""The informational commands, and that every command's --help reads."""

from __future__ import annotations

import json

import pytest

from cifar100 import cli

COMMANDS = ["train", "evaluate", "predict", "summary", "import-keras", "backbones", "bench",
            "presets", "data", "report", "compare"]  # fmt: skip


def test_summary_prints_the_reports_table(capsys):
    assert cli.main(["summary", "--preset", "seed"]) == 0
    out = capsys.readouterr().out
    for text in ("(None, 224, 224, 3)", "23,564,800", "524,544", "1,024", "25,700",
                 "Total params: 24,116,068"):  # fmt: skip
        assert text in out
    assert cli.main(["summary", "--preset", "seed", "--dataset", "cifar10"]) == 0
    assert "(None, 10)" in capsys.readouterr().out


def test_backbones_lists_weights_resolution_and_size(capsys):
    assert cli.main(["backbones"]) == 0
    out = capsys.readouterr().out
    assert "resnet50v2" in out and "23,564,800" in out and "efficientnet_lite0" in out
    assert cli.main(["backbones", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["resnet50v2"]["native_size"] == 224 and rows["resnet50v2"]["out_features"] == 2048
    assert rows["efficientnet_lite2"]["native_size"] == 260


def test_presets_are_listed_with_descriptions(capsys):
    assert cli.main(["presets"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert {"seed", "cpu", "scratch"} <= set(names)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as done:
        cli.main([command, "--help"])
    assert done.value.code == 0
    assert "usage: cifar100 " + command in capsys.readouterr().out


def test_no_command_prints_help_and_fails(capsys):
    assert cli.main([]) == 2
    out = capsys.readouterr().out
    assert all(c in out for c in COMMANDS)


def test_bench_measures_both_variants_and_their_ratio(capsys):
    args = ["bench", "--backbone", "efficientnet_lite0", "--size", "32", "--batch-size", "4",
            "--steps", "2", "--warmup", "1", "--device", "cpu"]  # fmt: skip
    assert cli.main([*args, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [r["variant"] for r in result["rows"]] == ["eager fp32", "tuned"]
    assert result["rows"][0]["train_ratio"] == 1.0
    assert all(r["train_img_s"] > 0 and r["infer_img_s"] > 0 for r in result["rows"])
    assert "CPU" in result["device"]
    assert cli.main(args) == 0
    assert "ratio" in capsys.readouterr().out
