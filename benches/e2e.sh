#!/usr/bin/env bash
# End-to-end benchmark of `ttpflow run`: a generated fleet through the whole job, whole
# process, startup included. Prints, per configuration, events/s and wall time (median of
# the runs), peak RSS (the largest of the runs) and the CPU time per stage of the median run.
#
#   benches/e2e.sh [--events N] [--attackers A] [--runs R] [--workers "1 2"] [--postgres] [--dev]
#
# --postgres  also runs with a PostgreSQL sink: a throw-away server from the installed
#             binaries (PG_BIN, default /usr/lib/postgresql/15/bin), a fresh database per run.
# --dev       also runs DECNET's dev corpus (TTPFLOW_CONFORMANCE_DIR, default
#             ../shared/conformance), when it is there.
# The rules are DECNET's pack from the conformance directory when present, else `rules/`.
# WORK (default: a temp dir) keeps the generated fleet, so a second call can reuse it.
set -euo pipefail
cd "$(dirname "$0")/.."

events=1000000 attackers=10000 runs=3 workers="1 2" postgres=false dev=false
while [ $# -gt 0 ]; do
    case "$1" in
        --events) events=$2; shift 2 ;;
        --attackers) attackers=$2; shift 2 ;;
        --runs) runs=$2; shift 2 ;;
        --workers) workers=$2; shift 2 ;;
        --postgres) postgres=true; shift ;;
        --dev) dev=true; shift ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ttpflow/target}"
cargo build --release --quiet --bin ttpflow
bin="$CARGO_TARGET_DIR/release/ttpflow"
conformance="${TTPFLOW_CONFORMANCE_DIR:-../shared/conformance}"
rules=rules
[ -d "$conformance/decnet/rules" ] && rules="$conformance/decnet/rules"

work="${WORK:-$(mktemp -d)}"
mkdir -p "$work"
fleet="$work/fleet-$events-$attackers"
if [ ! -s "$fleet/events.jsonl" ]; then
    identities=$((attackers * 3 / 10)) campaigns=$((attackers / 200 + 1))
    "$bin" generate --events "$events" --attackers "$attackers" --identities "$identities" \
        --campaigns "$campaigns" --seed 1 --out "$fleet" >/dev/null
fi
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo); rules: $rules"

. benches/pg.sh
trap stop_pg EXIT

# bench NAME RUN-ARGS...: `runs` runs; the median by wall time is reported.
bench() {
    local name=$1; shift
    local results=() i
    for i in $(seq 1 "$runs"); do
        local out="$work/out-$i" log="$work/log-$i"
        rm -rf "$out"
        local args=("$@")
        if [ -n "$pg_url" ]; then
            psql_pg "CREATE DATABASE bench_$i"
            args+=(--postgres "$pg_url dbname=bench_$i")
        fi
        TTPFLOW_LOG=warn /usr/bin/time -f "rss_kb=%M wall_s=%e" "$bin" run --rules "$rules" --out "$out" --stage-times \
            "${args[@]}" >"$log" 2>&1
        [ -n "$pg_url" ] && psql_pg "DROP DATABASE bench_$i"
        # Events/s of the whole process: records over wall time, startup included.
        local elapsed rate rss records
        elapsed=$(grep -o 'wall_s=[0-9.]*' "$log" | cut -d= -f2)
        records=$(grep -o '^records=[0-9]*' "$log" | cut -d= -f2)
        rate=$(awk -v n="$records" -v s="$elapsed" 'BEGIN {printf "%.0f", n / s}')
        rss=$(grep -o 'rss_kb=[0-9]*' "$log" | cut -d= -f2)
        results+=("$elapsed $rate $rss $log")
    done
    local median peak
    median=$(printf '%s\n' "${results[@]}" | sort -n | sed -n "$(((runs + 1) / 2))p")
    peak=$(printf '%s\n' "${results[@]}" | sort -k3 -n | tail -1 | cut -d' ' -f3)
    read -r elapsed rate _ log <<<"$median"
    printf '%-28s %9s events/s  %8s s  peak RSS %5d MB  (median of %d)\n' \
        "$name" "$rate" "$elapsed" $((peak / 1024)) "$runs"
    grep '^stage_cpu_s=' "$log" | awk -F'[= ]' '$2 >= 0.05 {printf "    %-24s %8.2f s CPU\n", $4" "$5" "$6, $2}'
}

inputs=(--input "$fleet/tables.jsonl" --input "$fleet/events.jsonl")
for w in $workers; do
    bench "fleet ${events} -w $w" "${inputs[@]}" -w "$w"
done
if $postgres; then
    start_pg
    for w in $workers; do
        bench "fleet ${events} -w $w postgres" "${inputs[@]}" -w "$w"
    done
    stop_pg
    pg_dir="" pg_url=""
fi
if $dev && [ -f "$conformance/corpus/dev_events.jsonl.gz" ]; then
    gunzip -c "$conformance/corpus/dev_events.jsonl.gz" >"$work/dev_events.jsonl"
    for w in $workers; do
        bench "dev corpus -w $w" --input "$conformance/corpus/dev_tables.jsonl" --input "$work/dev_events.jsonl" -w "$w"
    done
fi
