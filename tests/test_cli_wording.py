"""The CLI's words and dead ends (issue 19, item 10 and 12): each message says what helps."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from cifar100 import cli
from cifar100.cli.parser import EPILOG, build_parser
from cifar100.cli.settings_flags import SETTING_FLAGS
from cifar100.config import load_preset
from headless_chromium import GET_CHROMIUM, needs_chromium
from synthetic_folders import tar_directory, write_classes

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _parsers(parser: argparse.ArgumentParser):
    yield "cifar100", parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield from action.choices.items()


def test_no_parser_takes_an_abbreviation(capsys):
    """`summary --data X` was taken for --dataset X: every parser takes whole flags only."""
    assert all(not p.allow_abbrev for _, p in _parsers(build_parser()))
    for argv in (["summary", "--data", "x"], ["train", "--epoch", "3"], ["--deb", "presets"]):
        with pytest.raises(SystemExit) as done:
            cli.main(argv)
        assert done.value.code == 2, argv
    assert "unrecognized arguments" in capsys.readouterr().err


def test_summary_of_an_image_folder_asks_for_its_class_count_not_data(capsys):
    assert cli.main(["summary", "--dataset", "folder"]) == 2
    err = capsys.readouterr().err
    assert "--classes N" in err and "--data" not in err
    assert cli.main(["summary", "--dataset", "folder", "--classes", "7"]) == 0
    assert "(None, 7)" in capsys.readouterr().out


@pytest.mark.parametrize("packed", [True, False], ids=["tarball", "folder"])
def test_an_image_folder_given_for_cifar_says_to_add_dataset_folder(tmp_path, capsys, packed):
    images = tmp_path / "pets"
    write_classes(images, {"cat": 2, "dog": 2})
    data = tar_directory(images, tmp_path / "pets.tar.gz") if packed else images
    argv = ["data", "--data", str(data), "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "add --dataset folder" in err and "not the CIFAR-100 python archive" in err
    assert cli.main([*argv, "--dataset", "folder"]) == 0  # the advice works


def test_out_on_a_finished_run_does_not_suggest_resuming_it(tmp_path, capsys):
    run = tmp_path / "lite"
    run.mkdir()
    cfg = load_preset("cpu-finetune")
    (run / "config.json").write_text(json.dumps(cfg.to_dict()))
    (run / "evaluation.json").write_text("{}")  # `evaluate` writes it for a stopped run too
    (run / "metrics.jsonl").write_text('{"epoch": 1}\n{"epoch": 2}\n')
    argv = ["train", "--preset", "cpu-finetune", "--out", str(run)]
    assert cli.main(argv) == 2
    assert f"--resume {run}" in capsys.readouterr().err  # stopped at 2 of 3: resume it
    (run / "metrics.jsonl").write_text('{"epoch": 1}\n{"epoch": 2}\n{"epoch": 3}\n')
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "finished run" in err and "another --out" in err and "--resume" not in err


def test_a_triton_export_refuses_an_existing_entry_before_any_work(tmp_path, monkeypatch):
    from cifar100.errors import ModelError
    from cifar100.export import formats, triton_repo
    from cifar100.export.job import ExportJob

    def no_work(*args, **kwargs):
        raise AssertionError("the ONNX export ran before the target was checked")

    monkeypatch.setattr(triton_repo, "write_onnx_export", no_work)
    (tmp_path / "repo" / "cifar100").mkdir(parents=True)
    (tmp_path / "repo" / "cifar100" / "config.pbtxt").write_text("kept")
    model = SimpleNamespace(classes=["a", "b"], runtime="torch", source=tmp_path / "m.pt")
    with pytest.raises(ModelError, match="already holds a model"):
        triton_repo.write_triton_export(ExportJob(model, "triton", tmp_path / "repo"))
    # The CLI checks before it reads the data it checks and calibrates on.
    with pytest.raises(ModelError, match="already holds a model"):
        formats.check_output(model, "triton", tmp_path / "repo")
    formats.check_output(model, "triton", tmp_path / "repo", force=True)


def test_flags_whose_value_comes_from_elsewhere_say_their_default():
    """README promises each flag's default in --help. test_readme_cli checks the flags with a
    default in the parser; these default to None, "not given", and the value comes from the
    preset (the setting flags, train's --device), or is "auto" (--device), or the run's."""
    setting = {f.dest for f in SETTING_FLAGS.values()} | {"device", "data"}
    missing = []
    for name, parser in _parsers(build_parser()):
        for a in parser._actions:
            if a.dest in setting | {"batch_size"} and a.nargs != 0 and a.const is None:
                if "default" not in a.help:
                    missing.append(f"{name} {a.option_strings[-1]}")
    assert not missing, f"no default in --help: {missing}"
    train = {a.dest: a.help for a in dict(_parsers(build_parser()))["train"]._actions}
    seed = load_preset("seed").train
    assert f"seed: {seed.epochs}" in train["epochs"] and f"seed: {seed.lr}" in train["lr"]
    assert "default: the preset's" in train["device"]


def test_the_cpu_advice_is_readmes_with_the_measured_time(capsys):
    recommended = re.search(r"The recommended first run: `([\w-]+)`", README)[1]
    assert f"--preset {recommended} " in EPILOG and "--preset cpu " not in EPILOG
    measured = re.search(r"top-1 in (\d+ min \d+ s) on", README)[1]
    results = (ROOT / "docs" / "results.md").read_text(encoding="utf-8")
    assert f"**84.05%** | 99.48% | 63.74 / 80.28 / 84.52% | {measured}" in results
    assert cli.main(["presets"]) == 0
    (line,) = [x for x in capsys.readouterr().out.splitlines() if x.startswith(recommended)]
    assert measured in line and "84.05%" in line and "ten minutes" not in line


def test_cache_list_names_what_each_entry_came_from(tmp_path, capsys):
    from cifar100.data.cifar_sources import SOURCES
    from cifar100.data.folders import load_image_folder

    cache = tmp_path / "cache"
    (cache / "decoded").mkdir(parents=True)
    (cache / "cifar-100-python.tar.gz").write_bytes(b"x")
    (cache / "decoded" / f"cifar100-{SOURCES['cifar100'].md5}-v2.npz").write_bytes(b"x")
    (cache / "decoded" / "cifar10-0123456789abcdef-v2.npz").write_bytes(b"x")
    write_classes(tmp_path / "pets", {"cat": 2, "dog": 2})
    load_image_folder(tmp_path / "pets", 8, cache, progress=False)
    assert cli.main(["cache", "list", "--cache-dir", str(cache)]) == 0
    out = capsys.readouterr().out
    assert "cifar-100-python.tar.gz: the CIFAR-100 python archive" in out
    assert "CIFAR-100, decoded (as published)" in out
    assert "CIFAR-10, decoded (archive md5 0123456789ab)" in out
    assert f"the image folder {(tmp_path / 'pets').resolve()}" in out


def test_readme_and_the_skip_reason_say_how_to_get_the_browser():
    reason = needs_chromium.mark.kwargs["reason"]
    assert GET_CHROMIUM in reason and "README" in reason
    tests = README[README.index("## Tests") :]
    tests = tests[: tests.index("\n## ", 1)]
    assert GET_CHROMIUM in tests and "skip" in tests and "browser tests" in tests


def test_cache_list_reads_a_folder_entry_without_decoding_it(tmp_path):
    """The origin is one small member of the .npz: a damaged entry is unknown, never fatal."""
    from cifar100.cache import CacheEntry, entry_origin

    bad = tmp_path / "folders" / "x.npz"
    bad.parent.mkdir()
    bad.write_bytes(b"not a zip")
    assert "not recorded" in entry_origin(CacheEntry("folders", bad, 9, 0.0))
