#!/usr/bin/env bash
# Build and install TimescaleDB from ../shared/vendor into the machine's PostgreSQL 15 when that
# version is not installed yet (no registry reachable here ships it for PostgreSQL 15). The
# installed extension files are the cache: a second run on the same machine does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=2.28.3
TARBALL=${MARKETPIPE_TIMESCALEDB_SOURCE:-../shared/vendor/timescaledb-$VERSION.tar.gz}
PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
if [ -f "$("$PG_CONFIG" --sharedir)/extension/timescaledb--$VERSION.sql" ]; then
  echo "TimescaleDB $VERSION is installed"
  exit 0
fi
if [ ! -f "$TARBALL" ]; then
  echo "TimescaleDB source $TARBALL not found: TimescaleDB-mode tests will be skipped" >&2
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "TimescaleDB $VERSION is not installed and building it needs root: TimescaleDB-mode tests will be skipped" >&2
  exit 0
fi
need=()
for pkg in postgresql-server-dev-15 libkrb5-dev cmake build-essential libssl-dev; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tar -xzf "$TARBALL" -C "$work"
src=$(find "$work" -mindepth 1 -maxdepth 1 -type d | head -n 1)
echo "building TimescaleDB $VERSION (about 5 minutes on 2 cores)"
(
  cd "$src"
  ./bootstrap -DREGRESS_CHECKS=OFF -DTAP_CHECKS=OFF -DWARNINGS_AS_ERRORS=OFF \
    -DPG_CONFIG="$PG_CONFIG" >"$work/bootstrap.log" 2>&1 || { tail -n 30 "$work/bootstrap.log"; exit 1; }
  cd build
  make -j"$(nproc)" >"$work/make.log" 2>&1 || { tail -n 30 "$work/make.log"; exit 1; }
  make install >"$work/install.log" 2>&1 || { tail -n 30 "$work/install.log"; exit 1; }
)
echo "TimescaleDB $VERSION installed"
