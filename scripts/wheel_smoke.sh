#!/usr/bin/env bash
# What users install, used as they use it: build the sdist and (from it) the wheel, install the
# wheel with no extras into a fresh virtual environment, `pip check` it, and from an empty
# directory outside the checkout run the README's commands (DuckDB and PostgreSQL), `init`, and
# a Python script of marketpipe.ingest and marketpipe.open. Fails if any of them fails, or if a
# read-only command leaves a file in the directory it runs in.
# Needs PostgreSQL on 127.0.0.1:5432 (MARKETPIPE_TEST_PG overrides the admin URL).
set -euo pipefail
cd "$(dirname "$0")/.."
checkout=$(pwd)
PYTHON=${PYTHON:-python3}
ADMIN=${MARKETPIPE_TEST_PG:-postgresql://postgres@127.0.0.1:5432/postgres}
tmp=$(mktemp -d)
database="marketpipe_smoke_$$"
PG="${ADMIN%/*}/$database"
cleanup() {
  "$checkout/.venv/bin/python" - "$ADMIN" "$database" <<'EOF' || true
import sys, psycopg
with psycopg.connect(sys.argv[1], autocommit=True) as conn:
    conn.execute(f'DROP DATABASE IF EXISTS "{sys.argv[2]}" WITH (FORCE)')
EOF
  rm -rf "$tmp"
}
trap cleanup EXIT

step() { echo "wheel smoke: $*"; }

step "build the sdist, and the wheel from it"
.venv/bin/python -m build --outdir "$tmp/dist" . >"$tmp/build.log" 2>&1 || { cat "$tmp/build.log"; exit 1; }
wheel=$(ls "$tmp"/dist/marketpipe-*.whl)
.venv/bin/python - "$wheel" <<'EOF'
import sys, zipfile
names = set(zipfile.ZipFile(sys.argv[1]).namelist())
wanted = {"marketpipe/py.typed", "marketpipe/configs/databento.yaml", "marketpipe/configs/calendars.yaml",
          "marketpipe/configs/transformations/databento.yaml", "marketpipe/configs/validation/databento.yaml",
          "marketpipe/project/README.md", "marketpipe/project/.env.example"}
missing = wanted - names
assert not missing, f"the wheel lacks {sorted(missing)}"
EOF

step "install the wheel alone (no extras) into a fresh virtual environment"
"$PYTHON" -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install --quiet --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
"$tmp/venv/bin/python" -m pip install --quiet "$wheel" 2>&1 | grep -v "^WARNING: Location" || true
"$tmp/venv/bin/python" -m pip check

# A user's shell: no checkout on any path, no marketpipe settings, a home of its own.
work="$tmp/work"
mkdir -p "$work" "$tmp/home"
cd "$work"
for name in $(env | grep -o '^\(MARKETPIPE\|DATABENTO\)_[A-Z_]*' || true); do unset "$name"; done
export HOME="$tmp/home" XDG_STATE_HOME="$tmp/home/.local/state" PATH="$tmp/venv/bin:$PATH"
unset PYTHONPATH VIRTUAL_ENV
[ "$(command -v marketpipe)" = "$tmp/venv/bin/marketpipe" ]
python -c "import marketpipe, sys; assert '$checkout' not in marketpipe.__file__, marketpipe.__file__"

tree() { find . -mindepth 1 | sort; }
read_only() {  # the command must succeed and leave the working directory as it was
  local before after
  before=$(tree)
  "$@" >"$tmp/out.txt" 2>&1 || { cat "$tmp/out.txt"; echo "wheel smoke: failed: $*" >&2; exit 1; }
  after=$(tree)
  if [ "$before" != "$after" ]; then
    echo "wheel smoke: '$*' created files:" >&2
    diff <(echo "$before") <(echo "$after") >&2 || true
    exit 1
  fi
}

step "the README's commands against the embedded store"
read_only marketpipe --version
read_only marketpipe version
read_only marketpipe -h
read_only marketpipe list-jobs
marketpipe make-sample
marketpipe ingest --job sample
read_only marketpipe status
read_only marketpipe export --schema ohlcv-1d --out "$tmp/bars.parquet"
read_only marketpipe export --schema trades --symbols ES.FUT --start-date 2024-01-02 --end-date 2024-01-31 \
  --format csv --out "$tmp/es.csv"
# The sample's ES trades of January (22 weekdays of 20 trades) and the CSV's header.
[ -s "$tmp/bars.parquet" ] && [ "$(wc -l < "$tmp/es.csv")" -eq 441 ]
read_only marketpipe query "SELECT symbol, count(*) AS trades FROM trades GROUP BY symbol ORDER BY symbol"
read_only marketpipe coverage --schema trades --symbols ES.FUT
read_only marketpipe coverage --schema ohlcv-1d --json
read_only marketpipe status --json
read_only marketpipe runs
read_only marketpipe delete --schema trades --symbols ES.FUT --dry-run
read_only marketpipe query "SELECT * FROM trades_v" --format parquet --out "$tmp/trades_v.parquet"
read_only marketpipe query "SELECT * FROM ohlcv WHERE symbol = 'ES.FUT'" --format csv
read_only marketpipe quarantine
read_only marketpipe quarantine --rule trade_size_positive --schema trades
marketpipe ingest --from-file data/sample --db lake:data/lake
read_only marketpipe status --db lake:data/lake
read_only marketpipe export --schema trades --db lake:data/lake --out "$tmp/lake.parquet"
[ -s "$XDG_STATE_HOME/marketpipe/log/marketpipe.jsonl" ]  # the log went to the state directory

step "a bad input is one line, exit 2, and creates nothing"
before=$(tree)
set +e
marketpipe status --db missing.duckdb >"$tmp/out.txt" 2>&1
code=$?
set -e
[ "$code" = 2 ] && [ "$(wc -l <"$tmp/out.txt")" = 1 ] && grep -q '^error: ' "$tmp/out.txt"
[ "$before" = "$(tree)" ]

step "a missing extra is one line naming it"
refused() {  # exit 2, one line naming the extra, nothing created
  local extra=$1 before
  shift
  before=$(tree)
  set +e
  "$@" >"$tmp/out.txt" 2>&1
  local code=$?
  set -e
  if [ "$code" != 2 ] || [ "$(wc -l <"$tmp/out.txt")" != 1 ] || ! grep -q "marketpipe\[$extra\]" "$tmp/out.txt"; then
    cat "$tmp/out.txt"; echo "wheel smoke: '$*' did not name marketpipe[$extra] in one line (exit $code)" >&2; exit 1
  fi
  [ "$before" = "$(tree)" ]
}
refused cluster marketpipe ingest --from-file data/sample --db "$tmp/cluster.duckdb" --workers 2
refused s3 marketpipe ingest --from-file s3://bucket/day.dbn.zst
refused s3 marketpipe ingest --from-file data/sample --db lake:s3://bucket/lake --ledger ledger.duckdb
refused polars python -c "
import marketpipe, sys
try:
    marketpipe.open().to_polars('trades')
except marketpipe.UsageError as exc:
    print(exc); sys.exit(2)"

step "PostgreSQL"
python - "$ADMIN" "$database" <<'EOF'
import sys, psycopg
with psycopg.connect(sys.argv[1], autocommit=True) as conn:
    conn.execute(f'CREATE DATABASE "{sys.argv[2]}"')
EOF
marketpipe ingest --from-file data/sample --db "$PG"
read_only marketpipe status --db "$PG"
read_only marketpipe export --schema trades --db "$PG" --out "$tmp/pg.parquet"
read_only marketpipe query "SELECT count(*) AS n FROM trades" --db "$PG"
read_only marketpipe coverage --schema trades --db "$PG"

step "marketpipe init, and a command run in the project it wrote"
marketpipe init project
[ -f project/configs/databento.yaml ] && [ -f project/.env.example ] && [ -f project/README.md ]
(cd project && marketpipe list-jobs | grep -q "configs/databento.yaml")

step "the Python API"
python - "$tmp/bars.parquet" <<'EOF'
import sys
import pyarrow.parquet as pq
import marketpipe

summary = marketpipe.ingest("data/sample", db="python.duckdb")
counts = summary.schemas()
assert counts["trades"].stored > 0 and counts["ohlcv-1d"].stored > 0, counts
with marketpipe.open("python.duckdb") as db:
    bars = db.read("ohlcv-1d")
    assert bars.equals(pq.read_table(sys.argv[1])), "read back differs from the CLI's export"
    assert db.read("trades", symbols=None).num_rows == counts["trades"].stored
try:
    marketpipe.ingest(dataset="GLBX.MDP3", schemas="tradez")
except marketpipe.UsageError as exc:
    assert "unknown schema" in str(exc)
else:
    raise AssertionError("a bad schema was accepted")
print("python api: ok", {s: c.stored for s, c in counts.items()})
EOF
echo "wheel smoke: passed"
