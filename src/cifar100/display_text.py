"""Names as a person is shown them: class names, file names and run names in plots, the report,
terminal output and the serve page.

    display_name("abc\u202edcba.exe")        # 'abc\\u202edcba.exe': the override shown, not obeyed
    display_names(names, limit=40)           # each cut to 40 characters, still told apart

The stored data (checkpoints, evaluation.json, predictions.npz, exports) keeps every name
exactly; only what is displayed goes through here. Nothing is dropped silently: a character
that would reorder or break the text around it is shown as an escape, and a name cut short
shows an ellipsis. serve/page.html's shownName() applies the same rule in the browser.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

# The Unicode bidirectional formatting characters: embeddings and overrides (U+202A-U+202E),
# isolates (U+2066-U+2069) and the marks (U+200E, U+200F, U+061C). Each changes the order in
# which the text after it is displayed: "abc\u202edcba.exe" reads as "abcexe.abcd".
BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)
ELLIPSIS = "\u2026"
DISPLAY_LIMIT = 40  # characters of a name in a table, a list or on a plot's axis
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _hidden(c: str) -> bool:
    # Control characters (C0, DEL, C1: a terminal obeys ESC sequences) and the line and
    # paragraph separators break a line where none should be; bidi controls reorder it; a
    # lone surrogate (a file name's undecodable byte) cannot even be printed.
    return c in BIDI_CONTROLS or unicodedata.category(c) in ("Cc", "Zl", "Zp", "Cs")


def visible(text: str) -> str:
    """`text` with its control, line-separator, bidi and lone surrogate characters shown as
    escapes (`\\n`, `\\x1b`, `\\u202e`, `\\udcff`); every other character, any script, as it is."""
    if not any(_hidden(c) for c in text):
        return text
    return "".join(_escape(c) if _hidden(c) else c for c in text)


def _escape(c: str) -> str:
    if c in _NAMED:
        return _NAMED[c]
    return f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"


def display_name(name: str, limit: int | None = None) -> str:
    """One name as shown: `visible`, and cut to `limit` characters with an ellipsis (its start
    and its end kept) when longer. For several names that must stay apart, `display_names`."""
    return display_names([name], limit)[0]


def display_names(names: Sequence[str], limit: int | None = None) -> list[str]:
    """Each name `visible` and at most `limit` characters long, names that differ shown
    differently: a cut keeps the start, the end, and where a name differs from its closest
    neighbour when that lies in between."""
    shown = [visible(str(n)) for n in names]
    if limit is None:
        return shown
    limit = max(limit, 8)  # room for a start, an ellipsis and an end
    differs = _first_differences(shown)
    cut = [_shorten(s, limit, differs[s]) for s in shown]
    return _keep_apart(shown, cut, limit)


def _first_differences(shown: list[str]) -> dict[str, int]:
    """For each distinct name, the length of the longest start it shares with another."""
    ordered = sorted(set(shown))
    common = [_common_prefix(a, b) for a, b in zip(ordered, ordered[1:])]
    return {
        s: max(common[i - 1] if i else 0, common[i] if i < len(common) else 0)
        for i, s in enumerate(ordered)
    }


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _shorten(s: str, limit: int, differs_at: int) -> str:
    if len(s) <= limit:
        return s
    tail = limit // 3
    head = limit - tail - 1
    if differs_at < head or differs_at >= len(s) - tail:
        return s[:head] + ELLIPSIS + s[-tail:]
    # The difference lies in the part a plain cut drops: show a window around it.
    start_len = limit // 4
    window = limit - start_len - 2
    begin = min(max(differs_at - window // 2, start_len), len(s) - window)
    end = ELLIPSIS if begin + window < len(s) else ""
    return s[:start_len] + ELLIPSIS + s[begin : begin + window] + end


def _keep_apart(shown: list[str], cut: list[str], limit: int) -> list[str]:
    """Number the cut names that still coincide (rare: names alike at both ends and around
    their first difference), so that no two classes read the same."""
    owners: dict[str, set[str]] = {}
    for s, c in zip(shown, cut):
        owners.setdefault(c, set()).add(s)
    taken, numbered, k = set(cut), {}, 0
    for s, c in zip(shown, cut):
        if len(owners[c]) > 1 and s not in numbered:
            while True:
                k += 1
                candidate = c[: limit - len(f" #{k}")] + f" #{k}"
                if candidate not in taken:
                    break
            numbered[s] = candidate
            taken.add(candidate)
    return [numbered.get(s, c) for s, c in zip(shown, cut)]
