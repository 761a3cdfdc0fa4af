"""Typed record contracts: one Pydantic model per DBN record layout.

A contract documents what a valid record of a layout is (every field's type and range from
databento's own layout, plus the constraints the shipped error rules check) and turns a
quarantined record into precise per-field messages ("size=0: must be greater than 0").
The vectorized rules decide; contracts only ever see the rows those rules rejected, so no
Python object is made for a good record.
"""

from __future__ import annotations

from functools import cache
from typing import Annotated, Any

import databento_dbn
import numpy as np
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    create_model,
    model_validator,
)

from marketpipe.model import LAYOUTS, Layout

UNDEF_PRICE = databento_dbn.UNDEF_PRICE
UNDEF_TIMESTAMP = databento_dbn.UNDEF_TIMESTAMP
MAX_NS = 2**63 - 1  # 2262-04-11: the last nanosecond a signed 64-bit timestamp holds


def _in_range(value: int, info: ValidationInfo) -> int:
    """The index time (ts_recv, else ts_event) is what Databento selects a request's records by."""
    context = info.context or {}
    start, end = context.get("start_ns"), context.get("end_ns")
    if (start is not None and value < start) or (end is not None and value >= end):
        raise ValueError(f"is outside the requested range [{start}, {end})")
    return value


def _defined_time(value: int) -> int:
    if value == UNDEF_TIMESTAMP:
        raise ValueError("is undefined (UNDEF_TIMESTAMP)")
    if value > MAX_NS:
        raise ValueError("is beyond 2262-04-11")
    return value


def _optional_time(value: int) -> int:
    if value != UNDEF_TIMESTAMP and value > MAX_NS:
        raise ValueError("is beyond 2262-04-11 and not UNDEF_TIMESTAMP")
    return value


def _record_type(value: int, info: ValidationInfo) -> int:
    rtypes = (info.context or {}).get("rtypes")
    if rtypes is not None and value not in rtypes:
        raise ValueError(f"is not a record type of this schema (expected one of {sorted(rtypes)})")
    return value


def _defined_price(value: int) -> int:
    if value == UNDEF_PRICE:
        raise ValueError("is undefined (UNDEF_PRICE)")
    return value


def _known(values: set[Any], what: str) -> AfterValidator:
    def check(value: Any) -> Any:
        if value not in values:
            raise ValueError(f"is not a known {what}")
        return value

    return AfterValidator(check)


def _printable(value: str) -> str:
    if not all(" " <= c <= "~" for c in value):
        raise ValueError("has characters that are not printable")
    return value


INSTRUMENT_CLASSES = {str(v.value) for v in databento_dbn.InstrumentClass.variants()}
SIDES = {str(v.value) for v in databento_dbn.Side.variants()}
ACTIONS = {str(v.value) for v in databento_dbn.Action.variants()}
STAT_TYPES = {int(v.value) for v in databento_dbn.StatType.variants()}
# Instrument classes whose prices are positive (futures spreads and options may not be).
POSITIVE_PRICE_CLASSES = {"K", "B", "X"}

DefinedTime = Annotated[int, AfterValidator(_defined_time), Field(description="ns since the epoch; set")]
OptionalTime = Annotated[int, AfterValidator(_optional_time), Field(description="ns, or UNDEF_TIMESTAMP")]
IndexTime = Annotated[DefinedTime, AfterValidator(_in_range), Field(description="set, in range")]
RecordType = Annotated[int, AfterValidator(_record_type), Field(description="the schema's rtype")]
DefinedPrice = Annotated[int, AfterValidator(_defined_price), Field(description="fixed-point 1e-9, set")]

Side = Annotated[str, _known(SIDES, "side")]
Action = Annotated[str, _known(ACTIONS, "action")]
Printable = Annotated[str, AfterValidator(_printable)]
_SIDE_AND_ACTION = {"side": Side, "action": Action}
_DEFINITION_TEXTS = (
    "group", "exchange", "asset", "cfi", "security_type", "currency", "settl_currency",
    "underlying", "leg_raw_symbol",
)  # fmt: skip

