"""Tables that fit the terminal without cutting a value.

Rich shrinks a table wider than the terminal by cutting cells (``5,000,…``, ``0410b…``): a
count, an id or a time cut short is wrong, not short. Here a table that does not fit first
prints its shrinkable columns in their compact forms (``1.95M/s``, ``2m05s``, a time to the
second), then leaves out columns from the least needed up and says which; ``wide`` prints
every column whole however wide. Free text (a message) wraps at words. Values that still do
not fit (a terminal narrower than one id) fold onto a second line, whole.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass

from rich.cells import cell_len
from rich.console import Console
from rich.table import Table

# A cell: its text, or (whole, compact) where a shorter form says nearly as much.
Cell = str | tuple[str, str]

# Rich's default box: one border left, then per column a padding each side and a separator.
_BORDER = 1
_PER_COLUMN = 3
_WRAPPED_MIN = 16  # free text keeps at least this many columns (or its longest word)


@dataclass(frozen=True)
class Col:
    """A column: ``drop`` 0 is always shown; others are left out, highest first, when the
    table does not fit. ``wrap``: free text, which wraps at words."""

    name: str
    right: bool = False
    drop: int = 0
    wrap: bool = False


def _text(cell: Cell, compact: bool) -> str:
    if isinstance(cell, tuple):
        return cell[1] if compact else cell[0]
    return cell


# Where free text may break: after white space or a path's slash.
_PIECES = re.compile(r"[^\s/]*/|\S+|\s+")


def _width(col: Col, cells: Sequence[Cell], compact: bool, natural: bool = False) -> int:
    """The columns ``col`` needs: its longest value, or for free text its longest piece
    (at least ``_WRAPPED_MIN``); ``natural``: its longest value either way."""
    texts = [col.name] + [_text(c, compact) for c in cells]
    longest = max(cell_len(t) for t in texts)
    if not col.wrap or natural:
        return longest
    piece = max((cell_len(w.strip()) for t in texts for w in _PIECES.findall(t)), default=0)
    return min(longest, max(piece, _WRAPPED_MIN))


def _reflow(text: str, width: int) -> str:
    """``text`` in lines of at most ``width``, broken after white space or a slash (a path
    breaks between its directories); a piece longer than a line is folded."""
    lines = [""]
    for piece in _PIECES.findall(text):
        if lines[-1] and cell_len(lines[-1] + piece.rstrip()) > width:
            lines.append("")
            piece = piece.lstrip()
        lines[-1] += piece
        while cell_len(lines[-1]) > width:
            lines[-1], rest = lines[-1][:width], lines[-1][width:]
            lines.append(rest)
    return "\n".join(line.rstrip() for line in lines)


def need(
    cols: Sequence[Col],
    rows: Sequence[Sequence[Cell]],
    shown: Sequence[int] | None = None,
    compact: bool = False,
) -> int:
    """The terminal columns the table takes with the columns ``shown`` (None: every one)."""
    indexes = range(len(cols)) if shown is None else shown
    return _BORDER + sum(_width(cols[i], [row[i] for row in rows], compact) + _PER_COLUMN for i in indexes)


def fit(
    cols: Sequence[Col], rows: Sequence[Sequence[Cell]], width: int, wide: bool
) -> tuple[list[int], bool]:
    """The indexes of the columns shown and whether compact forms are used, for ``width``."""
    shown = list(range(len(cols)))
    if wide or need(cols, rows) <= width:
        return shown, False
    droppable = sorted((i for i in shown if cols[i].drop), key=lambda i: (-cols[i].drop, -i))
    while need(cols, rows, shown, compact=True) > width and droppable:
        shown.remove(droppable.pop(0))
    return shown, True


def print_table(
    console: Console,
    cols: Sequence[Col],
    rows: Sequence[Sequence[Cell]],
    *,
    title: str | None = None,
    wide: bool = False,
) -> None:
    """Print ``rows`` under ``cols``, every value whole (see the module's docstring)."""
    shown, compact = fit(cols, rows, console.width, wide)
    widths = {i: _width(cols[i], [row[i] for row in rows], compact) for i in shown}
    room = console.width - need(cols, rows, shown, compact)
    for i in shown:  # free text takes the room left, up to its longest value
        if cols[i].wrap and not wide:
            grown = min(_width(cols[i], [row[i] for row in rows], compact, natural=True), widths[i] + room)
            room -= grown - widths[i]
            widths[i] = grown
    table = Table(title=title)
    for i in shown:
        col = cols[i]
        table.add_column(
            col.name,
            justify="right" if col.right else "left",
            no_wrap=not col.wrap,
            overflow="fold",
            min_width=widths[i],
            max_width=widths[i] if col.wrap and not wide else None,
        )
    for row in rows:
        cells = [_text(row[i], compact) for i in shown]
        table.add_row(
            *(
                _reflow(cell, widths[i]) if cols[i].wrap and not wide else cell
                for i, cell in zip(shown, cells, strict=True)
            )
        )
    if wide:
        console.print(table, width=max(need(cols, rows), console.width), crop=False)
    else:
        console.print(table)
    left_out = [cols[i].name for i in range(len(cols)) if i not in shown]
    if left_out:
        console.print(
            f"not shown at {console.width} columns: {', '.join(left_out)} (--wide shows every column)",
            markup=False,
            highlight=False,
        )


def count(n: int) -> Cell:
    """A count whole (``5,000,000``), compact ``5.00M`` from a million up."""
    whole = f"{n:,}"
    for scale, suffix in ((10**9, "G"), (10**6, "M")):
        if abs(n) >= scale:
            return whole, f"{n / scale:.2f}{suffix}"
    return whole


def seconds(value: float | None) -> Cell:
    """Seconds to two places, compact as ``2m05s`` or ``1h02m`` from a minute up."""
    if value is None:
        return ""
    whole = f"{value:,.2f}"
    if value < 60:
        return whole
    total = round(value)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return whole, f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def ns_time(ns: int | None) -> Cell:
    """UTC ISO 8601 with all nine fractional digits (datetime stops at microseconds);
    compact to the second. Out of range: the integer."""
    if ns is None:
        return ""
    if not 0 <= ns < 2**63:
        return str(ns)
    secs, fraction = divmod(ns, 10**9)
    stamp = dt.datetime.fromtimestamp(secs, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{fraction:09d}Z", f"{stamp}Z"


def iso_ns(ns: int | None) -> str | None:
    """The whole ISO 8601 form of ``ns`` (JSON documents carry it beside the integer)."""
    text = ns_time(ns)
    return (text[0] if isinstance(text, tuple) else text) or None
