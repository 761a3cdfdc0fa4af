"""The transformation rule engine: Databento records -> standardized tables, from YAML.

The file (``configs/transformations/databento.yaml``) is read once and checked against the
record layouts before any data is read: every schema in exactly one table, every field
stored or dropped, every operation known and applied to a field of a type it accepts. It
compiles to ``Family`` objects whose columns each carry one whole-column operation
(``marketpipe.transform``); nothing runs per record.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from marketpipe.config import TRANSFORMATION_FILE, SafeLoader, config_file, first_error, read_yaml
from marketpipe.errors import ConfigError
from marketpipe.model import (
    LAYOUT_OF_SCHEMA,
    PRICE_TYPE,
    SCHEMAS,
    TIMESTAMP_TYPE,
    Column,
    Family,
    Kind,
    Layout,
    Model,
)
from marketpipe.symbology import NS_PER_DAY

_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
# Columns the stores add to every table; a transformation must not declare them.
_RESERVED = {"chunk_id"}
# Columns the stores index by, and the operation each must have (plus the time column).
_REQUIRED = {"instrument_id": Kind.INTEGER}
_WITHOUT_SOURCE = {Kind.SYMBOL, Kind.SCHEMA, Kind.CONSTANT, Kind.TS_OUT}
_INTERVAL = re.compile(r"([1-9][0-9]*)([hd])")
_NS_PER_UNIT = {"h": NS_PER_DAY // 24, "d": NS_PER_DAY}


class ColumnSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    op: str
    source: str | None = Field(None, alias="from")
    null_if: str | None = None
    values: dict[str | int, str] | None = None
    value: str | None = None


class TableSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schemas: list[str] = Field(min_length=1)
    time_column: str
    chunk_interval: str = "1d"
    drop: list[str] = []
    columns: dict[str, str | ColumnSpec] = Field(min_length=1)


class TransformationFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tables: dict[str, TableSpec]


class _UniqueKeyLoader(SafeLoader):
    """PyYAML keeps the last of two equal keys; a column declared twice is a mistake."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"{key!r} is declared twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_model(path: Path | None = None) -> Model:
    """The model of a transformation file (None: the packaged default)."""
    return Model(load_transformations(config_file(path, TRANSFORMATION_FILE)))


def load_transformations(path: Path) -> dict[str, Family]:
    """Every table of the file, compiled; ConfigError naming file, table and column otherwise."""
    document = read_yaml(path, "transformation rules", _UniqueKeyLoader)
    try:
        spec = TransformationFile.model_validate(document)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {first_error(exc)}") from None
    families = {}
    owner: dict[str, str] = {}
    for table, table_spec in spec.tables.items():
        family = _compile_table(path, table, table_spec)
        for schema in family.schemas:
            if schema in owner:
                raise ConfigError(
                    f"{path}: table {table}: schema {schema} is already in table {owner[schema]}"
                )
            owner[schema] = table
        families[table] = family
    missing = [s for s in SCHEMAS if s not in owner]
    if missing:
        raise ConfigError(f"{path}: missing schema {missing[0]}: every Databento schema needs a table")
    return families


def _compile_table(path: Path, table: str, spec: TableSpec) -> Family:
    where = f"{path}: table {table}"
    if not _NAME.fullmatch(table):
        raise ConfigError(f"{where}: a table name is lower-case letters, digits and _ (at most 63)")
    unknown = [s for s in spec.schemas if s not in LAYOUT_OF_SCHEMA]
    if unknown:
        raise ConfigError(f"{where}: unknown schema {unknown[0]!r}; known schemas: {', '.join(SCHEMAS)}")
    layouts = {LAYOUT_OF_SCHEMA[s].name for s in spec.schemas}
    if len(layouts) > 1:
        raise ConfigError(f"{where}: schemas {', '.join(spec.schemas)} have different record layouts")
    layout = LAYOUT_OF_SCHEMA[spec.schemas[0]]
    where = f"{where} ({', '.join(spec.schemas)})"
    columns = tuple(
        _compile_column(f"{where}: column {name}", name, rule, layout) for name, rule in spec.columns.items()
    )
    for name, kind in _REQUIRED.items():
        if not any(c.name == name and c.kind is kind for c in columns):
            raise ConfigError(f"{where}: needs a column {name} ({kind.value}): the stores index by it")
    if not any(c.name == spec.time_column and c.kind is Kind.TIMESTAMP for c in columns):
        raise ConfigError(
            f"{where}: time_column {spec.time_column!r} is not a nanoseconds column of the table"
        )
    interval = _INTERVAL.fullmatch(spec.chunk_interval)
    if interval is None:
        raise ConfigError(f"{where}: chunk_interval {spec.chunk_interval!r} is not like 6h or 7d")
    for name in spec.drop:
        if name not in layout.fields:
            raise ConfigError(f"{where}: drop: unknown field {name!r} of {layout.name}")
    used = {c.source for c in columns} | set(spec.drop)
    forgotten = [n for n in layout.fields if n not in used]
    if forgotten:
        raise ConfigError(
            f"{where}: field {forgotten[0]} is neither stored nor dropped (add it to columns or drop)"
        )
    interval_ns = int(interval[1]) * _NS_PER_UNIT[interval[2]]
    return Family(table, tuple(sorted(spec.schemas)), columns, layout.dtype, spec.time_column, interval_ns)


