#!/usr/bin/env bash
# The cutover window, measured N times at a steady write rate, with the writer's own longest
# commit stall measured independently (by the sample application itself).
#   benches/scripts/cutover-window.sh [runs=5] [rate=200]
# Needs FERRY_TEST_PG_URL (a superuser URL; each run gets its own database) and a built
# ferry (FERRY_BIN, default target/release/ferry, else target/debug/ferry).
set -euo pipefail
runs=${1:-5}
rate=${2:-200}
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${FERRY_BIN:-$root/target/release/ferry}
[ -x "$bin" ] || bin=$root/target/debug/ferry
: "${FERRY_TEST_PG_URL:?set FERRY_TEST_PG_URL to a PostgreSQL superuser URL}"
base=${FERRY_TEST_PG_URL%/*}
work=$(mktemp -d /tmp/ferry-cutover-bench.XXXXXX)
trap 'pkill -P $$ 2>/dev/null || true; rm -rf "$work"' EXIT
printf "%-4s %12s %16s\n" run window_ms app_stall_ms
for i in $(seq 1 "$runs"); do
  d=$work/$i; mkdir -p "$d"
  dbname=ferry_cutover_bench_$$_$i
  psql "$FERRY_TEST_PG_URL" -qc "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $dbname" -c "CREATE DATABASE $dbname" >/dev/null
  "$bin" sample-app --prepare-only --initial-users 2000 --db "$d/app.db"
  "$bin" sample-app --initial-users 0 --rate "$rate" --db "$d/app.db" >"$d/app.json" &
  app=$!
  FERRY_LOG=error "$bin" run --source "$d/app.db" --target "$base/$dbname" --state-dir "$d/state" --admin-addr 127.0.0.1:0 &
  run=$!
  for _ in $(seq 1 600); do
    if "$bin" status --state-dir "$d/state" --json 2>/dev/null | grep -q '"state": "streaming"'; then break; fi
    sleep 0.1
  done
  sleep 2
  out=$("$bin" cutover --state-dir "$d/state" --then "kill -TERM $app" 2>&1)
  wait "$app" || true
  window=$(sed -n 's/.*write-unavailability window \([0-9.]*\) ms.*/\1/p' <<<"$out")
  stall=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["longest_stall_ms"])' "$d/app.json")
  printf "%-4s %12s %16.1f\n" "$i" "${window:-FAILED}" "$stall"
  kill -TERM "$run"; wait "$run" || true
  psql "$FERRY_TEST_PG_URL" -qc "DROP DATABASE IF EXISTS $dbname" >/dev/null
done