# Constraints beyond the type, per layout and field (what the shipped error rules require).
FIELD_CONSTRAINTS: dict[str, dict[str, Any]] = {
    # The index timestamp (ts_recv; ts_event for bars, which have no ts_recv) is always set.
    "*": {"ts_event": DefinedTime, "ts_recv": IndexTime, "rtype": RecordType},
    "OHLCVMsg": {"ts_event": IndexTime},
    # "Will be UNDEF_TIMESTAMP in cases where there was no last trade in the session."
    "BBOMsg": {"ts_event": OptionalTime, "side": Side},
    "CBBOMsg": {"ts_event": OptionalTime, "side": Side},
    "TradeMsg": {"size": Annotated[int, Field(gt=0)], "price": DefinedPrice, **_SIDE_AND_ACTION},
    "MBP1Msg": _SIDE_AND_ACTION,
    "MBP10Msg": _SIDE_AND_ACTION,
    "MBOMsg": _SIDE_AND_ACTION,
    "CMBP1Msg": _SIDE_AND_ACTION,
    "ImbalanceMsg": {"side": Side},
    "InstrumentDefMsg": {
        "raw_symbol": Annotated[str, Field(min_length=1), AfterValidator(_printable)],
        "instrument_class": Annotated[str, _known(INSTRUMENT_CLASSES, "instrument class")],
        **dict.fromkeys(_DEFINITION_TEXTS, Printable),
    },
    "StatMsg": {"stat_type": Annotated[int, _known(STAT_TYPES, "stat_type")]},
}


class RecordContract(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class OhlcvContract(RecordContract):
    open: int
    high: int
    low: int
    close: int

    @model_validator(mode="after")
    def _bar_is_consistent(self) -> OhlcvContract:
        if self.high < max(self.open, self.close):
            raise ValueError(f"high={self.high} is below open={self.open} or close={self.close}")
        if self.low > min(self.open, self.close):
            raise ValueError(f"low={self.low} is above open={self.open} or close={self.close}")
        return self


class DefinitionContract(RecordContract):
    instrument_class: str
    min_price_increment: int
    high_limit_price: int
    low_limit_price: int

    @model_validator(mode="after")
    def _positive_prices(self) -> DefinitionContract:
        if self.instrument_class not in POSITIVE_PRICE_CLASSES:
            return self
        for name in ("min_price_increment", "high_limit_price", "low_limit_price"):
            value = getattr(self, name)
            if value != UNDEF_PRICE and value <= 0:
                raise ValueError(
                    f"{name}={value} is not positive for instrument class {self.instrument_class}"
                )
        return self


class BookContract(RecordContract):
    """Ten levels: bids fall and asks rise from the top level down; an empty level is UNDEF."""

    @model_validator(mode="after")
    def _levels_ordered(self) -> BookContract:
        for side, better in (("bid", max), ("ask", min)):
            for level in range(1, 10):
                above = getattr(self, f"{side}_px_{level - 1:02d}")
                here = getattr(self, f"{side}_px_{level:02d}")
                if UNDEF_PRICE not in (above, here) and better(above, here) != above:
                    raise ValueError(
                        f"{side}_px_{level:02d}={here} is past {side}_px_{level - 1:02d}={above}"
                    )
        return self


_BASES: dict[str, type[RecordContract]] = {
    "OHLCVMsg": OhlcvContract,
    "InstrumentDefMsg": DefinitionContract,
    "MBP10Msg": BookContract,
}


def _field_type(layout: Layout, name: str) -> Any:
    constraints = {**FIELD_CONSTRAINTS["*"], **FIELD_CONSTRAINTS.get(layout.name, {})}
    dtype = layout.dtype[name]
    if dtype.kind == "S":
        base: Any = Annotated[str, Field(max_length=dtype.itemsize)]
    else:
        info = np.iinfo(dtype)
        base = Annotated[int, Field(ge=int(info.min), le=int(info.max))]
    return Annotated[base, *constraints[name].__metadata__] if name in constraints else base


@cache
def contract_of(layout_name: str) -> type[RecordContract]:
    """The contract of one record layout: every data field, typed and constrained."""
    layout = LAYOUTS[layout_name]
    fields: dict[str, Any] = {name: (_field_type(layout, name), ...) for name in layout.fields}
    return create_model(
        layout_name.removesuffix("Msg") + "Record", __base__=_BASES.get(layout_name, RecordContract), **fields
    )


def explain(layout_name: str, record: dict[str, Any], context: dict[str, Any]) -> list[str]:
    """Per-field messages for one record: empty when the contract holds."""
    try:
        contract_of(layout_name).model_validate(record, context=context)
    except ValidationError as exc:
        messages = []
        for error in exc.errors():
            text = str(error["msg"]).removeprefix("Value error, ")
            if error["loc"]:
                field = ".".join(str(p) for p in error["loc"])
                messages.append(f"{field}={record.get(field)!r}: {text}")
            else:
                messages.append(text)
        return messages
    return []
