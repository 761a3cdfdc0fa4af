"""Kinds of store, registered in one place: ``BUILT_IN`` here, and the ``marketpipe.stores``
entry points of any installed package (a store of another kind is one module and one line of
its package's metadata, ``name = module:KIND``).

Everything about a location (which kind it names, its canonical form, whether several
processes may write it, the local file it keeps) is asked of its ``StoreKind``: no other module
reads a scheme. The built-in kinds are declared here, not in their modules, so that reading a
location imports no driver: a module is imported when its store is opened
(``stores.open_store``; the three cost 0.35 s to import, DuckDB's alone 0.18 s).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path

from marketpipe.components import StoreConfig


@dataclass(frozen=True)
class StoreKind:
    """A kind of store as the core knows it before one is opened: how its locations look,
    the module that opens it, and what the cluster check and a lake's ledger need to know."""

    name: str
    # How its locations begin, each a scheme ending in ":" (``postgresql://``, ``lake:``);
    # none: a file path, the one default.
    prefixes: tuple[str, ...]
    # Imported when a store of this kind is opened: ``open_store(config, model, read_only)``,
    # and where ``holds_ledger``, ``open_ledger(config, read_only)``.
    module: str
    # Writers in several processes at once (a server orders them); None: as its ledger's kind.
    concurrent_writers: bool | None
    holds_ledger: bool  # may keep a lake's ledger (a SQL database)
    embedded: bool  # the location is a local file the store keeps (outputs must not be it)
    # The address (the location without its prefix) in canonical form; ValueError if wrong.
    normalize: Callable[[str], str]
    example: str  # as messages name such a location: "a postgresql:// URL"
    title: str  # as messages name the kind: "PostgreSQL"
    noun: str  # as messages name one store of it: "a PostgreSQL database"

    def address(self, location: str) -> str:
        """The location without its prefix (a lake's root, a file's path)."""
        for prefix in self.prefixes:
            if location.startswith(prefix):
                return location.removeprefix(prefix)
        return location

    def located(self, location: str) -> str:
        """The location in canonical form, its prefix kept."""
        address = self.address(location)
        return location[: len(location) - len(address)] + self.normalize(address)


ENTRY_POINTS = "marketpipe.stores"


def _file(location: str) -> str:
    """A file path, made absolute so that every message names the file really used."""
    if not location.strip() or location.startswith(":memory:"):
        raise ValueError(f"{location!r} keeps nothing")
    return str(Path(location).expanduser().absolute())


def _url(location: str) -> str:
    return location


def _lake(root: str) -> str:
    if not root.strip():
        raise ValueError("lake: needs a directory or a URL, e.g. lake:data/lake or lake:s3://bucket/prefix")
    return root if "://" in root else _file(root)


BUILT_IN = (
    StoreKind(
        "postgresql", ("postgresql://", "postgres://"), "marketpipe.stores.postgres",
        concurrent_writers=True, holds_ledger=True, embedded=False, normalize=_url,
        example="a postgresql:// URL", title="PostgreSQL", noun="a PostgreSQL database",
    ),
    StoreKind(
        "lake", ("lake:",), "marketpipe.stores.lake",
        concurrent_writers=None, holds_ledger=False, embedded=False, normalize=_lake,
        example="lake:DIR", title="lake", noun="a lake",
    ),
    StoreKind(
        "duckdb", (), "marketpipe.stores.duckdb",
        concurrent_writers=False, holds_ledger=True, embedded=True, normalize=_file,
        example="a DuckDB file path", title="DuckDB", noun="a DuckDB file",
    ),
)  # fmt: skip


def either(names: list[str]) -> str:
    """Alternatives as a message lists them: ``a, b or c``."""
    return " or ".join(filter(None, [", ".join(names[:-1]), *names[-1:]]))


def kinds() -> tuple[StoreKind, ...]:
    """Every kind: the built-in ones, then those installed packages register (a prefix that
    does not end in ":" is refused: a plain path must stay a file)."""
    plugins = tuple(entry.load() for entry in entry_points(group=ENTRY_POINTS))
    for kind in plugins:
        if not kind.prefixes or not all(p.endswith(":") or p.endswith("://") for p in kind.prefixes):
            raise ValueError(f"store kind {kind.name!r}: every prefix must be a scheme ending in ':'")
    return BUILT_IN + plugins


def _candidates(location: str) -> tuple[StoreKind, ...]:
    """The kinds ``location`` may be: every prefix is a scheme, ending in ":", so a plain path
    needs no look at the installed packages (reading their entry points costs 5-13 ms)."""
    return kinds() if ":" in location else BUILT_IN


def kind_of(location: str, found: Sequence[StoreKind] | None = None) -> StoreKind:
    """The kind a location names by its prefix; a location of no known scheme is a file path
    (the kind without a prefix). Raises ValueError for an unknown scheme."""
    every = _candidates(location) if found is None else found
    for kind in every:
        if kind.prefixes and location.startswith(kind.prefixes):
            return kind
    scheme, separator, _ = location.partition("://")
    if separator:
        given = either([k.example for k in every])
        raise ValueError(f"unknown scheme {scheme!r} in {location.split('@')[-1]!r}: give {given}")
    return next(k for k in every if not k.prefixes)


def normalized(location: str, ledger: bool = False) -> str:
    """``location`` in the canonical form its kind gives it (a file path made absolute);
    ``ledger``: it must be a kind that holds a lake's ledger. ValueError says what is wrong."""
    every = _candidates(location)
    kind = kind_of(location, every)
    if ledger and not kind.holds_ledger:
        wanted = either([k.example for k in every if k.holds_ledger])
        raise ValueError(f"a {kind.name} store holds no ledger: give {wanted}")
    return kind.located(location)


def many_processes(config: StoreConfig) -> bool:
    """Whether the store takes writers from several processes at once, as a cluster run needs
    (a lake: as its ledger, by default a DuckDB file under it)."""
    kind = kind_of(config.location)
    if kind.concurrent_writers is None:
        return config.ledger is not None and bool(kind_of(config.ledger).concurrent_writers)
    return kind.concurrent_writers


def embedded_file(config: StoreConfig) -> str | None:
    """The local file an embedded store keeps (a DuckDB store, a lake's DuckDB ledger), if any."""
    kind = kind_of(config.location)
    held = config.location if kind.embedded else config.ledger
    return held if held is not None and kind_of(held).embedded else None
