"""What a trained model is: its settings, classes and input size (everything needed to rebuild
it), and where it came from. Checkpoints and every export carry it as the same JSON object, so
a model file explains itself."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cifar100.config import Config, ModelConfig, from_dict
from cifar100.errors import CheckpointError
from cifar100.runtime.evaluation import Evaluation
from cifar100.runtime.ood_rule import OodRule
from cifar100.runtime.run_dir import RunDir, file_evaluations

FORMAT = "cifar100-model"
VERSION = 1


@dataclass
class ModelInfo:
    """A trained classifier's settings and provenance (None where unknown)."""

    # The run's settings as run: the architecture (config.model; its `weights` say what
    # training started from: the weights come with the model, and load() rebuilds it without
    # fetching any), the data it was trained and tested on, the recipe.
    config: Config
    classes: list[str]
    image_size: int  # the side of the square uint8 images it takes
    dataset: str = "custom"
    coarse_classes: list[str] | None = None  # CIFAR-100's superclasses
    fine_to_coarse: list[int] | None = None
    run: str | None = None  # the run directory it was trained in
    epoch: int | None = None  # whole epochs trained
    steps_into_next_epoch: int | None = None  # a run stopped mid-epoch
    # As measured on the file it was read from (its own evaluation, read_measured), None where
    # that file was not measured; never stored in a file's record, which an export copies.
    test_top1: float | None = None
    test_top5: float | None = None
    saved_at: str | None = None  # when its weights were saved (ISO 8601)
    commit: str | None = None  # the cifar100 git commit that trained it
    imported_from: str | None = None  # a Keras file it was imported from
    ema_updates: int | None = None  # the checkpoint also holds an EMA of the weights, this old
    # Fitted on the validation split with these weights (runtime/trust.py): the temperature
    # that calibrates the probabilities, and the "none of these" rule (an OodRule's JSON).
    # None in models saved before they existed: probabilities uncalibrated, no verdict.
    temperature: float | None = None
    ood: dict[str, Any] | None = None

    @property
    def model(self) -> ModelConfig:
        return self.config.model

    @property
    def amp(self) -> bool:
        """bf16 autocast on CUDA, as it was trained."""
        return self.config.train.amp

    @property
    def has_ema(self) -> bool:
        return self.ema_updates is not None

    @property
    def ood_rule(self) -> OodRule | None:
        return OodRule.from_json(self.ood)

    @property
    def backbone(self) -> str:
        return self.model.backbone

    @property
    def preprocessing(self) -> str:
        """How pixels are scaled for the backbone (a models.head.Preprocess mode)."""
        # The registry (and torch) on first use: reading a model record needs neither.
        from cifar100.models.registry import get_backbone

        return self.model.preprocess or get_backbone(self.model.backbone).preprocessing

    def to_json(self) -> dict[str, Any]:
        """The record a file carries: the measured accuracy left out (None), since it is the
        file's that was measured, not a copy's (an int8 export is not its checkpoint)."""
        record = dataclasses.asdict(self) | {"test_top1": None, "test_top5": None}
        return {"format": FORMAT, "version": VERSION, **record}

    @classmethod
    def from_json(cls, raw: Any, source: str | Path) -> ModelInfo:
        """Read back what `to_json` wrote; CheckpointError naming `source` if it is not that."""
        if isinstance(raw, str | bytes):
            try:
                raw = json.loads(raw)
            except ValueError as e:
                raise CheckpointError(
                    f"{source}: its cifar100 model record is not JSON ({e})"
                ) from None
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise CheckpointError(f"{source}: no cifar100 model record in it")
        if raw.get("version", 0) > VERSION:
            raise CheckpointError(f"{source}: written by a newer cifar100; upgrade to read it")
        # A measured accuracy stored by an older version was its source's (an int8 export held
        # its checkpoint's): read_measured finds the file's own.
        fields = {f.name for f in dataclasses.fields(cls)} - {"test_top1", "test_top5"}
        values = {k: v for k, v in raw.items() if k in fields}
        try:
            config = raw["config"]
            values["config"] = from_dict(config, preset=str(config.get("preset", "custom")))
            info = cls(**values)
        except (KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(
                f"{source}: its cifar100 model record is incomplete ({e})"
            ) from None
        info.check(source)
        return info

    @classmethod
    def from_loose_keys(cls, state: dict[str, Any], path: Path) -> ModelInfo:
        """The model's facts from a checkpoint written before they were one record (versions 1
        and 2 of the checkpoint format kept them as its own keys)."""
        try:
            cfg = from_dict(state["config"], preset=state["config"].get("preset", "custom"))
            classes = list(state["classes"])
        except (KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(
                f"{path}: checkpoint lacks {e}; it was not written by cifar100 train"
            ) from e
        info = cls(
            config=cfg,
            classes=classes,
            image_size=int(state.get("image_size", 32)),
            dataset=str(state.get("dataset", "custom")),
            coarse_classes=state.get("coarse_classes"),
            fine_to_coarse=state.get("fine_to_coarse"),
            saved_at=state.get("saved_at"),
            imported_from=state.get("imported_from"),
        )
        info.check(path)
        return info

    def read_run(self, path: Path) -> None:
        """The run directory holding the checkpoint at `path` (where it is one) and its commit;
        the accuracy measured on that checkpoint (read_measured)."""
        run = RunDir(path.parent)
        if run.is_run():
            self.run = str(run)
            self.commit = (run.read_environment() or {}).get("git_commit")
        self.read_measured(path)

    def read_measured(self, path: Path) -> None:
        """test_top1 and test_top5 as measured on the model file at `path`: its own plain
        evaluation (FILE.eval.json, or the old shared name where its record names this file),
        or for a run's checkpoint the run's evaluation.json (evaluation-best.json) where it
        evaluated that checkpoint at its epoch; None where the file was not measured."""
        run = RunDir(path.parent)
        in_run = [run.evaluation, run.evaluation_variant("-best")] if run.is_run() else []
        candidates = in_run + file_evaluations(path)
        for candidate in candidates:
            evaluation = Evaluation.read_if_usable(candidate)
            if evaluation is not None and evaluation.matches(
                path, self.epoch, self.steps_into_next_epoch
            ):
                self.test_top1, self.test_top5 = evaluation.top1, evaluation.top5
                return
        self.test_top1 = self.test_top5 = None

    def check(self, source: str | Path) -> None:
        """The fields a model is rebuilt from, checked; CheckpointError naming `source`."""
        ok = (
            isinstance(self.classes, list)
            and self.classes
            and all(isinstance(c, str) for c in self.classes)
            and len(set(self.classes)) == len(self.classes)
            and isinstance(self.image_size, int)
            and 8 <= self.image_size <= 1024
        )
        if not ok:
            raise CheckpointError(
                f"{source}: its classes or image size are not usable (classes must be distinct "
                f"names, the size 8..1024 px; got {len(self.classes or [])} classes, size "
                f"{self.image_size!r})"
            )
        t = self.temperature
        if t is not None and not (
            isinstance(t, int | float) and not isinstance(t, bool) and 0 < t < float("inf")
        ):
            raise CheckpointError(
                f"{source}: its temperature {t!r} is not a positive number; evaluate the run "
                "again to fit it"
            )
