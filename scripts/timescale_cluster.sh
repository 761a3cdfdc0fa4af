#!/usr/bin/env bash
# A throw-away PostgreSQL 15 cluster that preloads TimescaleDB, for the TimescaleDB-mode tests.
#   start DIR   initdb into DIR (trust auth, 127.0.0.1, a free port), start it, print its admin URL
#   restart DIR stop it at once (connections dropped, as a crash or failover does) and start it
#               again on the same port
#   stop DIR    stop it and remove DIR
# The machine's own cluster is left alone: there TimescaleDB is installed but not preloaded.
set -euo pipefail
BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
action=${1:?start|stop}
dir=${2:?directory}
as_postgres() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
case "$action" in
  start)
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown postgres "$dir"
    as_postgres "$BIN/initdb" -D "$dir/data" --auth=trust -U postgres --no-sync >"$dir/initdb.log" 2>&1 \
      || { cat "$dir/initdb.log" >&2; exit 1; }
    # A port just used as a client's local end can stay busy for a while: try a few.
    for _ in $(seq 1 10); do
      port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
      if as_postgres "$BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start -o \
          "-p $port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$dir -c shared_preload_libraries=timescaledb -c timescaledb.telemetry_level=off -c fsync=off -c max_connections=50" \
          >/dev/null 2>&1; then
        echo "postgresql://postgres@127.0.0.1:$port/postgres"
        exit 0
      fi
    done
    tail -n 20 "$dir/server.log" >&2
    exit 1
    ;;
  restart)
    as_postgres "$BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -m immediate -w -t 60 restart >/dev/null
    ;;
  stop)
    if [ -d "$dir/data" ]; then as_postgres "$BIN/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true; fi
    rm -rf "$dir"
    ;;
  *) echo "usage: $0 start|restart|stop DIR" >&2; exit 2 ;;
esac
