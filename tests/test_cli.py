"""The informational commands, and that every command's --help reads."""

from __future__ import annotations

import json

import pytest

from cifar100 import cli

COMMANDS = ["train", "evaluate", "predict", "summary", "import-keras", "backbones", "presets",
            "data"]  # fmt: skip


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
