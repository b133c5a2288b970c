"""Names in an image folder that start with '.': junk, left out without a word, or hidden,
left out with a warning where they hold images. Image folders (folders.py) and `predict`'s
folders (predict.py) decide alike."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from cifar100.data.folder_layout import is_image

__all__ = ["holds_images", "is_hidden", "is_junk", "warn_hidden"]

WARN_NAMES = 3  # hidden names named in the warning
# Left out without a word (compared in lower case): what file managers, version control and
# thumbnailers leave beside images, some of it images itself. Any other name starting with '.'
# is left out as hidden, with a warning where it holds images: a class folder named '.cats'
# (or '..\\x', made on Windows) is more likely a mistake than something to hide.
JUNK_NAMES = frozenset(
    "thumbs.db desktop.ini __macosx @eadir .ds_store .git .svn .hg .ipynb_checkpoints .trash "
    ".trashes .spotlight-v100 .fseventsd .temporaryitems .appledouble .directory .thumbnails "
    ".cache".split()
)


def is_junk(name: str) -> bool:
    """Whether a file or folder name is litter to leave out silently (JUNK_NAMES; macOS's
    '._name' resource forks; '.Trash-1000')."""
    low = name.lower()
    return low in JUNK_NAMES or low.startswith(("._", ".trash-"))


def is_hidden(name: str) -> bool:
    """Whether a name starting with '.' is left out as hidden (with a warning): not junk."""
    return name.startswith(".") and not is_junk(name)


def holds_images(folder: str | Path) -> bool:
    """Whether a folder holds an image file at any depth (links to folders not followed)."""
    for _, dirs, files in os.walk(folder):
        if any(is_image(f) for f in files):
            return True
        dirs[:] = [x for x in dirs if not is_junk(x)]
    return False


def warn_hidden(src: str | Path, hidden: list[str]) -> None:
    """One warning naming what was left out as hidden (a name starting with '.') though it
    held images; nothing if there is none."""
    if not hidden:
        return
    if len(hidden) == 1:
        what = f"{hidden[0]} as hidden, its name starting with '.'; rename it"
        whose = "its"
    else:
        named = ", ".join(hidden[:WARN_NAMES])
        more = f"; and {len(hidden) - WARN_NAMES} more" if len(hidden) > WARN_NAMES else ""
        what = f"{len(hidden)} names as hidden, each starting with '.' ({named}{more}); rename them"
        whose = "their"
    print(f"warning: {src}: left out {what} without the dot to use {whose} images", file=sys.stderr)
