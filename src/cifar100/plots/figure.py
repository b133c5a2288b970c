"""What every figure shares: how it draws text, and writing it (PNG and SVG side by side, each
atomically).

Names in a figure (classes, phases) come from a user's files, so they are drawn as written:
`plot_names` shortens them and escapes `$`, which matplotlib would otherwise read as the start
of mathematics (`$\\undefinedcmd{x}$` failed the whole report). Figures are built and saved
under `text_settings`: a font fallback list of whatever fonts are installed, and one line, not
one warning per character, where no font has a glyph.
"""

from __future__ import annotations

import contextlib
import functools
import re
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import matplotlib
from matplotlib import font_manager
from matplotlib.figure import Figure

from cifar100.display_text import DISPLAY_LIMIT, display_names
from cifar100.fileio import atomic_path

PNG_DPI = 120
NAME_LIMIT = DISPLAY_LIMIT  # characters of a name on an axis; the data keeps the whole name

# Fonts that hold the scripts DejaVu Sans lacks (CJK above all), on Debian/Ubuntu, macOS and
# Windows; only those installed join the list (a missing one would be a warning of its own).
FALLBACK_FONTS = (
    "Noto Sans CJK JP", "Noto Sans CJK SC", "Noto Sans CJK TC", "Noto Sans CJK KR",
    "Source Han Sans", "WenQuanYi Zen Hei", "WenQuanYi Micro Hei", "Droid Sans Fallback",
    "AR PL UMing CN", "IPAGothic", "IPAexGothic", "TakaoGothic", "Noto Sans", "Noto Sans Arabic",
    "Noto Sans Hebrew", "Noto Sans Devanagari", "Noto Sans Thai", "FreeSans", "PingFang SC",
    "Hiragino Sans", "Apple SD Gothic Neo", "Microsoft YaHei", "Yu Gothic", "Malgun Gothic",
    "SimHei", "Arial Unicode MS", "Segoe UI",
)  # fmt: skip
_GLYPH = re.compile(r"Glyph (\d+) .*missing from font")
_said_missing = False  # the missing-glyph line is said once per process


def plot_names(names: Sequence[str], limit: int = NAME_LIMIT) -> list[str]:
    """Names as a figure draws them: display_text.display_names (controls shown, cut to
    `limit`, kept apart), with each `$` escaped so that none is read as mathematics."""
    return [s.replace("$", r"\$") for s in display_names(names, limit)]


def plot_text(text: str, limit: int = NAME_LIMIT) -> str:
    """One name or label from a file, as `plot_names` draws it."""
    return plot_names([text], limit)[0]


def label_inches(labels: Sequence[str], fontsize: float) -> float:
    """About how wide the longest of `labels` is drawn, in inches (0.6 em a character)."""
    return max((len(t) for t in labels), default=0) * fontsize * 0.6 / 72


def font_families(installed: set[str] | None = None) -> list[str]:
    """font.family as a fallback list: the usual family first, then each installed font of
    FALLBACK_FONTS, which matplotlib (>= 3.6) tries glyph by glyph."""
    installed = _installed_fonts() if installed is None else installed
    usual = list(matplotlib.rcParams["font.family"])
    return usual + [f for f in FALLBACK_FONTS if f in installed and f not in usual]


@functools.cache
def _installed_fonts() -> frozenset[str]:
    return frozenset(f.name for f in font_manager.fontManager.ttflist)


@contextlib.contextmanager
def text_settings() -> Iterator[None]:
    """Plain text in the fallback fonts, and at most one line for glyphs no font has. Text
    objects keep the settings they were made with, so a figure is built under these."""
    settings = {"text.usetex": False, "font.family": font_families()}
    with matplotlib.rc_context(settings), warnings.catch_warnings(record=True) as caught:
        # Every missing glyph is recorded (the default would show each once per place);
        # other warnings follow the caller's filters and are passed on below.
        warnings.filterwarnings("always", message=_GLYPH.pattern)
        yield
    missing = []
    for w in caught:
        found = _GLYPH.search(str(w.message))
        if found:
            missing.append(chr(int(found.group(1))))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
    if missing:
        _say_missing(missing)


def _say_missing(chars: list[str]) -> None:
    global _said_missing
    if _said_missing:
        return
    _said_missing = True
    unique = list(dict.fromkeys(chars))
    shown = " ".join(unique[:8]) + (f" and {len(unique) - 8} more" if len(unique) > 8 else "")
    print(
        f"warning: no installed font has {shown}: the plots show a box for each; install a font "
        "that has them (e.g. Noto Sans CJK, Debian's fonts-noto-cjk) for them to be drawn",
        file=sys.stderr,
    )


F = TypeVar("F", bound=Callable)


def plain_text(build: F) -> F:
    """Decorate a function that makes a figure: it runs under `text_settings`."""

    @functools.wraps(build)
    def wrapper(*args, **kwargs):
        with text_settings():
            return build(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


@plain_text
def save_figure(fig: Figure, path_without_suffix: str | Path) -> list[Path]:
    """Write `fig` as PNG and SVG beside each other, each atomically; return both paths."""
    base = Path(path_without_suffix)
    written = []
    for fmt in ("png", "svg"):
        # Appended, not with_suffix: a name like "top1.0" must keep its dot.
        target = base.parent / f"{base.name}.{fmt}"
        with atomic_path(target) as tmp:
            # format= explicitly: the temporary name ends in .tmp.
            fig.savefig(tmp, format=fmt, dpi=PNG_DPI, bbox_inches="tight")
        written.append(target)
    return written
