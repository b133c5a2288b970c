"""A corruption evaluation: one model's top-1 and ECE on its test images under the common
corruptions (cifar100.corruptions), as evaluation-corruptions.json (and FILE.eval-corruptions.json
beside a model file) hold it. Its keys are read here and nowhere else.

    e = CorruptionEvaluation.read(run.corruption_evaluation)
    e.clean_top1, e.mean_top1, e.relative_top1, e.mean_ece
    e.cell("fog", 3)                      # {"top1": ..., "ece": ...}
    e.corruption_means()                  # {"gaussian_noise": 0.61, ...}
    print(e.format())                     # what `cifar100 evaluate --corruptions` prints

The file holds:

    checkpoint, runtime, dataset, epoch      which model, in which runtime, on which data
    images, test_images, seed, table         how many of the test images (a seeded,
                                             class-stratified subset where fewer), the seed of
                                             the subset and of the corruptions, the severity table
    temperature                              the model's; every ECE here is of softmax(logits / T)
    clean                                    {top1, ece} on the same images, uncorrupted
    corruptions                              {name: {family, severities: {"1": {top1, ece}, ...},
                                              mean_top1, mean_ece}}
    families                                 {family: {mean_top1, mean_ece}}: means of its
                                             corruptions' means
    mean_top1, relative_top1, mean_ece       over every corruption and severity evaluated;
                                             relative_top1 = mean_top1 / clean top-1
    seconds, threads                         the whole evaluation's wall time (model and data
                                             loading included) and its CPU threads

As Evaluation, the object is kept whole as written, and the properties give None where a file
lacks a value or holds something else there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cifar100.errors import CheckpointError
from cifar100.fileio import write_json_atomic
from cifar100.runtime.run_dir import read_json_object, read_json_or_none


def _number(value: Any) -> float | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    return value if ok else None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


@dataclass
class CorruptionEvaluation:
    """One corruption evaluation's record, with typed views of its values."""

    record: dict[str, Any] = field(default_factory=dict)
    source: Path | None = None

    @classmethod
    def of(cls, **values: Any) -> CorruptionEvaluation:
        return cls({k: v for k, v in values.items() if v is not None})

    @classmethod
    def read(cls, path: str | Path) -> CorruptionEvaluation:
        """The record at `path`; CheckpointError (one line, naming it) when it is damaged."""
        path = Path(path)
        advice = f"damaged; `cifar100 evaluate {path.parent} --corruptions` writes it again"
        evaluation = cls(read_json_object(path, "corruption evaluation", advice), path)
        if evaluation.mean_top1 is None:
            raise CheckpointError(f"{path}: {advice} (no mean_top1 in it)")
        return evaluation

    @classmethod
    def read_if_usable(cls, path: str | Path) -> CorruptionEvaluation | None:
        """The record at `path` when it can be read and holds a mean top-1, else None (for
        pages and tables it only adds to)."""
        raw = read_json_or_none(Path(path))
        found = cls(raw, Path(path)) if isinstance(raw, dict) else None
        return found if found is not None and found.mean_top1 is not None else None

    def write(self, path: str | Path) -> None:
        write_json_atomic(path, self.record)

    def to_json(self) -> dict[str, Any]:
        return self.record

    # -- values -------------------------------------------------------------------------------
    mean_top1 = property(lambda self: _number(self.record.get("mean_top1")))
    relative_top1 = property(lambda self: _number(self.record.get("relative_top1")))
    mean_ece = property(lambda self: _number(self.record.get("mean_ece")))
    clean_top1 = property(lambda self: _number(_dict(self.record.get("clean")).get("top1")))
    clean_ece = property(lambda self: _number(_dict(self.record.get("clean")).get("ece")))
    images = property(lambda self: _number(self.record.get("images")))
    seed = property(lambda self: self.record.get("seed"))
    table = property(lambda self: self.record.get("table"))
    runtime = property(lambda self: str(self.record.get("runtime", "")))
    checkpoint = property(lambda self: str(self.record.get("checkpoint", "")))

    def corruptions(self) -> list[str]:
        """The corruptions evaluated, in the file's order (by family)."""
        return list(_dict(self.record.get("corruptions")))

    def severities(self) -> list[int]:
        """The severities evaluated (those of the first corruption: all share them)."""
        first = next(iter(_dict(self.record.get("corruptions")).values()), {})
        return sorted(int(s) for s in _dict(_dict(first).get("severities")) if s.isdigit())

    def family(self, name: str) -> str:
        return str(_dict(_dict(self.record.get("corruptions")).get(name)).get("family", ""))

    def cell(self, name: str, severity: int) -> dict[str, float | None]:
        """{"top1", "ece"} of one corruption at one severity (None where absent)."""
        entry = _dict(_dict(self.record.get("corruptions")).get(name))
        value = _dict(_dict(entry.get("severities")).get(str(severity)))
        return {"top1": _number(value.get("top1")), "ece": _number(value.get("ece"))}

    def corruption_means(self, key: str = "mean_top1") -> dict[str, float | None]:
        """Each corruption's mean over its severities ("mean_top1" or "mean_ece")."""
        found = _dict(self.record.get("corruptions"))
        return {name: _number(_dict(v).get(key)) for name, v in found.items()}

    def family_means(self, key: str = "mean_top1") -> dict[str, float | None]:
        found = _dict(self.record.get("families"))
        return {name: _number(_dict(v).get(key)) for name, v in found.items()}

    def severity_means(self) -> dict[int, float | None]:
        """The mean top-1 over the corruptions at each severity."""
        names = self.corruptions()
        result: dict[int, float | None] = {}
        for s in self.severities():
            values = [self.cell(n, s)["top1"] for n in names]
            known = [v for v in values if v is not None]
            result[s] = sum(known) / len(known) if known and len(known) == len(values) else None
        return result

    # -- text -----------------------------------------------------------------------------------
    def format(self) -> str:
        """The lines `cifar100 evaluate --corruptions` prints: a row per corruption, a column per
        severity and the mean; then the means against the clean images."""
        severities = self.severities()
        names = self.corruptions()
        width = max([len(n) for n in names] + [10])
        r = self.record
        lines = [
            f"{r.get('dataset')}: {r.get('images')} of {r.get('test_images')} test images "
            f"(seed {r.get('seed')}, {r.get('table')} table), {self.checkpoint}"
            + (" in ONNX Runtime" if self.runtime == "onnx" else ""),
            "top-1".ljust(width) + "".join(f"{s:>8}" for s in severities) + f"{'mean':>8}",
        ]
        for name in names:
            cells = [self.cell(name, s)["top1"] for s in severities]
            mean = self.corruption_means()[name]
            lines.append(name.ljust(width) + "".join(_pct(v) for v in cells) + _pct(mean))
        per_severity = self.severity_means()
        lines.append("mean".ljust(width) + "".join(_pct(per_severity[s]) for s in severities)
                     + _pct(self.mean_top1))  # fmt: skip
        lines.append(
            f"clean top-1 {_pct(self.clean_top1).strip()}, corrupted mean "
            f"{_pct(self.mean_top1).strip()} ({_ratio(self.relative_top1)} of clean); ECE "
            f"{_fixed(self.clean_ece)} clean, {_fixed(self.mean_ece)} corrupted"
            + (" (calibrated)" if _number(r.get("temperature")) else "")
            + f"; {_number(r.get('seconds')) or 0:.0f} s"
        )
        return "\n".join(lines)


def _pct(value: float | None) -> str:
    return f"{value:8.2%}" if value is not None else f"{'':>8}"


def _ratio(value: float | None) -> str:
    return f"{value:.1%}" if value is not None else "?"


def _fixed(value: float | None) -> str:
    return f"{value:.4f}" if value is not None else "?"
