#!/usr/bin/env bash
# usage: benches/scripts/archive-overhead.sh [pairs=2] [seconds=20] [base_interval=5s]
# env:   FERRY_TEST_PG_URL  PostgreSQL superuser URL (required; one scratch database per run)
#        FERRY_BIN          the ferry binary (default target/release/ferry, else target/debug/ferry)
#
# The archive's cost on `ferry run` throughput (issue 7). Runs alternate A/B/A/B… (`pairs`
# of each): A = ferry run without an archive, B = the same with --archive-dir and
# --base-interval (short, so bases are taken during the run). Each run: a fresh sample-app
# database (1000 users), ferry run started and streaming, then `ferry sample-app --rate 0
# --seconds S` writes as fast as it can; when the app has stopped we poll PostgreSQL
# (every 0.05 s) until it holds the app's last job (jobs are never deleted: max(id) is the
# last commit).
#   app/s     the application's commits per second (the writer shares the 2 cores with ferry)
#   ferry/s   commits captured and shipped per second: app commits / (time from the app's start
#             until the last of them is shipped) — ferry's end-to-end throughput
#   lag_end   records captured but not shipped when the app stopped
#   records   log records for the app's commits (one per commit unless capture lost the WAL and
#             resynchronised, which folds many commits into one record: resyncs counts those
#             warnings in ferry's log; the commits are still all shipped, but not one by one)
# Printed per run, then the medians per mode and the B/A ratios.
set -euo pipefail
pairs=${1:-2}
seconds=${2:-20}
interval=${3:-5s}
case "$pairs$seconds" in *[!0-9]*|'') echo "usage: $0 [pairs] [seconds] [base_interval]" >&2; exit 2;; esac
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${FERRY_BIN:-$root/target/release/ferry}
[ -x "$bin" ] || bin=$root/target/debug/ferry
[ -x "$bin" ] || { echo "no ferry binary: cargo build --release -p ferry" >&2; exit 2; }
: "${FERRY_TEST_PG_URL:?set FERRY_TEST_PG_URL to a PostgreSQL superuser URL}"
pg_base=${FERRY_TEST_PG_URL%/*}
work=$(mktemp -d /tmp/ferry-archive-overhead.XXXXXX)
run_pid=
app_pid=
dbname=
cleanup() {
  for p in "$app_pid" "$run_pid"; do
    if [ -n "$p" ] && kill -0 "$p" 2>/dev/null; then kill -TERM "$p"; wait "$p" || true; fi
  done
  [ -z "$dbname" ] || psql -q "$FERRY_TEST_PG_URL" -c "DROP DATABASE IF EXISTS $dbname WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "archive-overhead: $*" >&2; exit 1; }
now() { date +%s.%N; }
# Sets $cap and $shp from `ferry status --json` (one source).
read_status() {
  local s
  s=$("$bin" status --state-dir "$d/state" --json 2>/dev/null) || return 1
  cap=$(sed -n 's/.*"captured_lsn": \([0-9]*\).*/\1/p' <<<"$s")
  shp=$(sed -n 's/.*"shipped_lsn": \([0-9]*\).*/\1/p' <<<"$s")
  # Not `"state": "streaming"`: after a shipping retry that succeeded, ferry status can keep
  # reporting the old error until the next write. shipped > 0 means the snapshot is loaded (the
  # shipper applies none of it before its end).
  [ -n "$cap" ] && [ -n "$shp" ]
}

