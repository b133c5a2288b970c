"""Checkpoints: the `Checkpoint` record (the model it is, as the same ModelInfo record the
exports carry; its weights; where training stands), and its container: plain tensors and
values only, loaded weights-only, written atomically, with a digest of their contents that is
checked on load.

    ckpt = Checkpoint.load(run.last)
    ckpt.info.classes, ckpt.epoch, ckpt.model      # the state dict
    ckpt.save(run.last, run.best)
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cifar100.digest import content_digest, tensor_bytes
from cifar100.errors import CheckpointError
from cifar100.fileio import torch_save_atomic
from cifar100.runtime.evaluation import tested_checkpoint
from cifar100.runtime.model_info import ModelInfo
from cifar100.runtime.run_dir import BEST, LAST, RunDir

FORMAT = "cifar100-checkpoint"
# 2: a sha256 of the contents ("digest"); 3: the model's facts as one ModelInfo record ("info",
# as the exports carry it) instead of loose keys. Versions 1 and 2 are still read.
VERSION = 3


@dataclass
class Checkpoint:
    """What a checkpoint holds: the model (`info`, its `model` weights) and, for a training run,
    where it stands, so that it can resume exactly."""

    info: ModelInfo
    model: dict[str, torch.Tensor]  # the state dict
    phase: str = "imported"  # "frozen", "finetune", "features" or "imported"
    epoch: int = 0  # whole epochs trained
    best_val_top1: float = -1.0
    best_epoch: int | None = None  # which epoch best.pt holds (None: written before it was kept)
    val_top1: float | None = None  # this epoch's validation top-1
    wall_s: float | None = None  # seconds the run has taken, all sessions
    optimizer: dict[str, Any] | None = None
    ema: dict[str, Any] | None = None  # {"model": state dict, "updates": n}
    position: dict[str, Any] | None = None  # mid-epoch: where the epoch stopped
    threads: int | None = None  # the CPU threads the run goes on with (a resume keeps them)

    FIELDS = ("phase", "epoch", "best_val_top1", "best_epoch", "val_top1", "wall_s",
              "optimizer", "ema", "position", "threads")  # fmt: skip

    def to_state(self) -> dict[str, Any]:
        """The container's dict: the record's values, None left out."""
        state = {"info": self.info.to_json(), "model": self.model}
        state.update((k, getattr(self, k)) for k in self.FIELDS if getattr(self, k) is not None)
        return state

    def save(self, path: str | Path, *more: str | Path) -> None:
        save_checkpoint(self.to_state(), path, *more)

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
        path = Path(path)
        return cls.from_state(load_checkpoint(path, map_location), path)

    @classmethod
    def from_state(cls, state: dict[str, Any], path: Path) -> Checkpoint:
        """The record of a loaded container (any version); CheckpointError naming `path` when
        it lacks what a model is rebuilt from."""
        if "info" in state:
            info = ModelInfo.from_json(state["info"], path)
        else:  # versions 1 and 2: the model's facts as loose keys
            info = ModelInfo.from_loose_keys(state, path)
        values = {k: state[k] for k in cls.FIELDS if state.get(k) is not None}
        ckpt = cls(info, state.get("model"), **values)
        position = ckpt.position or {}
        ema = ckpt.ema
        info.epoch, info.steps_into_next_epoch = ckpt.epoch, position.get("step")
        info.ema_updates = int(ema.get("updates", 0)) if isinstance(ema, dict) else None
        info.read_run(path)
        return ckpt

    def recorded_best_epoch(self) -> int:
        """The epoch whose weights best.pt should hold, as last.pt records it; for checkpoints
        written before it did, last.pt's own epoch when it ended as the best so far; else 0."""
        if isinstance(self.best_epoch, int):
            return self.best_epoch
        if not self.position and self.val_top1 == self.best_val_top1:
            return int(self.epoch)
        return 0


