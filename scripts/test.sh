#!/usr/bin/env bash
# Install, make sure PostgreSQL is up, build TimescaleDB if needed and start a cluster that
# preloads it, then lint, type-check and run the whole test suite (storage tests run against
# both servers: plain PostgreSQL on 127.0.0.1:5432 and TimescaleDB).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/ensure_postgres.sh
bash scripts/install_timescaledb.sh
if [ -f ../shared/vendor/timescaledb-2.28.3.tar.gz ] && [ -n "${CI:-}" ]; then
  export MARKETPIPE_REQUIRE_TIMESCALE=1  # in CI, TimescaleDB mode fails rather than skips
fi
tsdb=$(mktemp -d)
chmod 755 "$tsdb"
trap 'bash scripts/timescale_cluster.sh stop "$tsdb/cluster"; rm -rf "$tsdb"' EXIT
if url=$(bash scripts/timescale_cluster.sh start "$tsdb/cluster"); then
  export MARKETPIPE_TEST_TIMESCALE=$url
else
  echo "no TimescaleDB cluster could be started: TimescaleDB-mode tests will not run" >&2
fi
.venv/bin/ruff check src tests bench
.venv/bin/mypy
.venv/bin/python -m pytest -q "$@"
