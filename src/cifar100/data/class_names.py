"""Class names from a text file, one per line in output order (`import-keras --class-names`)."""

from __future__ import annotations

from pathlib import Path

from cifar100.errors import CifarError
from cifar100.fileio import file_problem


def read_class_names(path: str) -> list[str]:
    """Class names, one per line in output order; blank lines skipped, duplicates refused."""
    if problem := file_problem(path):  # a FIFO would block, /dev/zero never end
        raise CifarError(f"{path}: {problem}; give a text file of class names, one per line")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise CifarError(f"{path}: cannot read class names ({e.strerror})") from None
    except UnicodeDecodeError:
        raise CifarError(
            f"{path}: not a UTF-8 text file; give the class names one per line"
        ) from None
    names, first_line = [], {}
    for number, line in enumerate(text.splitlines(), 1):
        name = line.strip()
        if not name:
            continue
        if name in first_line:
            raise CifarError(
                f"{path}: class name {name!r} appears twice (lines {first_line[name]} and "
                f"{number}); each output needs its own name"
            )
        first_line[name] = number
        names.append(name)
    if not names:
        raise CifarError(f"{path}: no class names in it; give one per line")
    return names
