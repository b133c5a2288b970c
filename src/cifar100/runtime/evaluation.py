"""An evaluation: one model's metrics on a test split, as evaluation.json (and its variants, and
FILE.eval.json beside a model file: model.onnx.eval.json) hold them. Its keys are read here
and nowhere else.

    e = Evaluation.read(run.evaluation)
    e.top1, e.top5, e.per_class, e.ema_top1
    print(e.format())                    # what `cifar100 evaluate` prints

The JSON object is kept whole as written (`record`), so a key a later version adds survives
a read and a write; the properties give each value typed, and None where a file lacks it or
holds something else there (a hand-edited or damaged file is read as far as it makes sense).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cifar100.display_text import DISPLAY_LIMIT, display_name, display_names
from cifar100.errors import CheckpointError, CifarError
from cifar100.fileio import write_json_atomic
from cifar100.metrics import top5_applies
from cifar100.runtime.run_dir import BEST, LAST, RunDir, read_json_object, read_json_or_none


def _number(value: Any) -> float | None:
    """A JSON number (not a bool), else None."""
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    return value if ok else None


@dataclass
class Evaluation:
    """One evaluation's record, with typed views of its values."""

    record: dict[str, Any] = field(default_factory=dict)
    source: Path | None = None  # the file it was read from

    @classmethod
    def of(cls, **values: Any) -> Evaluation:
        """A new evaluation from its values, in the order the file will hold them."""
        return cls({k: v for k, v in values.items() if v is not None})

    @classmethod
    def read(cls, path: str | Path) -> Evaluation:
        """The evaluation at `path`; CheckpointError (one line, naming it) when it is not JSON or
        not an object."""
        path = Path(path)
        advice = f"damaged; `cifar100 evaluate {path.parent}` writes it again"
        return cls(read_json_object(path, "evaluation", advice), path)

    @classmethod
    def read_complete(cls, path: str | Path) -> Evaluation | None:
        """The evaluation at `path` where there is one; an error when it is damaged or holds no
        test top-1 (a page of blanks would hide that)."""
        path = Path(path)
        if not path.is_file():
            return None
        evaluation = cls.read(path)
        if evaluation.top1 is None:
            raise CheckpointError(
                f"{path}: damaged (no test top-1 in it); `cifar100 evaluate {path.parent}` "
                "writes it again"
            )
        return evaluation

    @classmethod
    def read_if_usable(cls, path: str | Path) -> Evaluation | None:
        """The evaluation at `path` when it can be read and holds a top-1, else None (for
        files that only add to a page or a table)."""
        raw = read_json_or_none(Path(path))
        evaluation = cls(raw, Path(path)) if isinstance(raw, dict) else None
        return evaluation if evaluation is not None and evaluation.top1 is not None else None

    def write(self, path: str | Path) -> None:
        write_json_atomic(path, self.record)

    def to_json(self) -> dict[str, Any]:
        return self.record

    # -- values -------------------------------------------------------------------------------
    top1 = property(lambda self: _number(self.record.get("top1")))
    loss = property(lambda self: _number(self.record.get("loss")))
    images = property(lambda self: self.record.get("images"))
    epoch = property(lambda self: _number(self.record.get("epoch")))
    macro_f1 = property(lambda self: _number(self.record.get("macro_f1")))
    superclass_top1 = property(lambda self: _number(self.record.get("superclass_top1")))
    train_wall_s = property(lambda self: _number(self.record.get("train_wall_s")))
    checkpoint = property(lambda self: str(self.record.get("checkpoint", "")))

    @property
    def top5(self) -> float | None:
        """Top-5 where it applies (metrics.top5_applies), else None: also for files written
        before that rule, which may hold a (100%) top-5 for 5 classes or fewer."""
        per_class = self.record.get("per_class")
        if isinstance(per_class, dict) and not top5_applies(len(per_class)):
            return None
        return _number(self.record.get("top5"))

    @property
    def per_class(self) -> dict[str, float] | None:
        """Each class's top-1 (numbers only), or None where the file has none."""
        values = self.record.get("per_class")
        if not isinstance(values, dict):
            return None
        return {str(k): v for k, v in values.items() if _number(v) is not None}

    @property
    def calibration(self) -> dict[str, Any] | None:
        value = self.record.get("calibration")
        return value if isinstance(value, dict) else None

    @property
    def ema(self) -> dict[str, Any]:
        """The EMA weights' loss, top-1 and top-5 where the checkpoint kept an average."""
        value = self.record.get("ema")
        return value if isinstance(value, dict) else {}

    @property
    def early_stopping(self) -> dict[str, Any] | None:
        """When and why train.early_stopping ended the run (after_epoch, of_epochs, best_epoch,
        patience, reason), where it did; the tested weights are then best_epoch's."""
        value = self.record.get("early_stopping")
        return value if isinstance(value, dict) else None

    @property
    def final(self) -> dict[str, Any] | None:
        """Which weights a training run's own test used (train.final): weights ("best" or
        "last"), epoch, of_epochs, setting, and a note where the setting could not be
        followed; None in an evaluation made otherwise."""
        value = self.record.get("final")
        return value if isinstance(value, dict) else None

    @property
    def ood(self) -> dict[str, Any] | None:
        """The "none of these" rule (threshold, acceptance, method) and the share of the test
        images it flagged (test_flagged); None for a model without one."""
        value = self.record.get("ood")
        keys = ("threshold", "acceptance", "test_flagged")
        ok = isinstance(value, dict) and all(_number(value.get(k)) is not None for k in keys)
        return value if ok else None

    @property
    def ema_top1(self) -> float | None:
        return _number(self.ema.get("top1"))

    @property
    def plain(self) -> bool:
        """The weights as saved, without TTA (not an EMA or flip-TTA evaluation)."""
        return self.record.get("weights") != "ema" and self.record.get("tta") != "flip"

    def matches(self, model_file: Path, epoch: int | None = None, steps: int | None = None) -> bool:
        """Whether this is a plain evaluation of `model_file` as it is now: the file it names
        is named like it (a run directory may have been moved) and, where both say, holds the
        same training epoch and steps (a file replaced since by later weights is not)."""
        if not self.plain or Path(self.checkpoint).name != model_file.name:
            return False
        if epoch is None or self.epoch is None:
            return True
        recorded = self.record.get("steps_into_next_epoch") or None
        return self.epoch == epoch and recorded == (steps or None)

    # -- text -----------------------------------------------------------------------------------
    def format(self) -> str:
        """The lines `cifar100 evaluate` prints."""
        m = self.record
        lines = [
            f"{m['dataset']}: {m['images']} test images, {m['checkpoint']} "
            + ("in ONNX Runtime " if m.get("runtime") == "onnx" else "")
            + f"(epoch {m['epoch']}"
            + (f" + {m['steps_into_next_epoch']} steps" if m.get("steps_into_next_epoch") else "")
            + ")",
            f"  top-1 {m['top1']:.2%}{_top5(m)}   loss {m['loss']:.4f}",
        ]
        if "macro_f1" in m:
            lines.append(
                f"  macro-F1 {m['macro_f1']:.4f}   ECE {m['calibration']['ece']:.4f} (15 bins)"
                + ("   TTA: flip" if m.get("tta") == "flip" else "")
                + ("   EMA weights" if m.get("weights") == "ema" else "")
            )
        lines += self._trust_lines()
        if "agreement" in m:
            a = m["agreement"]
            lines.append(
                f"  predictions that differ from the checkpoint's ({a['compared_with']}): "
                f"{a['differ']} of {a['images']}" + (f" ({a['why']})" if a["differ"] else "")
            )
        if "ema" in m:
            lines.append(f"  EMA weights: top-1 {m['ema']['top1']:.2%}{_top5(m['ema'])}")
        lines += self._superclass_lines() + self._class_lines()
        return "\n".join(lines)

    def _trust_lines(self) -> list[str]:
        """Calibration before and after the temperature, and the "none of these" rule."""
        lines = []
        c = self.calibration or {}
        after = c.get("calibrated")
        if isinstance(after, dict) and _number(c.get("temperature")):
            lines.append(
                f"  calibrated (temperature {c['temperature']:.3f}): ECE {c['ece']:.4f} -> "
                f"{after['ece']:.4f}   NLL {c['nll']:.4f} -> {after['nll']:.4f}   Brier "
                f"{c['brier']:.4f} -> {after['brier']:.4f}"
            )
        fitted = self.record.get("fitted_now")
        if isinstance(fitted, dict):
            lines.append(
                f"  (fitted now on {fitted.get('validation_images')} validation images and "
                f"saved into {fitted.get('saved_in')}: it was trained before models kept them)"
            )
        ood = self.ood
        if ood:
            lines.append(
                f"  none of these: {ood['test_flagged']:.1%} of the test images flagged (softmax "
                f"entropy above {ood['threshold']:.3f} nats, which accepted "
                f"{ood['acceptance']:.0%} of validation)"
            )
        return lines

    def _superclass_lines(self) -> list[str]:
        m = self.record
        if "superclass_top1" not in m:
            return []
        lines = [f"  superclass top-1 {m['superclass_top1']:.2%}"]
        lines.append("  per superclass (fine top-1 / superclass top-1):")
        for name, v in m["per_superclass"].items():
            name = display_name(name, DISPLAY_LIMIT)
            lines.append(f"    {name:<32} {v['fine_top1']:7.2%}  {v['superclass_top1']:7.2%}")
        return lines

    def _class_lines(self) -> list[str]:
        per_class = sorted(self.record["per_class"].items(), key=lambda kv: kv[1])
        if not per_class:
            return []
        # Names as shown (controls visible, long ones cut); the JSON keeps them whole.
        names = list(self.record["per_class"])
        shown = dict(zip(names, display_names(names, DISPLAY_LIMIT)))
        worst = ", ".join(f"{shown[c]} {a:.0%}" for c, a in per_class[:5])
        best = ", ".join(f"{shown[c]} {a:.0%}" for c, a in per_class[::-1][:5])
        return [f"  hardest classes: {worst}", f"  easiest classes: {best}"]


def _top5(m: dict) -> str:
    # Absent with 5 classes or fewer (metrics.top5_applies): it would always read 100%.
    return f"   top-5 {m['top5']:.2%}" if m.get("top5") is not None else ""


def tested_checkpoint(run_dir: str | Path) -> str:
    """ "best" or "last": the checkpoint of a run directory whose weights its test used
    (evaluation.json names it); for a run not tested yet, the one its train.final names
    (best.pt where the run holds out a validation split and has one). What evaluate, export,
    load and serve take from a run directory unless told."""
    run = RunDir(Path(run_dir))
    tested = Evaluation.read_if_usable(run.evaluation)
    named = Path(tested.checkpoint).name if tested is not None else ""
    if named in (LAST, BEST):  # a best.pt removed since: the last weights (--checkpoint best
        return "best" if named == BEST and run.best.is_file() else "last"  # says it is gone)
    try:
        cfg = run.read_config()
    except CifarError:
        return "last"
    wants_best = cfg.train.final == "best" and cfg.data.val_fraction > 0
    return "best" if wants_best and run.best.is_file() else "last"
