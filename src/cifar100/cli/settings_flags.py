"""The flags that set one setting each (`--epochs N` is train.epochs), listed once, here.

The parser takes each flag's type and choices from the settings types (config.py); the value
when a flag is not given is the preset's (or the config file's), so these flags default to
None, "not given". resolve_config lays the given ones over the preset, then --set over them.
"""

from __future__ import annotations

import argparse

from cifar100.cli.args import STRICT_HELP
from cifar100.config import (
    CHOICES,
    SECTIONS,
    Config,
    apply_overrides,
    load_config_file,
    load_preset,
    set_value,
    setting_kind,
)
from cifar100.errors import CifarError


class SettingFlag:
    """`FLAG VALUE` sets the setting `key` ("section.name"); not given (None), the preset's
    value stands. `help` may say {default}: the settings type's default."""

    def __init__(self, key: str, metavar: str | None, help: str, flag: str = "") -> None:
        self.key, self.metavar, self.help = key, metavar, help
        self.flag = flag or "--" + key.partition(".")[2].replace("_", "-")  # --batch-size
        self.dest = self.flag[2:].replace("-", "_")

    def add_to(self, p: argparse.ArgumentParser, preset: Config | None = None) -> None:
        """`preset`: the default preset, whose value --help shows where the preset decides."""
        section, _, name = self.key.partition(".")
        kind, _ = setting_kind(self.key)
        default = getattr(SECTIONS[section], name, None)
        text = self.help.format(default=default)
        if "default" not in text and kind != "bool":  # a switch's default is off
            text += f" (default: {preset_default(self.key, preset)})"
        options: dict = {"metavar": self.metavar, "help": text}
        if kind == "bool":  # "true" as --set would give it: the flag only ever turns it on
            options.update(action="store_const", const="true")
        elif kind in ("int", "float"):
            options["type"] = int if kind == "int" else float
        if self.key in CHOICES:
            options["choices"] = CHOICES[self.key]
        p.add_argument(self.flag, **options)


# The order --help shows them in. --device, which sets train.device, is the common flag
# (args.add_common) that evaluate shares, so it is not listed here.
SETTING_FLAGS = {
    f.key: f
    for f in [
        SettingFlag(
            "model.backbone",
            "NAME",
            "backbone (model.backbone): resnet50v2, efficientnet_lite0/1/2, timm:NAME; see "
            "`cifar100 backbones`",
        ),
        SettingFlag("data.dataset", None, "which data (data.dataset); default: {default}"),
        SettingFlag(
            "model.weights",
            "SOURCE",
            "backbone weights (model.weights): imagenet, none (from scratch) or a file",
        ),
        SettingFlag(
            "data.path",
            "PATH",
            "CIFAR archive or extracted folder, or an image folder / tarball (data.path); "
            "default: download CIFAR",
            flag="--data",
        ),
        SettingFlag("train.epochs", "N", "total epochs (train.epochs)"),
        SettingFlag(
            "train.batch_size", "N", "images per step, all devices together (train.batch_size)"
        ),
        SettingFlag("train.lr", "LR", "fine-tuning peak learning rate (train.lr)"),
        SettingFlag("train.seed", "N", "random seed (train.seed)"),
        SettingFlag(
            "train.final",
            None,
            "the weights the run's test, report and exports use: best (the best validation "
            "epoch's, best.pt) or last (train.final); default: {default}",
        ),
        SettingFlag(
            "train.deterministic", None, "deterministic kernels only (train.deterministic)"
        ),
        SettingFlag("data.strict", None, STRICT_HELP),
        SettingFlag(
            "data.exclude",
            "AUDIT_CSV",
            "leave out the training images of this audit.csv's train rows (`cifar100 audit`; "
            "data.exclude)",
            flag="--exclude",
        ),
        SettingFlag(
            "model.init",
            "RUN_OR_CHECKPOINT",
            "start from this checkpoint's weights and model settings (model.init)",
        ),
    ]
}
MODEL_FLAGS = ("model.backbone", "data.dataset")  # what a model's shape needs (summary)


DEFAULT_PRESET = "seed"  # without --preset or --config


def preset_default(key: str, preset: Config | None) -> str:
    """What --help says of a setting's default: the preset's, and the default preset's value."""
    preset = preset or load_preset(DEFAULT_PRESET)
    section, _, name = key.partition(".")
    value = getattr(getattr(preset, section), name)
    return f"the preset's; {DEFAULT_PRESET}: {'none' if value is None else value}"


def add_setting_flags(p: argparse.ArgumentParser, keys=SETTING_FLAGS) -> None:
    preset = load_preset(DEFAULT_PRESET)
    for key in keys:
        SETTING_FLAGS[key].add_to(p, preset)


def add_config_source(p: argparse.ArgumentParser) -> None:
    """--preset or --config, then --set: what the setting flags are laid over."""
    p.add_argument(
        "--preset",
        default=None,
        metavar="NAME",
        help=f"{DEFAULT_PRESET} (the report, default), cpu-finetune, cpu, ...: see "
        "`cifar100 presets`",
    )
    p.add_argument("--config", metavar="FILE", help="a TOML config file (may `extends` a preset)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any setting, e.g. --set train.lr=3e-4 (repeatable)",
    )


def given_flags(args: argparse.Namespace) -> list[str]:
    """The setting flags given (and --preset, --config), as typed: ["--epochs", ...]."""
    names = ["preset", "config", *(f.dest for f in SETTING_FLAGS.values())]
    return ["--" + n.replace("_", "-") for n in names if getattr(args, n, None)]


def resolve_config(args: argparse.Namespace) -> Config:
    """Preset or file, then the named flags, then --set overrides."""
    if args.config and args.preset:
        raise CifarError(
            'give --preset or --config, not both (a config file can `extends = "PRESET"`)'
        )
    cfg = (
        load_config_file(args.config) if args.config else load_preset(args.preset or DEFAULT_PRESET)
    )
    given = {f.key: (f.flag, getattr(args, f.dest, None)) for f in SETTING_FLAGS.values()}
    given["train.device"] = ("--device", getattr(args, "device", None))
    for key, (flag, value) in given.items():
        if value is not None:
            set_value(cfg, key, value, origin=flag)
    return apply_overrides(cfg, args.set)
