"""A search space: TOML over any setting, each checked against the settings types up front.

    train.lr = {low = 1e-4, high = 0.1, log = true}      # a float, log-uniform
    train.freeze_epochs = {low = 0, high = 2}            # an int setting: int bounds (step too)
    train.finetune_bn = {choices = ["batch", "frozen"]}  # one of these

TOML reads dotted keys as nested tables ([train] lr = {...} is the same); a quoted
"train.lr" works too. Every name, bound and choice is checked against the config's fields,
types, RANGES and CHOICES before any trial runs: one line naming the file and key.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cifar100.config import (
    CHOICES,
    RANGES,
    SECTIONS,
    Config,
    describe_choices,
    describe_range,
    in_range,
    read_toml_file,
    set_value,
    setting_kind,
)
from cifar100.errors import ConfigError

SPEC_KEYS = {"low", "high", "log", "step", "choices"}
EXAMPLE = 'e.g. train.lr = {low = 1e-4, high = 0.1, log = true} or {choices = ["a", "b"]}'


@dataclass(frozen=True)
class Param:
    """One searched setting: a range (low, high, log, step) or a list of choices."""

    key: str  # section.name, also Optuna's parameter name
    kind: str  # float | int | choice
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        """This setting's value for an Optuna trial."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(
                self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log
            )
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)


@dataclass(frozen=True)
class Space:
    """The searched settings, in the file's order, and where they came from."""

    params: tuple[Param, ...]
    origin: str = "space"

    def suggest(self, trial: Any) -> dict[str, Any]:
        return {p.key: p.suggest(trial) for p in self.params}

    def apply(self, cfg: Config, values: dict[str, Any]) -> Config:
        """A copy of `cfg` with `values` (section.name -> value) set."""
        cfg = copy.deepcopy(cfg)
        for key, value in values.items():
            set_value(cfg, key, value, origin=self.origin)
        return cfg

    def digest(self) -> str:
        """A short digest of the space: a study refuses to be continued with another one."""
        text = json.dumps([dataclasses.asdict(p) for p in self.params], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_space(path: str | Path) -> Space:
    """Read and check a space file (TOML)."""
    raw = read_toml_file(path, "search space file", hint=f"; {EXAMPLE}")
    return parse_space(raw, origin=str(path))


def parse_space(raw: dict[str, Any], origin: str = "space") -> Space:
    """A space from TOML's tables: {"train": {"lr": {...}}} or {"train.lr": {...}}."""
    specs = _flatten(raw, origin)
    if not specs:
        raise ConfigError(f"{origin}: no settings to search; {EXAMPLE}")
    return Space(tuple(_param(key, spec, origin) for key, spec in specs.items()), origin)


def _flatten(raw: dict[str, Any], origin: str) -> dict[str, dict[str, Any]]:
    specs: dict[str, dict[str, Any]] = {}
    for key, value in raw.items():
        if not isinstance(value, dict):
            raise ConfigError(f"{origin}: {key} must be a table; {EXAMPLE}")
        if "." in key or value.keys() & SPEC_KEYS:
            specs[key] = value
        elif key in SECTIONS:
            for name, spec in value.items():
                if not isinstance(spec, dict):
                    raise ConfigError(f"{origin}: {key}.{name} must be a table; {EXAMPLE}")
                specs[f"{key}.{name}"] = spec
        else:
            raise ConfigError(f"{origin}: {key!r} is not section.name (sections: "
                              f"{', '.join(SECTIONS)})")  # fmt: skip
    return specs


def _param(key: str, spec: dict[str, Any], origin: str) -> Param:
    where = f"{origin}: {key}"
    _check_name(key, origin)
    unknown = spec.keys() - SPEC_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}; use "
                          "low/high (log, step) or choices")  # fmt: skip
    kind, _ = setting_kind(key)
    if "choices" in spec:
        if spec.keys() & {"low", "high", "log", "step"}:
            raise ConfigError(f"{where}: give choices or low/high, not both")
        return Param(key, "choice", choices=_choices(key, spec["choices"], where))
    if kind not in ("int", "float"):
        raise ConfigError(f"{where} is a {kind} setting: search it with choices = [...]")
    if not {"low", "high"} <= spec.keys():
        raise ConfigError(f"{where}: needs both low and high (or choices)")
    low, high = _bound(spec["low"], kind, where, "low"), _bound(spec["high"], kind, where, "high")
    log, step = spec.get("log", False), spec.get("step")
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: log must be true or false, got {log!r}")
    if not low < high:
        raise ConfigError(f"{where}: low ({low:g}) must be below high ({high:g}); to fix a "
                          "setting, use --set instead")  # fmt: skip
    if log and low <= 0:
        raise ConfigError(f"{where}: log = true needs low > 0, got {low:g}")
    if step is not None:
        step = _bound(step, kind, where, "step", check_range=False)
        if step <= 0 or log:
            raise ConfigError(f"{where}: step must be > 0 and cannot go with log = true")
    return Param(key, kind, low, high, log, step)


def _check_name(key: str, origin: str) -> None:
    section, _, name = key.partition(".")
    if section not in SECTIONS or not name or "." in name:
        raise ConfigError(f"{origin}: {key!r} is not section.name (sections: "
                          f"{', '.join(SECTIONS)})")  # fmt: skip
    names = [f.name for f in dataclasses.fields(SECTIONS[section])]
    if name not in names:
        raise ConfigError(f"{origin}: unknown setting {key!r}; {section} has: {', '.join(names)}")


def _bound(value: Any, kind: str, where: str, name: str, check_range: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where}: {name} must be a number, got {value!r}")
    if kind == "int" and not isinstance(value, int):
        raise ConfigError(f"{where} is an int setting: {name} must be a whole number, "
                          f"got {value!r}")  # fmt: skip
    key = where.rpartition(": ")[2]
    if check_range and key in RANGES and not in_range(value, key):
        raise ConfigError(f"{where}: {name} = {value:g} is out of range: {key} must be "
                          f"{describe_range(key)}")  # fmt: skip
    return value


def _choices(key: str, choices: Any, where: str) -> tuple[Any, ...]:
    if not isinstance(choices, list) or not choices:
        raise ConfigError(f"{where}: choices must be a non-empty list, e.g. choices = [1, 2]")
    values = []
    for choice in choices:
        cfg = Config()
        set_value(cfg, key, choice, origin=where)  # the field's type; a string is converted
        section, _, name = key.partition(".")
        value = getattr(getattr(cfg, section), name)
        if value is None:
            raise ConfigError(f"{where}: a choice cannot be empty (unset)")
        if key in CHOICES and value not in CHOICES[key]:
            raise ConfigError(f"{where}: {value!r} is not a choice of {key}: choose "
                              f"{describe_choices(key)}")  # fmt: skip
        if key in RANGES and not in_range(value, key):
            raise ConfigError(f"{where}: {value!r} is out of range: {key} must be "
                              f"{describe_range(key)}")  # fmt: skip
        values.append(value)
    if len(set(map(repr, values))) < len(values):
        raise ConfigError(f"{where}: a choice is listed twice")
    return tuple(values)
