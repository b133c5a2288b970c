"""Writing a figure: PNG and SVG side by side, each atomically."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from cifar100.fileio import atomic_path

PNG_DPI = 120


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


# --- training curves --------------------------------------------------------------------------
