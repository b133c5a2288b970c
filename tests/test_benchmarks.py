"""The benchmark scripts' plumbing, on tiny synthetic image folders (the figures need real data)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from synthetic_folders import write_split_folder

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import vary_setting  # noqa: E402


@pytest.mark.slow
def test_vary_setting_trains_once_per_value_and_reports_each(tmp_path, capsys):
    data = write_split_folder(tmp_path / "data", {"a": 12, "b": 12}, {"a": 4, "b": 4})
    vary_setting.main(
        [
            "train.finetune_bn=batch,frozen",
            "--data", str(data), "--backbone", "resnet50v2", "--out", str(tmp_path / "runs"),
            "--set", "model.weights=none", "--set", "model.resize=1",
            "--set", "data.limit_train=24", "--set", "train.epochs=2",
            "--set", "train.freeze_epochs=1", "--set", "train.batch_size=8",
        ]
    )  # fmt: skip
    rows = json.loads((tmp_path / "runs" / "summary.json").read_text())
    assert [r["train.finetune_bn"] for r in rows] == ["batch", "frozen"]
    assert all(len(r["val_top1"]) == 2 and 0 <= r["top1"] <= 1 for r in rows)
    for name in ("batch", "frozen"):
        saved = json.loads((tmp_path / "runs" / name / "config.json").read_text())
        assert saved["train"]["finetune_bn"] == name
    out = capsys.readouterr().out
    assert "machine:" in out and "frozen" in out.splitlines()[-1]
