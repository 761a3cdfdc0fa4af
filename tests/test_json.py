"""Every ``--json`` output is one JSON object of one documented shape (#24 item 6): lists of
objects, never arrays of arrays; times as ISO 8601 beside their integer nanoseconds; an error,
usage errors included, as ``{"error": {"message", "exit_code"}}`` on standard output.

The shapes are checked with JSON Schema (the ``jsonschema`` library), as a monitoring tool
reading them would.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from marketpipe.samples import make_sample
from test_quarantine import _mixed_file

ISO = {"type": "string", "pattern": r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d"}
ISO_OR_NULL = {"anyOf": [ISO, {"type": "null"}]}
INT = {"type": "integer"}
INT_OR_NULL = {"type": ["integer", "null"]}
STR = {"type": "string"}
BOOL = {"type": "boolean"}
OBJECT = {"type": "object"}


def obj(required: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": "object", "required": list(required), "properties": required, **extra}


def array(items: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": items}


RUN = obj(
    {
        "run_id": STR, "job": STR, "started_at": ISO, "finished_at": ISO_OR_NULL, "status": STR,
        "read": INT_OR_NULL, "stored": INT_OR_NULL, "quarantined": INT_OR_NULL, "failed": INT_OR_NULL,
        "seconds": {"type": ["number", "null"]},
    }
)  # fmt: skip
SHAPES: dict[str, dict[str, Any]] = {
    "ingest": obj(
        {
            "run_id": STR, "exit_code": INT,
            "totals": obj({"read": INT, "stored": INT, "quarantined": INT}),
            "schemas": {"type": "object", "additionalProperties": obj({"read": INT, "stored": INT})},
            "failed": array(obj({"input": STR, "error": STR})),
        }
    ),
    "status": obj(
        {
            "location": STR,
            "tables": array(
                obj({"table": STR, "rows": INT, "first_ns": INT_OR_NULL, "first": ISO_OR_NULL,
                     "last_ns": INT_OR_NULL, "last": ISO_OR_NULL})
            ),
            "chunks": array(obj({"job": STR, "status": STR, "chunks": INT})),
            "failed": array(obj({"job": STR, "input": STR, "error": STR})),
            "runs": array(RUN),
        }
    ),
    "runs": obj({"runs": array(RUN)}),
    "run": obj(
        {
            "run": RUN,
            "chunks": array(obj({"label": STR, "status": STR, "records_read": INT_OR_NULL,
                                 "updated_at": ISO, "error": {"type": ["string", "null"]}})),
        }
    ),
    "coverage": obj(
        {
            "schema": STR, "start": STR, "end": STR, "sessions": INT, "complete": {"type": "boolean"},
            "gaps": array(STR), "unknown_symbols": array(STR),
            "symbols": {"type": "object", "additionalProperties": obj({"rows": INT, "missing": array(STR)})},
        }
    ),
    "quarantine": obj(
        {
            "total": INT, "shown": INT,
            "records": array(
                obj({"run_id": STR, "rule": STR, "index_time_ns": INT, "index_time": ISO,
                     "quarantined_at": ISO, "record": {"type": "object"}})
            ),
        }
    ),
    "list-jobs": obj({"jobs_file": STR, "jobs": {"type": "object", "additionalProperties": OBJECT}}),
    "verify": obj({"chunks": INT, "damaged": array(obj({"chunk_id": INT, "input": STR, "reason": STR}))}),
    "delete": obj({"dry_run": BOOL, "rows": INT}),
    "forget-failures": obj({"dry_run": BOOL, "forgotten": array(obj({"input": STR})), "kept": INT}),
    "error": obj(
        {"error": obj({"message": STR, "exit_code": INT}, additionalProperties=False)},
        additionalProperties=False,
    ),
}  # fmt: skip


def _checked(cli, shape: str, *args: str, code: int = 0) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    result = cli(*args, "--json")
    assert result.exit_code == code, (args, result.output)
    document: dict[str, Any] = json.loads(result.stdout)
    jsonschema.validate(document, SHAPES[shape])
    return document


def test_every_json_output_has_its_shape(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    db = str(tmp_path / "store.duckdb")
    make_sample(tmp_path / "sample")
    _mixed_file(tmp_path / "sample" / "mixed.dbn", good=300, bad_each=3)
    (tmp_path / "sample" / "notes.dbn").write_text("not market data\n")
    ingested = _checked(cli, "ingest", "ingest", "--from-file", str(tmp_path / "sample"), "--db", db, code=1)
    assert ingested["totals"]["quarantined"] == 12 and len(ingested["failed"]) == 1
    status = _checked(cli, "status", "status", "--db", db)
    trades = next(t for t in status["tables"] if t["table"] == "trades")
    assert trades["first"].startswith("2024-01-02T14:00:00.") and trades["first"].endswith("Z")
    assert len(trades["first"]) == len("2024-01-02T14:00:00.000000000Z")  # nanoseconds kept
    runs = _checked(cli, "runs", "runs", "--db", db)["runs"]
    _checked(cli, "run", "runs", runs[0]["run_id"], "--db", db)
    _checked(cli, "coverage", "coverage", "--schema", "trades", "--db", db)
    listing = _checked(cli, "quarantine", "quarantine", "--db", db, "--limit", "5")
    assert (listing["total"], listing["shown"]) == (12, 5)
    _checked(cli, "list-jobs", "list-jobs")
    _checked(cli, "verify", "verify", "--db", db)
    _checked(cli, "delete", "delete", "--schema", "trades", "--db", db, "--dry-run")
    _checked(cli, "forget-failures", "forget-failures", "--db", db, "--dry-run")


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["status", "--no-such-flag"], 2),
        (["coverage"], 2),  # --schema missing
        (["runs", "--limit", "zero"], 2),
        (["status", "--db", "/nonexistent/store.duckdb"], 2),
        (["quarantine", "--rule", "no_such_rule"], 2),
        (["ingest", "--from-file", "README.md", "--db", "x.duckdb", "--schema", "nope"], 2),
    ],
)
def test_errors_under_json_are_json(cli, args: list[str], code: int) -> None:  # type: ignore[no-untyped-def]
    document = _checked(cli, "error", *args, code=code)
    assert document["error"]["exit_code"] == code and document["error"]["message"]


def test_unknown_log_level_is_refused(cli, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("MARKETPIPE_LOG_LEVEL", "verbose")
    result = cli("list-jobs")
    assert result.exit_code == 2 and "log_level: 'verbose' is not a level" in result.output
