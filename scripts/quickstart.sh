#!/usr/bin/env bash
# First run on a fresh machine: install, make a DBN sample, ingest it into the embedded
# DuckDB store (data/marketpipe.duckdb), and show what is stored.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/marketpipe make-sample --out data/sample
.venv/bin/marketpipe ingest --job sample
.venv/bin/marketpipe status
