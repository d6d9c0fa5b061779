#!/usr/bin/env bash
# The cutover window, measured N times at a steady write rate, with the writer's own longest
# commit stall measured independently (by the sample application itself).
#   ROWS=100000 benches/scripts/cutover-window.sh [runs=5] [rate=200]
# ROWS is the database's size before the writer starts (users and jobs, half each; jobs carry
# blobs of up to 3 KB); the issue's targets are for 100 k and 2 M rows.
# Needs FERRY_TEST_PG_URL (a superuser URL; each run gets its own database) and a built
# ferry (FERRY_BIN, default target/release/ferry, else target/debug/ferry).
set -euo pipefail
runs=${1:-5}
rate=${2:-200}
rows=${ROWS:-4000}
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${FERRY_BIN:-$root/target/release/ferry}
[ -x "$bin" ] || bin=$root/target/debug/ferry
: "${FERRY_TEST_PG_URL:?set FERRY_TEST_PG_URL to a PostgreSQL superuser URL}"
base=${FERRY_TEST_PG_URL%/*}
work=$(mktemp -d /tmp/ferry-cutover-bench.XXXXXX)
trap 'pkill -P $$ 2>/dev/null || true; rm -rf "$work"' EXIT
# One prepared database, copied for every run (preparing 2 M rows takes a while).
"$bin" sample-app --prepare-only --initial-users $((rows / 2)) --db "$work/seed.db"
sqlite3 "$work/seed.db" 'PRAGMA wal_checkpoint(TRUNCATE)' >/dev/null
size=$(du -m "$work/seed.db" | cut -f1)
echo "database: $rows rows ($size MiB), writer at $rate txn/s, $runs runs"
printf "%-4s %10s %12s %14s %14s\n" run load_s window_ms app_stall_ms stall-window
results=$work/results
for i in $(seq 1 "$runs"); do
  d=$work/$i; mkdir -p "$d"
  cp "$work/seed.db" "$d/app.db"
  dbname=ferry_cutover_bench_$$_$i
  psql "$FERRY_TEST_PG_URL" -qc "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $dbname" -c "CREATE DATABASE $dbname" >/dev/null
  # The switch moves the application to PostgreSQL (SIGUSR1), where it keeps writing: its
  # longest stall runs from the first write the fence held up to its first commit there.
  "$bin" sample-app --initial-users 0 --rate "$rate" --db "$d/app.db" --switch-to "$base/$dbname" >"$d/app.json" &
  app=$!
  started=$(date +%s.%N)
  FERRY_LOG=error "$bin" run --source "$d/app.db" --target "$base/$dbname" --state-dir "$d/state" --admin-addr 127.0.0.1:0 &
  run=$!
  for _ in $(seq 1 36000); do
    if "$bin" status --state-dir "$d/state" --json 2>/dev/null | grep -q '"state": "streaming"'; then break; fi
    sleep 0.1
  done
  loaded=$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$started" "$(date +%s.%N)")
  sleep 2
  out=$("$bin" cutover --state-dir "$d/state" --then "kill -USR1 $app" 2>&1) || { echo "$out"; exit 1; }
  sleep 1
  kill -TERM "$app"; wait "$app" || true
  grep -E "^ +window:" <<<"$out" || true
  window=$(sed -n 's/.*write-unavailability window \([0-9.]*\) ms.*/\1/p' <<<"$out")
  stall=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["longest_stall_ms"])' "$d/app.json")
  printf "%-4s %10s %12s %14.1f %14.1f\n" "$i" "$loaded" "${window:-FAILED}" "$stall" "$(python3 -c "print($stall - ${window:-0})")"
  echo "$window $stall" >>"$results"
  # Stalls of the writer longer than 100 ms, with when they began relative to the fence.
  python3 - "$d/app.json" "$out" <<'PY'
import datetime, json, re, sys
app = json.load(open(sys.argv[1]))
m = re.search(r'"fenced_at":\s*"([^"]+)"', sys.argv[2]) or re.search(r'fenced at ([^);\s]+)', sys.argv[2])
fence = datetime.datetime.fromisoformat(m.group(1).replace("Z", "+00:00")).timestamp() if m else None
for s in sorted(app["stalls"], key=lambda s: s["began_unix_micros"]):
    if s["ms"] >= 100:
        rel = f"{s['began_unix_micros'] / 1e6 - fence:+.2f} s from the fence" if fence else ""
        print(f"     stall {s['ms']:.0f} ms {rel}")
PY
  kill -TERM "$run"; wait "$run" || true
  rm -rf "$d"
  psql "$FERRY_TEST_PG_URL" -qc "DROP DATABASE IF EXISTS $dbname" >/dev/null
done
python3 - "$results" <<'PY'
import statistics, sys
rows = [tuple(map(float, l.split())) for l in open(sys.argv[1]) if l.strip()]
w = [r[0] for r in rows]; s = [r[1] for r in rows]
print(f"window ms: median {statistics.median(w):.1f}, worst {max(w):.1f}; "
      f"app's longest stall ms: median {statistics.median(s):.1f}, worst {max(s):.1f}; "
      f"worst stall - window {max(b - a for a, b in rows):.1f} ms")
PY
