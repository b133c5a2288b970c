"""OUT/best.toml: the best trial's settings as a config file that `cifar100 train --config`
reads: `extends = "<preset>"`, then every setting where the trial differs from the preset (the
searched values, and the flags and --set the search was given)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from optuna.trial import FrozenTrial

from cifar100.config import SECTIONS, Config, load_preset, preset_names
from cifar100.errors import CifarError
from cifar100.fileio import write_text_atomic
from cifar100.runtime.run_dir import RunDir
from cifar100.tune.space import Space


def trial_config(trial: FrozenTrial, base: Config, space: Space) -> Config:
    """The trial's resolved config: its run's config.json, or (the run on another machine)
    the base config with the trial's values."""
    run_dir = trial.user_attrs.get("run_dir")
    if run_dir and RunDir(run_dir).is_run():
        try:
            return RunDir(run_dir).read_config()
        except CifarError:
            pass  # a damaged config.json: rebuilt below from what the study holds
    return space.apply(base, dict(trial.params))


def write_best_config(
    path: Path, trial: FrozenTrial, base: Config, space: Space, study_name: str
) -> Path:
    cfg = trial_config(trial, base, space)
    preset = cfg.preset if cfg.preset in preset_names() else None
    reference = load_preset(preset) if preset else Config()
    lines = [
        f"# cifar100 tune: the best trial of study {json.dumps(study_name)}",
        f"# trial {trial.number}: validation top-1 {trial.value:.4f}",
        f"# searched: {', '.join(f'{k} = {_toml(v)}' for k, v in trial.params.items())}",
        "# cifar100 train --config THIS_FILE trains these settings again",
    ]
    if preset:
        lines.append(f"extends = {_toml(preset)}")
    for section in SECTIONS:
        ours, theirs = getattr(cfg, section).__dict__, getattr(reference, section).__dict__
        changed = [(k, v) for k, v in ours.items() if v != theirs.get(k)]
        if changed:
            lines += ["", f"[{section}]"] + [f"{k} = {_toml(v)}" for k, v in changed]
    write_text_atomic(path, "\n".join(lines) + "\n")
    return path


def _toml(value: Any) -> str:
    """A setting's value in TOML; an unset one is "" (which clears an optional setting)."""
    if value is None:
        return '""'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return {math.inf: "inf", -math.inf: "-inf"}.get(value, "nan")
    if isinstance(value, int | float):
        return repr(value)
    # JSON's escapes are TOML's (ASCII only); DEL, which JSON leaves raw, TOML refuses.
    return json.dumps(str(value)).replace("\x7f", "\\u007f")
