#!/usr/bin/env bash
# Install, make sure PostgreSQL is up, build TimescaleDB if needed and start a cluster that
# preloads it, then lint, type-check and run the whole test suite (storage tests run against
# both servers: plain PostgreSQL on 127.0.0.1:5432 and TimescaleDB), then install the built
# wheel alone into a fresh virtual environment and use it as a user would (wheel_smoke.sh).
# Arguments go to pytest: `bash scripts/test.sh -m "not slow"`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/ensure_postgres.sh
bash scripts/install_timescaledb.sh
if [ -n "${CI:-}" ]; then
  export MARKETPIPE_REQUIRE_POSTGRES=1  # in CI, a server test fails rather than skips
  if [ -f ../shared/vendor/timescaledb-2.28.3.tar.gz ]; then
    export MARKETPIPE_REQUIRE_TIMESCALE=1  # and so does TimescaleDB mode
  fi
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
bash scripts/wheel_smoke.sh
