# Shared by the bench scripts: a throw-away PostgreSQL server from the installed binaries
# (PG_BIN, default /usr/lib/postgresql/15/bin), on a Unix socket in a temp dir, port 55499.
# `start_pg` sets pg_dir and pg_url; `stop_pg` stops it; `as_pg` runs a command as the
# postgres user when run as root.
pg_dir="" pg_url=""
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
stop_pg() { [ -n "$pg_dir" ] && as_pg "$PG_BIN/pg_ctl" -D "$pg_dir/data" -m immediate stop >/dev/null 2>&1 || true; }
start_pg() {
    PG_BIN="${PG_BIN:-/usr/lib/postgresql/15/bin}"
    pg_dir="$(mktemp -d)"
    [ "$(id -u)" -eq 0 ] && chown postgres "$pg_dir"
    as_pg "$PG_BIN/initdb" -D "$pg_dir/data" -A trust -U postgres >/dev/null
    as_pg "$PG_BIN/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/log" -w \
        -o "-p 55499 -k $pg_dir -c listen_addresses='' -c fsync=on" start >/dev/null
    pg_url="host=$pg_dir port=55499 user=postgres"
}
# psql_pg SQL: runs one statement on the server's postgres database.
psql_pg() { as_pg "$PG_BIN/psql" -q -h "$pg_dir" -p 55499 -U postgres -c "$1" >/dev/null; }