def _compile_column(where: str, name: str, rule: str | ColumnSpec, layout: Layout) -> Column:
    spec = ColumnSpec.model_validate({"op": rule}) if isinstance(rule, str) else rule
    if not _NAME.fullmatch(name) or name in _RESERVED:
        raise ConfigError(f"{where}: not a usable column name (lower-case letters, digits, _; not chunk_id)")
    try:
        kind = Kind(spec.op)
    except ValueError:
        raise ConfigError(f"{where}: unknown operation {spec.op!r}; known: {', '.join(Kind)}") from None
    _check_options(where, kind, spec)
    if kind in _WITHOUT_SOURCE:
        if spec.source is not None:
            raise ConfigError(f"{where}: {kind.value} takes no 'from' field")
        if kind is Kind.TS_OUT:
            return Column(name, kind, TIMESTAMP_TYPE, 2**64 - 1)
        return Column(name, kind, pa.string(), value=spec.value)
    source = spec.source or name
    if source not in layout.fields:
        raise ConfigError(
            f"{where}: unknown field {source!r} of {layout.name}; fields: {', '.join(layout.fields)}"
        )
    dtype = layout.dtype[source]
    return _typed_column(where, name, kind, spec, source, dtype)


def _check_options(where: str, kind: Kind, spec: ColumnSpec) -> None:
    allowed = {Kind.INTEGER: "null_if", Kind.ENUM: "values", Kind.CONSTANT: "value"}
    for option in ("null_if", "values", "value"):
        given = getattr(spec, option) is not None
        if given and allowed.get(kind) != option:
            raise ConfigError(f"{where}: {kind.value} takes no {option!r}")
        if not given and allowed.get(kind) == option and kind is not Kind.INTEGER:
            raise ConfigError(f"{where}: {kind.value} needs {option!r}")
    if spec.null_if not in (None, "max"):
        raise ConfigError(f"{where}: null_if can only be 'max' (DBN's 'not set' value)")


def _typed_column(
    where: str, name: str, kind: Kind, spec: ColumnSpec, source: str, dtype: np.dtype
) -> Column:
    def mismatch(expected: str) -> ConfigError:
        return ConfigError(f"{where}: {kind.value} needs {expected}, but {source} is {dtype}")

    if kind is Kind.PRICE:
        if dtype != np.int64:
            raise mismatch("an int64 fixed-point field")
        return Column(name, kind, PRICE_TYPE, 2**63 - 1, source)
    if kind is Kind.TIMESTAMP:
        if dtype != np.uint64:
            raise mismatch("a uint64 nanosecond field")
        return Column(name, kind, TIMESTAMP_TYPE, 2**64 - 1, source)
    if kind is Kind.TEXT:
        if dtype.kind != "S":
            raise mismatch("a character field")
        return Column(name, kind, pa.string(), source=source)
    if kind is Kind.INTEGER:
        if dtype.kind not in "iu":
            raise mismatch("an integer field")
        sentinel = int(np.iinfo(dtype).max) if spec.null_if else None
        return Column(name, kind, pa.from_numpy_dtype(dtype), sentinel, source)
    # enum
    if dtype.kind not in "iuS":
        raise mismatch("a character or integer field")
    labels = tuple((spec.values or {}).items())
    wanted = str if dtype.kind == "S" else int
    wrong = [k for k, _ in labels if not isinstance(k, wanted)]
    if wrong:
        raise ConfigError(
            f"{where}: enum value {wrong[0]!r} is not a {wanted.__name__} like {source} ({dtype})"
        )
    return Column(name, kind, pa.string(), source=source, labels=labels)
