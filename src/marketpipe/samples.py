"""DBN data made with databento-dbn: the README's demo sample and larger benchmark files.

Metadata is always encoded by databento-dbn. Small files are built from databento-dbn
record objects; benchmark-sized files fill the official DBN v3 numpy layout directly
(a Python object per record would make 20 M records take minutes).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import databento_dbn as dbn
import numpy as np
import zstandard

from marketpipe.model import LAYOUT_OF_SCHEMA
from marketpipe.symbology import NS_PER_DAY, day_ns

PRICE_SCALE = 10**9


@dataclass(frozen=True)
class Interval:
    start_date: dt.date
    end_date: dt.date
    symbol: str


@dataclass(frozen=True)
class Mapping:
    raw_symbol: str
    intervals: Sequence[Interval]


def metadata_bytes(
    dataset: str,
    schema: str,
    start_ns: int,
    end_ns: int,
    stype_in: str,
    mappings: dict[str, list[Interval]],
) -> bytes:
    """DBN v3 metadata; mappings from input symbol to instrument_id intervals."""
    meta = dbn.Metadata(
        dataset,
        start_ns,
        dbn.SType(stype_in),
        dbn.SType.INSTRUMENT_ID,
        dbn.Schema(schema),
        symbols=list(mappings),
        partial=[],
        not_found=[],
        mappings=[Mapping(k, v) for k, v in mappings.items()],
        end=end_ns,
    )
    return bytes(meta)


def write_dbn(path: Path, metadata: bytes, records: Iterable[bytes], compress: bool = False) -> Path:
    """A DBN file of ``metadata`` and encoded ``records`` (zstd when ``compress``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as raw:
        if compress:
            with zstandard.ZstdCompressor().stream_writer(raw) as out:
                out.write(metadata)
                for record in records:
                    out.write(record)
        else:
            raw.write(metadata)
            for record in records:
                raw.write(record)
    return path


def write_trades_file(path: Path, trades: np.ndarray) -> Path:
    """One day of trades as a plain DBN file, its metadata's range from the first trade on."""
    start = int(trades["ts_event"][0])
    meta = metadata_bytes("GLBX.MDP3", "trades", start, start + NS_PER_DAY, "raw_symbol", {})
    return write_dbn(path, meta, [trades.tobytes()])


def write_trade_days(directory: Path, files: int, records: int) -> list[Path]:
    """``files`` DBN files of ``records`` trades, one day each from 2024-03-04."""
    days = [dt.date(2024, 3, 4) + dt.timedelta(days=i) for i in range(files)]
    return [
        write_trades_file(directory / f"trades-{day}.dbn", synthetic_trades(records, day, seed=i))
        for i, day in enumerate(days)
    ]


def make_sample(directory: Path) -> list[Path]:
    """Daily bars and trades for CL and ES front months over 2024 Q1 (deterministic)."""
    rng = np.random.default_rng(20240101)
    start, end = dt.date(2024, 1, 2), dt.date(2024, 3, 29)
    days = [start + dt.timedelta(d) for d in range((end - start).days + 1)]
    days = [d for d in days if d.weekday() < 5]
    instruments = {"CL.FUT": (1001, 72.0), "ES.FUT": (2001, 4750.0)}
    mappings = {p: [Interval(start, end + dt.timedelta(1), str(iid))] for p, (iid, _) in instruments.items()}
    bars: list[bytes] = []
    trades: list[bytes] = []
    for _parent, (iid, price) in instruments.items():
        for day in days:
            open_ = price
            close = round(price * (1 + rng.normal(0, 0.01)), 2)
            high = round(max(open_, close) * (1 + abs(rng.normal(0, 0.004))), 2)
            low = round(min(open_, close) * (1 - abs(rng.normal(0, 0.004))), 2)
            ts = day_ns(day)
            bars.append(
                bytes(
                    dbn.OHLCVMsg(
                        int(dbn.RType.OHLCV_1D.value),
                        1,
                        iid,
                        ts,
                        int(open_ * PRICE_SCALE),
                        int(high * PRICE_SCALE),
                        int(low * PRICE_SCALE),
                        int(close * PRICE_SCALE),
                        int(rng.integers(10_000, 500_000)),
                    )
                )
            )
            for k in range(20):
                t = ts + 14 * 3600 * 10**9 + k * 997_123_457
                trades.append(
                    bytes(
                        dbn.TradeMsg(
                            1,
                            iid,
                            t,
                            int(round(open_ + (close - open_) * k / 20, 2) * PRICE_SCALE),
                            int(rng.integers(1, 50)),
                            dbn.Action.TRADE,
                            dbn.Side.BID if k % 2 else dbn.Side.ASK,
                            0,
                            t + 25_431,
                            flags=dbn.F_LAST,
                            ts_in_delta=18_000,
                            sequence=k,
                        )
                    )
                )
            price = close
    trades.sort(key=lambda r: int.from_bytes(r[48:56], "little"))  # by ts_recv
    bars.sort(key=lambda r: int.from_bytes(r[8:16], "little"))
    window = (day_ns(start), day_ns(end) + NS_PER_DAY)
    return [
        write_dbn(
            directory / "glbx-mdp3-2024q1.ohlcv-1d.dbn.zst",
            metadata_bytes("GLBX.MDP3", "ohlcv-1d", *window, "parent", mappings),
            bars,
            True,
        ),
        write_dbn(
            directory / "glbx-mdp3-2024q1.trades.dbn.zst",
            metadata_bytes("GLBX.MDP3", "trades", *window, "parent", mappings),
            trades,
            True,
        ),
    ]


def synthetic_trades(count: int, start: dt.date, instruments: int = 4, seed: int = 7) -> np.ndarray:
    """``count`` trade records in the DBN v3 layout, one day, ids 1..instruments."""
    rng = np.random.default_rng(seed)
    records = np.zeros(count, dtype=LAYOUT_OF_SCHEMA["trades"].dtype)
    ts = day_ns(start) + np.sort(rng.integers(0, NS_PER_DAY - 10**9, count, dtype=np.int64))
    records["length"] = records.dtype.itemsize // 4
    records["rtype"] = int(dbn.RType.MBP_0.value)
    records["publisher_id"] = 1
    records["instrument_id"] = rng.integers(1, instruments + 1, count)
    records["ts_event"] = ts
    records["ts_recv"] = ts + rng.integers(1_000, 100_000, count)
    records["price"] = rng.integers(4_000_000, 5_000_000, count) * 250_000_000
    records["size"] = rng.integers(1, 100, count)
    records["action"] = b"T"
    records["side"] = np.where(rng.random(count) < 0.5, b"A", b"B")
    records["flags"] = dbn.F_LAST
    records["ts_in_delta"] = rng.integers(1_000, 30_000, count)
    records["sequence"] = np.arange(count)
    return records