def save_checkpoint(state: dict[str, Any], path: str | Path, *more: str | Path) -> None:
    """Write `state` (tensors, numbers, strings, lists, dicts) to `path` (and each of `more`).

    A crash or a full disk never leaves half a file, and the file that was there stays intact.
    """
    state = {"format": FORMAT, "version": VERSION, **state}
    state.pop("digest", None)
    state["digest"] = content_digest(state)
    needed = tensor_bytes(state) + (1 << 20)  # the tensors plus the zip's records, about
    for target in (path, *more):
        torch_save_atomic(state, target, "checkpoint", needed)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint without running code from it (weights-only unpickling), checked
    against its digest."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    sibling = {LAST: BEST, BEST: LAST}.get(path.name)
    advice = f"; {path.with_name(sibling)} may still be intact" if sibling else ""
    _check_zip(path, advice)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except MemoryError:
        raise
    except Exception as e:  # whatever the unpickler or the zip reader trips over: a bad file
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        detail = detail.split(". ")[0][:160]  # torch's messages run on for several sentences
        raise CheckpointError(
            f"{path}: damaged or not a cifar100 checkpoint ({detail}){advice}"
        ) from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a cifar100 checkpoint (no '{FORMAT}' marker)")
    version = state.get("version", 0)
    if not isinstance(version, int) or version > VERSION:
        raise CheckpointError(
            f"{path}: checkpoint version {version} is newer than this "
            f"cifar100 reads ({VERSION}); upgrade cifar100"
        )
    if version >= 2:
        stored = state.pop("digest", None)
        try:
            actual = content_digest(state)
        except TypeError as e:  # a value no checkpoint of ours holds
            actual = str(e)
        if actual != stored:
            raise CheckpointError(
                f"{path}: damaged: its contents do not match the digest stored when it was "
                f"written (a changed byte on disk or in a copy){advice}"
            )
    return state


def _check_zip(path: Path, advice: str) -> None:
    """A whole zip (every checkpoint torch >= 1.6 writes is one) that inflates to no more than
    its size: torch stores checkpoint members uncompressed, and a compressed member would be
    inflated whole by torch.load, so a small file could take gigabytes."""
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as z:
            inflated = sum(info.file_size for info in z.infolist())
    except (zipfile.BadZipFile, ValueError, EOFError, OSError):
        what = "an empty file" if size == 0 else "not a whole PyTorch zip file"
        raise CheckpointError(
            f"{path}: damaged or not a cifar100 checkpoint ({what}){advice}"
        ) from None
    if inflated > size + (1 << 20):
        raise CheckpointError(
            f"{path}: not a cifar100 checkpoint: its members inflate to {inflated} bytes from "
            f"{size} on disk, and checkpoints are written uncompressed"
        )


def resolve_checkpoint(target: str | Path, which: str | None = None) -> Path:
    """A checkpoint file, or a run directory's `last.pt` / `best.pt` (None: the one its test
    used, evaluation.tested_checkpoint)."""
    target = Path(target)
    if target.is_dir():
        run = RunDir(target)
        which = which or tested_checkpoint(target)
        path = run.checkpoint(which)
        if not path.is_file() and which == "best" and run.last.is_file():
            raise CheckpointError(
                f"{target}: no best.pt beside last.pt: writing it failed (a full disk?) or it "
                f"was removed; `cifar100 train --resume {target}` writes it again if last.pt "
                "holds the best epoch (and says so if not), or --checkpoint last uses the "
                "last weights"
            )
        if not path.is_file():
            raise CheckpointError(
                f"{target}: no {which}.pt in this run directory "
                "(is it a cifar100 run? did its first epoch finish?)"
            )
        return path
    if not target.exists():
        raise CheckpointError(f"no such run directory or checkpoint: {target}")
    return target


def load_weights(model: nn.Module, weights: Any, source: str | Path, what: str = "weights") -> None:
    """`model.load_state_dict(weights)`, or one line naming `source` and what does not fit."""
    if not isinstance(weights, dict):
        raise CheckpointError(f"{source}: its {what} are not a state dict")
    expected = model.state_dict()
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    wrong = [
        f"{k} {tuple(weights[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in weights
        and (not isinstance(weights[k], torch.Tensor) or weights[k].shape != v.shape)
    ]
    problems = [
        f"{len(wrong)} of another shape (first: {wrong[0]}, file vs model)" if wrong else "",
        f"{len(missing)} missing (first: {missing[0]})" if missing else "",
        f"{len(unexpected)} unexpected (first: {unexpected[0]})" if unexpected else "",
    ]
    if any(problems):
        raise CheckpointError(
            f"{source}: its {what} do not fit the model its settings describe: "
            f"{'; '.join(p for p in problems if p)} ({len(expected)} tensors expected)"
        )
    model.load_state_dict(weights)
