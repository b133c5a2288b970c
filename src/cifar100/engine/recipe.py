"""The fine-tuning recipe fitted to the data's size (train.adapt): what changes below the
45,000 training images every preset was tuned on, and the record of it.

    recipe = adapt(cfg, train_images=4500, classes=10)   # cfg changed in place
    recipe.lines()      # what the run prints at its start
    cfg.recipe          # what config.json keeps: recipe.to_json()

The rule and the measurements behind it are in docs/results.md ("Small data"). In short, on
the real CIFAR-10 JPEGs with EfficientNet-Lite0 (cpu-finetune) from 720 to 45,000 images:
the learning rate that fine-tunes best falls with the images (as about their 0.55th power),
batch norm's statistics are best left as ImageNet's (the batch statistics of a few thousand
images undo them), and the head needs the steps it gets at the tuned size before the
backbone is unfrozen. Settings the user gave (`Config.given`) are never changed, and a run with
train.adapt=false, a features-mode run and one from scratch keep the preset as written.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from cifar100.config import Config, load_preset
from cifar100.errors import ConfigError

# The training images (after the 10% validation split) every preset was tuned on: CIFAR-10's or
# CIFAR-100's 50,000 less 5,000. At or above it the preset stands as written.
REFERENCE_IMAGES = 45_000

# The fewest training images the rule was measured at (a folder of 10 classes x 100 images,
# less its test and validation splits). Below it the frozen epochs are those of this size:
# more would only repeat a handful of images, and write a checkpoint each time.
SMALLEST_MEASURED = 720

# The rate falls as the images to this power: the least-squares slope of log(best rate / the
# rate at 45,000) on log(images / 45,000) over #23's grid with frozen batch norm, 720 to 45,000
# images (docs/results.md), anchored at the tuned rate as the rule is.
RATE_EXPONENT = 0.55

# Batch norm frozen takes a lower rate than batch statistics: at 45,000 images the grid's best
# was lr 0.006 with `frozen` against 0.02 with `batch`. A preset tuned with `batch` has its rate
# scaled by this where the rule freezes batch norm.
FROZEN_BN_RATE = 0.3

# The settings the rule may change, in the order it says them.
ADAPTED = ("train.lr", "train.finetune_bn", "train.freeze_epochs", "train.epochs",
           "train.ema_decay")  # fmt: skip


@dataclass
class Recipe:
    """What train.adapt did for one run's data: the values it changed (preset -> adapted),
    the ones it would have changed but the user set, and the data it went by."""

    train_images: int
    classes: int
    changed: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    kept: dict[str, Any] = field(default_factory=dict)  # given by the user: left as given
    reference_images: int = REFERENCE_IMAGES

    @property
    def scale(self) -> float:
        """The data's size against the tuned one, at most 1."""
        return min(1.0, self.train_images / self.reference_images)

    def to_json(self) -> dict[str, Any]:
        return {
            "rule": "train.adapt (engine/recipe.py; docs/results.md, Small data)",
            "train_images": self.train_images,
            "classes": self.classes,
            "reference_images": self.reference_images,
            "changed": {k: {"preset": a, "adapted": b} for k, (a, b) in self.changed.items()},
            "kept_as_given": self.kept,
        }

    def lines(self) -> list[str]:
        """What the run says at its start: one line for the data, one per choice."""
        head = (
            f"recipe for {self.train_images:,} training images in {self.classes} classes "
            f"(the preset was tuned on {self.reference_images:,}): "
        )
        if not self.changed and not self.kept:
            return [head + "the preset's, unchanged"]
        out = [head + "train.adapt changed " + (", ".join(self.changed) or "nothing")]
        out += [f"  {k} = {show(b)} (preset: {show(a)})" for k, (a, b) in self.changed.items()]
        out += [f"  {k} = {show(v)} (as you set it)" for k, v in self.kept.items()]
        if self.changed:
            out.append("  set any of them to keep your own, or --set train.adapt=false")
        return out


