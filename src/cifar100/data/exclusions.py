"""audit.csv: the images an audit flagged, one row each, and what `train --exclude` leaves out.

    kind,split,index,path,given,suggested,score,partner,sha256
    label,train,4107,,cat,dog,0.981,,9f2c...

A user edits the file (deletes the rows they disagree with) and trains with `--exclude`: each
train row leaves out the training image whose decoded pixels have that sha256 (the one at
`index` where it still matches), so the file keeps working when the order or the subset of the
data changes, and never leaves out an image nobody audited. Test rows are reported, never
removed: the test set stays the one every result is compared on.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from cifar100.data.tensors import ImageSet
from cifar100.errors import DataError
from cifar100.fileio import write_text_atomic

# What a row says of its image (score: higher is more suspect, in [0, 1]).
KINDS = {
    "label": "confident learning doubts its given label: a wrong label, or an image the "
    "features cannot place; look before leaving it out (score: 1 - the out-of-sample "
    "probability of the given label)",
    "duplicate": "the same pixels as an earlier image of its split (partner; a test copy is "
    "reported, never left out)",
    "near_duplicate": "nearly the same image as an earlier one of its split (score: cosine)",
    "leak": "a training image whose exact copy is in the test set (partner)",
    "near_leak": "a training image nearly the same as a test image (score: cosine)",
    "outlier": "far from its nearest training images (score: the share of training images "
    "nearer to theirs)",
}
SPLITS = ("train", "test")
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Finding:
    """One flagged image: `index` into its split as loaded, `sha256` of its decoded pixels."""

    kind: str
    split: str
    index: int
    path: str
    given: str
    suggested: str
    score: float
    partner: str  # "split:index" of the image it duplicates, else ""
    sha256: str


COLUMNS = tuple(f.name for f in fields(Finding))


def image_digests(data: ImageSet) -> list[str]:
    """The sha256 of each image's decoded uint8 pixels (its identity in audit.csv)."""
    images = data.images.contiguous().numpy()
    return [hashlib.sha256(image.tobytes()).hexdigest() for image in images]


def write_findings(path: str | os.PathLike, findings: list[Finding]) -> None:
    """audit.csv, written atomically."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for f in findings:
        row = asdict(f)
        row["score"] = f"{f.score:.4f}"
        writer.writerow(row)
    write_text_atomic(path, out.getvalue())


def read_findings(path: str | os.PathLike) -> list[tuple[int, Finding]]:
    """The rows of an audit.csv with their line numbers; a malformed file is one DataError
    naming the line and what is wrong with it."""
    return _parse(Path(path), Path(path).read_bytes())


def _parse(path: Path, raw: bytes) -> list[tuple[int, Finding]]:
    try:
        text = raw.decode("utf-8-sig")  # spreadsheets add a byte-order mark
    except UnicodeDecodeError:
        raise DataError(
            f"{path}: not a UTF-8 text file; give the audit.csv `cifar100 audit` wrote"
        ) from None
    rows = csv.DictReader(io.StringIO(text, newline=""))
    missing = [c for c in ("split", "index", "sha256") if c not in (rows.fieldnames or [])]
    if missing:
        raise DataError(
            f"{path}: no {', '.join(missing)} column; give the audit.csv `cifar100 audit` wrote "
            f"(columns: {','.join(COLUMNS)})"
        )
    out = []
    try:
        for row in rows:
            out.append((rows.line_num, _finding(row, f"{path} line {rows.line_num}")))
    except csv.Error as e:
        raise DataError(f"{path} line {rows.line_num}: not valid CSV ({e})") from None
    return out


def _finding(row: dict, where: str) -> Finding:
    def text(name: str) -> str:
        value = row.get(name)
        return value.strip() if isinstance(value, str) else ""

    split, sha = text("split").lower(), text("sha256").lower()
    if split not in SPLITS:
        raise DataError(f"{where}: split {text('split')!r} is not train or test")
    if not _SHA256.fullmatch(sha):
        raise DataError(f"{where}: sha256 {text('sha256')[:80]!r} is not 64 hex digits")
    try:
        index = int(text("index"))
    except ValueError:
        raise DataError(f"{where}: index {text('index')[:40]!r} is not a whole number") from None
    try:
        score = float(text("score") or "nan")
    except ValueError:
        score = float("nan")  # a column a user may have edited; nothing depends on it
    return Finding(text("kind"), split, index, text("path"), text("given"),
                   text("suggested"), score, text("partner"), sha)  # fmt: skip


def exclude_findings(data: ImageSet, path: str | os.PathLike) -> tuple[ImageSet, dict]:
    """`data` (a training split) without the images of `path`'s train rows, and a record of
    what was left out: {file, sha256 (of the file), rows, excluded, test_rows}.

    Each row matches the image at its index when that image still has the row's digest, else
    another not yet excluded image with it (rows naming the same image, e.g. a wrong label
    that is also an outlier, leave it out once); a row that matches none is an error (an audit of
    other data, or of another image size), never silently ignored.
    """
    path = Path(path)
    raw = path.read_bytes()
    rows = _parse(path, raw)
    digests = image_digests(data)
    where: dict[str, list[int]] = {}
    for i, d in enumerate(digests):
        where.setdefault(d, []).append(i)
    drop: set[int] = set()
    train_rows = [(line, f) for line, f in rows if f.split == "train"]
    for line, f in train_rows:
        if f.index in drop and digests[f.index] == f.sha256:
            continue  # another finding of an image an earlier row left out
        candidates = [i for i in where.get(f.sha256, []) if i not in drop]
        if not candidates:
            again = "already left out by an earlier row" if f.sha256 in where else "none has it"
            raise DataError(
                f"{path} line {line}: no training image left with sha256 {f.sha256[:12]}... "
                f"({again}); was the audit made on other data or image size? audit this data "
                "again, or delete the row"
            )
        drop.add(f.index if f.index in candidates else candidates[0])
    keep = torch.tensor(sorted(set(range(len(data))) - drop), dtype=torch.long)
    left = torch.bincount(data.labels[keep], minlength=len(data.classes))
    if (left == 0).any():
        empty = data.classes[int((left == 0).nonzero()[0])]
        raise DataError(
            f"{path}: it leaves class {empty!r} with no training images; delete some of its rows"
        )
    record = {
        "file": str(path),
        "sha256": hashlib.sha256(raw).hexdigest(),
        "rows": len(rows),
        "excluded": len(drop),
        "test_rows": len(rows) - len(train_rows),
    }
    return (data.subset(keep) if drop else data), record
