"""Checkpoints: plain tensors and values only, loaded weights-only, written atomically."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from cifar100.errors import CheckpointError
from cifar100.fileio import torch_save_atomic

FORMAT = "cifar100-checkpoint"
VERSION = 1


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write `state` (tensors, numbers, strings, lists, dicts); a crash never leaves half a file."""
    torch_save_atomic({"format": FORMAT, "version": VERSION, **state}, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint without running code from it (weights-only unpickling)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, zipfile.BadZipFile, EOFError, ValueError) as e:
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        detail = detail.split(". ")[0][:160]  # torch's messages run on for several sentences
        sibling = {"last.pt": "best.pt", "best.pt": "last.pt"}.get(path.name)
        advice = f"; {path.with_name(sibling)} may still be intact" if sibling else ""
        raise CheckpointError(
            f"{path}: damaged or not a cifar100 checkpoint ({detail}){advice}"
        ) from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a cifar100 checkpoint (no '{FORMAT}' marker)")
    if state.get("version", 0) > VERSION:
        raise CheckpointError(
            f"{path}: checkpoint version {state['version']} is newer than this "
            f"cifar100 reads ({VERSION}); upgrade cifar100"
        )
    return state


def resolve_checkpoint(target: str | Path, which: str = "last") -> Path:
    """A checkpoint file, or a run directory's `last.pt` / `best.pt`."""
    target = Path(target)
    if target.is_dir():
        path = target / f"{which}.pt"
        if not path.is_file():
            raise CheckpointError(
                f"{target}: no {which}.pt in this run directory "
                "(is it a cifar100 run? did its first epoch finish?)"
            )
        return path
    if not target.exists():
        raise CheckpointError(f"no such run directory or checkpoint: {target}")
    return target


def restore_model(state: dict[str, Any]):
    """Rebuild the checkpoint's model (in inference mode) and its config."""
    from cifar100.config import from_dict
    from cifar100.models.registry import build_model

    try:
        cfg = from_dict(state["config"], preset=state["config"].get("preset", "custom"))
        cfg.model.weights = "none"  # the checkpoint carries the trained weights itself
        model = build_model(cfg.model, num_classes=len(state["classes"]))
        model.load_state_dict(state["model"])
    except KeyError as e:
        raise CheckpointError(f"checkpoint lacks {e}; it was not written by cifar100 train") from e
    except RuntimeError as e:
        raise CheckpointError(
            f"checkpoint weights do not fit its model: {str(e).splitlines()[0][:200]}"
        ) from e
    model.eval()
    return model, cfg