def show(value: Any) -> str:
    """A value as the recipe's lines print it."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def applies(cfg: Config) -> str | None:
    """Why the rule does not apply to `cfg`, or None where it does."""
    t, m = cfg.train, cfg.model
    if not t.adapt:
        return "train.adapt=false"
    if t.mode != "finetune":
        return "features mode trains a head on cached features; the rule is for fine-tuning"
    if m.weights == "none" and not m.init:
        return "a backbone from scratch is no transfer"
    return None


def rule(preset: Config, train_images: int, classes: int) -> dict[str, Any]:
    """The adapted values of ADAPTED for this data, from the preset's own (the module's
    docstring and docs/results.md give the measurements behind each):

    - train.lr: the preset's times (train_images / REFERENCE_IMAGES) ** RATE_EXPONENT, and
      times FROZEN_BN_RATE where the preset fine-tunes with batch statistics;
    - train.finetune_bn: frozen (ImageNet's moving statistics kept while fine-tuning);
    - train.freeze_epochs: as many as give the head the steps it gets at the tuned size
      (the preset's frozen epochs times REFERENCE_IMAGES / train_images, rounded up; below
      SMALLEST_MEASURED images, those of that size), and train.epochs with them, so the
      fine-tuning epochs stay the preset's;
    - train.ema_decay, where the preset keeps an average: its memory (1 / (1 - decay) steps)
      shrunk with the steps (as the frozen epochs, down to SMALLEST_MEASURED images), so it
      spans the same share of the fine-tuning (not measured: it
      keeps the `best` preset's own design, about half of its fine-tuning steps).

    `classes` is recorded, not used: the presets were tuned at 45,000 images with 10 and
    with 100 classes alike, and the measurements vary the images only."""
    t = preset.train
    scale = train_images / REFERENCE_IMAGES
    if scale >= 1.0:
        return {}
    passes = REFERENCE_IMAGES / max(train_images, SMALLEST_MEASURED)
    freeze = math.ceil(t.freeze_epochs * passes - 1e-9)  # 1e-9: 4,500 images give 10, not 11
    adapted = {
        "train.lr": _round(
            t.lr * (FROZEN_BN_RATE if t.finetune_bn == "batch" else 1.0) * scale**RATE_EXPONENT
        ),  # fmt: skip
        "train.finetune_bn": "frozen",
        "train.freeze_epochs": freeze,
        "train.epochs": t.epochs - t.freeze_epochs + freeze,
    }
    if t.ema_decay:
        adapted["train.ema_decay"] = 1 - _round((1 - t.ema_decay) * passes)
    return adapted


def _round(x: float) -> float:
    """Three significant digits: a rate as a person would write it."""
    return float(f"{x:.3g}")


def user_given(cfg: Config) -> set[str]:
    """The settings the user chose: given by name (flags, --set, a file, keywords) or, for a
    config built in Python, different from its preset's value."""
    given = set(cfg.given)
    try:
        base = load_preset(cfg.preset)
    except ConfigError:  # "custom", or a preset renamed since: the settings' defaults
        base = Config()
    for dotted in ADAPTED:
        if _value(cfg, dotted) != _value(base, dotted):
            given.add(dotted)
    return given


def adapt(cfg: Config, train_images: int, classes: int) -> Recipe | None:
    """Fit `cfg` to its data in place (the settings the user gave stay), recording what changed
    in cfg.recipe; None (and cfg untouched) where the rule does not apply."""
    if applies(cfg) is not None:
        return None
    given = user_given(cfg)
    recipe = Recipe(train_images, classes)
    values = rule(cfg, train_images, classes)
    if given & {"train.epochs", "train.freeze_epochs"}:  # the run's length is yours: both stay
        for dotted in ("train.epochs", "train.freeze_epochs"):
            if values.pop(dotted, None) is not None and dotted in given:
                recipe.kept[dotted] = _value(cfg, dotted)
    for dotted, value in values.items():
        section, _, name = dotted.partition(".")
        now = _value(cfg, dotted)
        if dotted in given:
            recipe.kept[dotted] = now
        elif value != now:
            setattr(getattr(cfg, section), name, value)
            recipe.changed[dotted] = (now, value)
    cfg.recipe = recipe.to_json()
    return recipe


def _value(cfg: Config, dotted: str) -> Any:
    section, _, name = dotted.partition(".")
    return getattr(getattr(cfg, section), name)
