"""`cifar100 presets`: the shipped presets with their descriptions."""

from __future__ import annotations

import argparse

from cifar100.config import load_preset, preset_names

HELP = "list the shipped presets"
DESCRIPTION = "List the presets shipped with cifar100."


def add_arguments(p: argparse.ArgumentParser) -> None:
    pass  # no arguments


def run(args: argparse.Namespace) -> int:
    names = preset_names()
    width = max(map(len, names))
    for name in names:
        print(f"{name:<{width}}  {load_preset(name).description}")
    return 0
