"""audit.html: one self-contained page of what an audit found, as image grids.

Each suspect shows its image, its given label, the suggested one and its score; each copy
stands beside the image it copies. The images are inline PNGs: the page opens anywhere.
"""

from __future__ import annotations

import base64
import html
import io
from collections import Counter
from collections.abc import Callable

import numpy as np
from PIL import Image

from cifar100.data.exclusions import KINDS, Finding
from cifar100.display_text import visible

SHOWN = 120  # images per section at most; audit.csv lists every finding
THUMB = 96  # pixels a thumbnail is drawn at (small images are scaled up, pixel for pixel)

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; max-width: 80em; color: #222; }
table { border-collapse: collapse; } td, th { border: 1px solid #ccc; padding: .3em .6em; }
.grid { display: flex; flex-wrap: wrap; gap: .8em; }
figure { margin: 0; width: 13em; font-size: .8em; word-break: break-word; }
figure.pair { width: 22em; } .pair img { margin-right: .3em; }
img { image-rendering: pixelated; width: 96px; height: 96px; border: 1px solid #999; }
.given { color: #a00; } .suggested { color: #060; } .muted { color: #666; }
"""


def thumbnail(image: np.ndarray) -> str:
    """A data: URI of one uint8 (H, W, 3) image as PNG."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def audit_page(
    findings: list[Finding], image: Callable[[str, int], np.ndarray], summary: dict
) -> str:
    """The page: `image(split, index)` gives a finding's pixels, `summary` the audit's facts."""
    counts = Counter(f.kind for f in findings)
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>Audit of {_e(summary['data'])}</title><style>{STYLE}</style></head><body>",
        f"<h1>Audit of {_e(summary['data'])}</h1>",
        f"<p>{_e(summary['train_images'])} training and {_e(summary['test_images'])} test "
        f"images, {_e(summary['classes'])} classes. Probabilities: {_e(summary['probabilities'])}."
        f" Features: {_e(summary['features'])}. Near copies: feature cosine &ge; "
        f"{summary['near_threshold']:.3f}. Took {summary['seconds']:.0f} s.</p>",
        "<table><tr><th>finding</th><th>images</th><th>what it means</th></tr>",
        *(
            f"<tr><td>{k}</td><td>{counts.get(k, 0)}</td><td>{_e(v)}</td></tr>"
            for k, v in KINDS.items()
        ),  # fmt: skip
        "</table><p class='muted'>Every finding is a row of audit.csv: delete the rows you "
        "disagree with, then <code>cifar100 train ... --exclude audit.csv</code> trains without "
        "the training images left in it.</p>",
    ]
    for kind in KINDS:
        chosen = sorted((f for f in findings if f.kind == kind), key=lambda f: -f.score)
        if not chosen:
            continue
        more = f" (the {SHOWN} most suspect of {len(chosen)})" if len(chosen) > SHOWN else ""
        parts.append(f"<h2 id='{kind}'>{kind}: {len(chosen)}{more}</h2><div class='grid'>")
        parts.extend(_figure(f, image) for f in chosen[:SHOWN])
        parts.append("</div>")
    if not findings:
        parts.append("<p>Nothing found.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _figure(f: Finding, image: Callable[[str, int], np.ndarray]) -> str:
    where = f"{f.split}[{f.index}]" + (f" {f.path}" if f.path else "")
    img = f"<img alt='{_e(where)}' src='{thumbnail(image(f.split, f.index))}'>"
    caption = f"<span class='given'>given: {_e(f.given)}</span>"
    if f.suggested and f.suggested != f.given:
        caption += f"<br><span class='suggested'>suggested: {_e(f.suggested)}</span>"
    caption += f"<br>score {f.score:.3f}<br><span class='muted'>{_e(where)}</span>"
    if not f.partner:
        return f"<figure>{img}<figcaption>{caption}</figcaption></figure>"
    split, _, index = f.partner.partition(":")
    other = f"<img alt='{_e(f.partner)}' src='{thumbnail(image(split, int(index)))}'>"
    caption += f"<br><span class='muted'>copy of {_e(f.partner)}</span>"
    return f"<figure class='pair'>{img}{other}<figcaption>{caption}</figcaption></figure>"


def _e(text: object) -> str:
    # names are shown, never obeyed: controls made visible, markup escaped
    return html.escape(visible(str(text)), quote=True)
