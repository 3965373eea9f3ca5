#!/usr/bin/env bash
# Latency of the continuous job: record produced → its epoch committed in PostgreSQL, at a
# steady rate. librdkafka's mock cluster (examples/mock_cluster) takes a generated fleet's
# tables, then its events at RATE per second, each stamped when sent; `ttpflow run` reads
# them and commits to a throw-away PostgreSQL server (see benches/pg.sh). The job's
# histogram `ttpflow_record_commit_latency_seconds` observes, per committed epoch, the
# oldest record's wait, so its quantiles bound those of every record from above.
#
#   benches/latency.sh [--rate R] [--seconds S] [--workers W] [--epoch-interval-ms MS]
set -euo pipefail
cd "$(dirname "$0")/.."

rate=5000 seconds=60 workers=1 interval=""
while [ $# -gt 0 ]; do
    case "$1" in
        --rate) rate=$2; shift 2 ;;
        --seconds) seconds=$2; shift 2 ;;
        --workers) workers=$2; shift 2 ;;
        --epoch-interval-ms) interval=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ttpflow/target}"
cargo build --release --quiet --bin ttpflow --example mock_cluster
bin="$CARGO_TARGET_DIR/release/ttpflow"
mock="$CARGO_TARGET_DIR/release/examples/mock_cluster"
conformance="${TTPFLOW_CONFORMANCE_DIR:-../shared/conformance}"
rules=rules
[ -d "$conformance/decnet/rules" ] && rules="$conformance/decnet/rules"

work="$(mktemp -d)"
events=$((rate * seconds))
"$bin" generate --events "$events" --attackers 10000 --identities 3000 --campaigns 51 --seed 3 \
    --out "$work/fleet" 2>/dev/null
echo "machine: $(nproc) cores; rate $rate/s for ${seconds} s ($events events), -w $workers"

. benches/pg.sh
job="" hold=""
cleanup() {
    [ -n "$job" ] && kill "$job" 2>/dev/null && wait "$job" 2>/dev/null
    [ -n "$hold" ] && exec 3>&-
    stop_pg
    [ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT
start_pg
psql_pg "CREATE DATABASE bench_latency"

# The cluster lives while its standard input (fd 3 here) is open.
mkfifo "$work/hold"
"$mock" --pace "$rate" --pace-delay-s 8 --partitions 8 "$work/fleet/tables.jsonl" "$work/fleet/events.jsonl" \
    <"$work/hold" >"$work/brokers" 2>"$work/mock.log" &
exec 3>"$work/hold"
hold=1
until [ -s "$work/brokers" ]; do sleep 0.2; done
brokers=$(head -1 "$work/brokers")

port=$((20000 + RANDOM % 20000))
args=(--brokers "$brokers" --postgres "$pg_url dbname=bench_latency" --rules "$rules" -w "$workers"
    --metrics-addr "127.0.0.1:$port")
[ -n "$interval" ] && args+=(--epoch-interval-ms "$interval")
TTPFLOW_LOG="${TTPFLOW_LOG:-warn}" "$bin" run "${args[@]}" >"$work/job.log" 2>&1 &
job=$!
until grep -q '^paced' "$work/mock.log"; do
    kill -0 "$job" 2>/dev/null || { cat "$work/job.log" >&2; exit 1; }
    sleep 1
done
sleep 3
curl -s "http://127.0.0.1:$port/metrics" >"$work/metrics"
cat "$work/mock.log"
grep -E '^ttpflow_(epochs_committed_total|tags_stored_total) ' "$work/metrics"
awk '/^ttpflow_epoch_commit_seconds_sum/ { s = $2 } /^ttpflow_epoch_commit_seconds_count/ { n = $2 }
    END { if (n) printf "commit: mean %.3f s over %d commits\n", s / n, n }' "$work/metrics"
# Quantiles from the cumulative buckets: the least bound holding that share of the epochs.
awk '
    /^ttpflow_record_commit_latency_seconds_bucket/ {
        match($0, /le="[^"]*"/); le = substr($0, RSTART + 4, RLENGTH - 5); n++; bound[n] = le; count[n] = $2
    }
    /^ttpflow_record_commit_latency_seconds_count/ { total = $2 }
    /^ttpflow_record_commit_latency_seconds_sum/ { sum = $2 }
    END {
        if (total == 0) { print "no live epoch committed"; exit 1 }
        split("0.5 0.9 0.99", qs, " ")
        for (k = 1; k <= 3; k++) {
            for (i = 1; i <= n; i++) if (count[i] >= qs[k] * total) break
            printf "p%s <= %s s   ", qs[k] * 100, bound[i]
        }
        printf "mean %.3f s over %d epochs\n", sum / total, total
    }' "$work/metrics"
echo "work: $work"