results=$work/results.tsv
: >"$results"
printf "%-4s %-8s %8s %9s %9s %8s %8s %7s %6s\n" run mode commits app/s ferry/s lag_end records resyncs bases
for i in $(seq 1 $((2 * pairs))); do
  if [ $((i % 2)) = 1 ]; then mode=plain; else mode=archive; fi
  d=$work/$i; mkdir -p "$d"
  dbname=ferry_archoverhead_$$_$i
  psql -q -v ON_ERROR_STOP=1 "$FERRY_TEST_PG_URL" -c "SET client_min_messages = warning" \
    -c "DROP DATABASE IF EXISTS $dbname WITH (FORCE)" -c "CREATE DATABASE $dbname" >/dev/null
  "$bin" sample-app --prepare-only --initial-users 1000 --db "$d/app.db" >/dev/null
  extra=()
  [ "$mode" = plain ] || extra=(--archive-dir "$d/archive" --base-interval "$interval")
  FERRY_LOG=warn "$bin" run --source "$d/app.db" --target "$pg_base/$dbname" --state-dir "$d/state" \
    "${extra[@]}" >"$d/run.log" 2>&1 &
  run_pid=$!
  end=$(( $(date +%s) + 300 ))
  until read_status && [ "$shp" -gt 0 ] && [ "$cap" = "$shp" ]; do
    [ "$(date +%s)" -lt "$end" ] || fail "run $i: ferry run not streaming after 300 s"
    kill -0 "$run_pid" 2>/dev/null || fail "run $i: ferry run exited: $(tail -5 "$d/run.log")"
    sleep 0.2
  done
  lsn0=$cap
  t0=$(now)
  "$bin" sample-app --initial-users 0 --rate 0 --seconds "$seconds" --db "$d/app.db" >"$d/app.json" 2>"$d/app.err" &
  app_pid=$!
  wait "$app_pid" || fail "run $i: sample-app failed: $(tail -3 "$d/app.err")"
  app_pid=
  read_status || fail "run $i: ferry status failed"
  lag_end=$((cap - shp))
  commits=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["commits"])' "$d/app.json")
  last_job=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["last_job_id"])' "$d/app.json")
  end=$(( $(date +%s) + 600 ))
  until [ "$(psql -At "$pg_base/$dbname" -c 'SELECT coalesce(max(id), 0) FROM public.jobs' 2>/dev/null || echo 0)" -ge "$last_job" ]; do
    [ "$(date +%s)" -lt "$end" ] || fail "run $i: PostgreSQL lacks job $last_job after 600 s"
    kill -0 "$run_pid" 2>/dev/null || fail "run $i: ferry run exited: $(tail -5 "$d/run.log")"
    sleep 0.05
  done
  t_done=$(now)
  # Not timed: ferry status trails PostgreSQL a little; wait for it to settle before counting.
  prev=-1
  end=$(( $(date +%s) + 60 ))
  until read_status && [ "$cap" = "$shp" ] && [ "$cap" = "$prev" ]; do
    [ "$(date +%s)" -lt "$end" ] || fail "run $i: ferry status did not settle"
    prev=$cap
    sleep 0.5
  done
  records=$((cap - lsn0))
  resyncs=$(grep -c resynchronised "$d/run.log" || true)
  bases=-
  if [ "$mode" = archive ]; then
    bases=$("$bin" backup list --archive-dir "$d/archive" --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["sources"][0]["bases"]))')
  fi
  kill -TERM "$run_pid"; wait "$run_pid" || fail "run $i: ferry run exited non-zero on SIGTERM: $(tail -5 "$d/run.log")"
  run_pid=
  app_rate=$(echo "$commits / $seconds" | bc -l)
  ferry_rate=$(echo "$commits / ($t_done - $t0)" | bc -l)
  printf "%-4s %-8s %8d %9.1f %9.1f %8d %8d %7d %6s\n" "$i" "$mode" "$commits" "$app_rate" "$ferry_rate" "$lag_end" "$records" "$resyncs" "$bases"
  printf "%s\t%s\t%s\n" "$mode" "$app_rate" "$ferry_rate" >>"$results"
  psql -q "$FERRY_TEST_PG_URL" -c "DROP DATABASE IF EXISTS $dbname WITH (FORCE)" >/dev/null
  dbname=
  rm -rf "$d"
done
python3 - "$results" <<'EOF'
import statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1]).read().splitlines()]
by = {m: [(float(a), float(f)) for mm, a, f in rows if mm == m] for m in ("plain", "archive")}
med = {m: (statistics.median(a for a, _ in v), statistics.median(f for _, f in v)) for m, v in by.items()}
print(f"median plain:   app {med['plain'][0]:.1f}/s   ferry {med['plain'][1]:.1f}/s")
print(f"median archive: app {med['archive'][0]:.1f}/s   ferry {med['archive'][1]:.1f}/s")
print(f"ratio archive/plain: app {med['archive'][0] / med['plain'][0]:.3f}   ferry {med['archive'][1] / med['plain'][1]:.3f}")
EOF
