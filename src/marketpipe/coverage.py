"""What is stored against what the exchange traded: per symbol and session, the rows stored
and the state of the chunks that cover the session's day.

Sessions come from the dataset's exchange calendar (``exchange_calendars``; the mapping from
Databento dataset to calendar is configuration, ``configs/calendars.yaml``), else every
weekday. A session is counted by its UTC day, the unit of Databento's requests and daily bars.
A day's state is the latest word of the ledger on the chunks covering it: done, failed,
pending (planned or running, not finished) or never requested. The sessions ``--fill-gaps``
fetches are the ones not done.
"""

from __future__ import annotations

import datetime as dt
import warnings
from dataclasses import dataclass, field

from marketpipe.errors import UsageError
from marketpipe.model import Family, check_schema
from marketpipe.stores.base import ExportQuery, Store
from marketpipe.symbology import EPOCH, NS_PER_DAY, day_ns, day_of, days_touched
from marketpipe.types import ChunkStatus

NEVER = "never"  # no chunk of the schema covers the day
WEEKDAYS = "weekdays"


# exchange_calendars refuses a calendar whose start is not before its end, and one whose
# range holds no session (a weekend): it is asked for a week more on each side, then cut.
_MARGIN = dt.timedelta(days=7)


def sessions(calendar: str | None, start: dt.date, end: dt.date) -> list[dt.date]:
    """Trading sessions in [start, end] by the calendar (``None``: every weekday); any range,
    one day included."""
    if calendar is None:
        days = (start + dt.timedelta(days=i) for i in range((end - start).days + 1))
        return [d for d in days if d.weekday() < 5]
    import exchange_calendars  # about half a second: only where a calendar is asked for

    with warnings.catch_warnings():  # its pandas deprecation notices are not the user's business
        warnings.simplefilter("ignore")
        try:
            exchange = exchange_calendars.get_calendar(
                calendar, start=(start - _MARGIN).isoformat(), end=(end + _MARGIN).isoformat()
            )
        except (exchange_calendars.errors.CalendarError, ValueError) as exc:
            raise UsageError(f"calendar {calendar}: {str(exc).splitlines()[0]}") from None
        return [d for d in (s.date() for s in exchange.sessions) if start <= d <= end]


@dataclass
class Coverage:
    schema: str
    dataset: str
    calendar: str
    start: dt.date
    end: dt.date
    sessions: list[dt.date]
    states: dict[dt.date, str]  # session -> done, failed, pending or never
    rows: dict[str, dict[dt.date, int]] = field(default_factory=dict)  # symbol -> session -> rows
    # symbol -> day -> rows stored on days in [start, end] that are not sessions of the
    # calendar (CME's Good Friday half-sessions, a weekend's test records): counted, shown.
    off_session: dict[str, dict[dt.date, int]] = field(default_factory=dict)
    # Asked-for symbols the store holds no instrument or row of, on any day (a typo, a symbol
    # of another dataset): never complete.
    unknown: list[str] = field(default_factory=list)
    # symbol -> done sessions on which an instrument the symbol stood for is not covered by a
    # whole input (its rows were deleted, or never requested with the symbol's other ones).
    missing: dict[str, list[dt.date]] = field(default_factory=dict)

    def gaps(self) -> list[dt.date]:
        """Sessions whose chunks are not done, or that miss a symbol's instrument: what
        ``--fill-gaps`` fetches (the plan then requests only what no whole input holds)."""
        missing = {day for days in self.missing.values() for day in days}
        return [s for s in self.sessions if self.states[s] != ChunkStatus.DONE or s in missing]

    def state(self, symbol: str, session: dt.date) -> str:
        """A session's state for one symbol: ``never`` where its instruments are missing."""
        return NEVER if session in self.missing.get(symbol, ()) else self.states[session]

    def complete(self) -> bool:
        """Every session done, every asked-for symbol known and whole."""
        return not self.gaps() and not self.unknown

    def total(self, symbol: str) -> int:
        """Rows of ``symbol`` in [start, end], sessions or not: the store's count."""
        return sum(self.rows.get(symbol, {}).values()) + sum(self.off_session.get(symbol, {}).values())

    def empty(self, symbol: str) -> list[dt.date]:
        """Sessions done with no row of ``symbol`` (nothing to fetch again: nothing was there)."""
        days = self.rows.get(symbol, {})
        return [s for s in self.sessions if self.state(symbol, s) == ChunkStatus.DONE and not days.get(s)]

    def document(self) -> dict[str, object]:
        """The report as JSON-ready values."""
        return {
            "schema": self.schema,
            "dataset": self.dataset,
            "calendar": self.calendar,
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "sessions": len(self.sessions),
            "complete": self.complete(),
            "gaps": [s.isoformat() for s in self.gaps()],
            "unknown_symbols": self.unknown,
            "states": {s.isoformat(): self.states[s] for s in self.sessions},
            "symbols": {
                symbol: {
                    "rows": self.total(symbol),
                    "sessions_with_rows": sum(1 for s in self.sessions if days.get(s)),
                    "empty": [s.isoformat() for s in self.empty(symbol)],
                    "missing": [s.isoformat() for s in self.missing.get(symbol, [])],
                    "rows_by_session": {s.isoformat(): days.get(s, 0) for s in self.sessions},
                    "rows_off_session": {
                        d.isoformat(): n for d, n in sorted(self.off_session.get(symbol, {}).items())
                    },
                }
                for symbol, days in sorted(self.rows.items())
            },
        }


