"""The informational commands, and that every command's --help reads."""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys

import pytest

from cifar100 import cli
from cifar100.cli.parser import COMMANDS as PARSER_COMMANDS
from cifar100.cli.parser import build_parser
from cifar100.cli.settings_flags import MODEL_FLAGS, SETTING_FLAGS, resolve_config
from cifar100.config import CHOICES, Config, DataConfig, setting_kind
from cifar100.serve.settings import ServeSettings

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


@pytest.mark.slow
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


@pytest.mark.slow
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


# The parser, its settings and its start: each default and choice is the settings type's.


def _options(parser, command: str) -> dict:
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {a.dest: a for a in sub.choices[command]._actions}


@pytest.mark.parametrize("command", list(PARSER_COMMANDS))
def test_the_help_of_every_command_in_the_table_renders(command, capsys):
    with pytest.raises(SystemExit) as done:
        cli.main([command, "--help"])
    assert done.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert out.startswith("usage: cifar100 " + command)
    assert " ".join(PARSER_COMMANDS[command].DESCRIPTION.split())[:60] in out


def test_the_setting_flags_take_type_and_choices_from_the_settings_types(tmp_path):
    """Not given, a setting flag leaves the setting as the preset or config file has it (so its
    parsed default is None); given, it sets the setting, as a value of the setting's type."""
    parser = build_parser()
    for command in ("train", "summary"):
        actions = _options(parser, command)
        for flag in SETTING_FLAGS.values():
            if flag.dest not in actions:
                assert command == "summary" and flag.key not in MODEL_FLAGS
                continue
            action, (kind, _) = actions[flag.dest], setting_kind(flag.key)
            assert action.default is None, flag.flag
            assert tuple(action.choices or ()) == CHOICES.get(flag.key, ()), flag.flag
            if kind == "bool":
                assert action.const == "true", flag.flag
            else:
                assert action.type is {"int": int, "float": float}.get(kind), flag.flag
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    # No flags over a config file that sets nothing: the settings types' own defaults.
    assert resolve_config(parser.parse_args(["train", "--config", str(empty)])) == Config()
    for flag in SETTING_FLAGS.values():
        kind, _ = setting_kind(flag.key)
        value = {"int": "3", "float": "0.5", "bool": None}.get(kind, "x")
        value = CHOICES[flag.key][-1] if flag.key in CHOICES else value
        argv = ["train", "--config", str(empty), flag.flag, *([value] if value else [])]
        section, _, name = flag.key.partition(".")
        got = getattr(getattr(resolve_config(parser.parse_args(argv)), section), name)
        assert got == ({"int": 3, "float": 0.5, "bool": True}.get(kind) or value), flag.flag


def test_the_parser_reads_each_default_and_choice_from_the_settings_types(monkeypatch):
    """Change a default or a choice where the settings type keeps it, and the parser follows:
    the command line copies none of them."""
    monkeypatch.setattr(DataConfig, "dataset", "cifar10")
    monkeypatch.setattr(DataConfig, "image_size", 48)
    monkeypatch.setitem(CHOICES, "data.dataset", ("cifar10", "cifar100", "folder", "new"))
    monkeypatch.setitem(CHOICES, "model.preprocess", (*CHOICES["model.preprocess"], "new"))
    changed = {}
    for f in dataclasses.fields(ServeSettings):
        changed[f.name] = f.default + "-x" if f.type == "str" else f.default * 3 + 1
        monkeypatch.setattr(ServeSettings, f.name, changed[f.name])
    parser = build_parser()
    data = parser.parse_args(["data"])
    assert (data.dataset, data.image_size) == ("cifar10", 48)
    assert "(default: 48)" in _options(parser, "data")["image_size"].help
    assert "default: cifar10" in _options(parser, "train")["dataset"].help
    assert parser.parse_args(["import-keras", "f.h5", "--out", "o"]).dataset == "cifar10"
    assert parser.parse_args(["train", "--dataset", "new"]).dataset == "new"
    assert parser.parse_args(["summary", "--dataset", "new"]).dataset == "new"
    assert parser.parse_args(["data", "--dataset", "new"]).dataset == "new"
    keras = parser.parse_args(["import-keras", "f", "--out", "o", "--preprocess", "new"])
    assert keras.preprocess == "new"
    serve = vars(parser.parse_args(["serve", "model.onnx"]))
    assert {k: serve[k] for k in changed if k in serve} == {
        k: v
        for k, v in changed.items()
        if k != "top_k"  # top_k: /predict's, no flag
    }


def test_export_formats_are_the_registrys(monkeypatch):
    from cifar100.export import formats

    names = list(formats.FORMATS)
    assert list(_options(build_parser(), "export")["format"].choices) == names
    monkeypatch.setitem(formats.FORMATS, "new", formats.FORMATS["onnx"])  # a new registration
    assert list(_options(build_parser(), "export")["format"].choices) == [*names, "new"]


def test_the_parser_and_the_light_commands_leave_torch_unloaded():
    """`cifar100 --help`, each command's --help (export's reads the format registry, which
    loads no format's code) and `presets` start without torch: its import takes seconds."""
    code = (
        "import contextlib, io, sys\n"
        "from cifar100 import cli\n"
        "from cifar100.cli.parser import COMMANDS\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    assert cli.main(['presets']) == 0\n"
        "    for argv in [['--help'], *([c, '--help'] for c in COMMANDS)]:\n"
        "        try:\n"
        "            cli.main(argv)\n"
        "        except SystemExit:\n"
        "            pass\n"
        "print('torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False", "the CLI's start imported torch"