def coverage(
    store: Store,
    calendars: dict[str, str],
    schema: str,
    dataset: str | None = None,
    symbols: list[str] | None = None,
    start: dt.date | None = None,
    end: dt.date | None = None,
) -> Coverage:
    """``start``/``end`` (inclusive) default to the days the schema's chunks were requested for."""
    check_schema(schema)
    ranges = store.ledger.chunk_ranges(schema)
    known = sorted({d for d, *_ in ranges if d})
    if dataset is None:
        if len(known) > 1:
            raise UsageError(f"{schema} is stored from several datasets ({', '.join(known)}): give --dataset")
        dataset = known[0] if known else ""
    ranges = [r for r in ranges if r[0] == dataset]
    if start is None or end is None:
        if not ranges:
            raise UsageError(
                f"no {schema} chunk of {dataset or 'any dataset'} in {store.location}: give the days"
            )
        start = start or day_of(min(r[1] for r in ranges))
        end = end or day_of(max(r[2] for r in ranges) - 1)
    if end < start:
        raise UsageError(f"end date {end} is before start date {start}")
    calendar = calendars.get(dataset)
    days = sessions(calendar, start, end)
    states = dict.fromkeys(days, NEVER)
    for _, first_ns, end_ns, status in ranges:  # least recently updated first: the last word holds
        state = ChunkStatus.PENDING if status is ChunkStatus.RUNNING else status
        for day in days_touched(first_ns, end_ns):
            if day in states:
                states[day] = str(state)
    report = Coverage(schema, dataset, calendar or WEEKDAYS, start, end, days, states)
    family = store.model.family_of(schema)
    window = (day_ns(start), day_ns(end) + NS_PER_DAY)
    if not symbols:
        counts = store.data.day_counts(ExportQuery(family, schema, (), *window))
    else:
        # Each asked-for symbol on its own, so a contract's raw symbol counts the rows of its
        # instruments under its own name, whatever symbol they were stored under.
        counts = []
        by_symbol = store.data.symbol_ranges(symbols)
        for symbol in symbols:
            contracts = by_symbol.get(symbol, [])
            found = [(symbol, day, n) for _, day, n in store.data.day_counts(
                ExportQuery(family, schema, [symbol], *window, contracts)
            )]  # fmt: skip
            if not contracts and not found and not _held(store, family, schema, symbol):
                report.unknown.append(symbol)
                continue
            report.rows[symbol] = {}
            counts += found
    for stored_as, day_number, count in counts:
        name = stored_as or "(no symbol)"
        day = EPOCH + dt.timedelta(days=day_number)
        per_day = (report.rows if day in states else report.off_session).setdefault(name, {})
        per_day[day] = per_day.get(day, 0) + count
        report.rows.setdefault(name, {})
    _find_missing(store, report, window)
    return report


def _find_missing(store: Store, report: Coverage, window: tuple[int, int]) -> None:
    """Per symbol, the done sessions on which one of its instruments (by the store's
    symbology) is not inside a whole input's coverage. Where the ledger records no whole
    input over the range (files without symbol mappings, a store of an earlier release) the
    chunks' states are all there is to go by."""
    covered = store.ledger.covered(report.dataset, report.schema, *window)
    if not covered:
        return
    every = sorted((s, e) for i, s, e in covered if i is None)
    spans: dict[int, list[tuple[int, int]]] = {}
    for instrument, start, end in covered:
        if instrument is not None:
            spans.setdefault(instrument, list(every)).append((start, end))
    for held in spans.values():
        held.sort()
    done = [s for s in report.sessions if report.states[s] == ChunkStatus.DONE]
    by_symbol = store.data.symbol_ranges(list(report.rows))  # one query, whatever the symbols
    for symbol in report.rows:
        instruments = by_symbol.get(symbol, [])
        missing = []
        for session in done:
            low = day_ns(session)
            high = low + NS_PER_DAY
            for instrument, start, end in instruments:
                need = (max(start, low), min(end, high))
                if need[0] < need[1] and not _inside(need, spans.get(instrument, every)):
                    missing.append(session)
                    break
        if missing:
            report.missing[symbol] = missing


def _inside(need: tuple[int, int], spans: list[tuple[int, int]]) -> bool:
    """Whether sorted ``spans`` cover [need) without a hole."""
    reached = need[0]
    for start, end in spans:
        if start > reached:
            break
        reached = max(reached, end)
        if reached >= need[1]:
            return True
    return reached >= need[1]


def _held(store: Store, family: Family, schema: str, symbol: str) -> bool:
    """Whether any row of the schema, on any day, was stored under ``symbol``."""
    return bool(store.data.day_counts(ExportQuery(family, schema, [symbol])))
