#!/usr/bin/env bash
# usage: benches/scripts/archive-restore.sh [size_mb=1024] [changes=1000000]
# env:   FERRY_TEST_PG_URL  PostgreSQL superuser URL (required; scratch databases are created and dropped)
#        FERRY_BIN          the ferry binary (default target/release/ferry, else target/debug/ferry)
#        WORK               parent of the temporary directory (default /tmp; needs ~4x size_mb free)
#        PG_RESTORE=0       skip the two restores into PostgreSQL
#
# Restore speed (issue 7): a SQLite database of about size_mb (users/posts/attachments/events,
# archive-gen.py) is archived by `ferry run --archive-dir` (initial snapshot, then a base at
# the snapshot's end), then `changes` logged row changes are written in transactions of 1000
# while ferry captures, ships and archives them. Once captured == shipped, ferry run is stopped
# with SIGTERM (which seals and archives the last segment), and we time:
#   restore --to-lsn <base LSN> --output   the base copy alone (CRC check, copy, integrity_check)
#   restore --latest --output              base copy + replay of every change + integrity_check
# and the same two into fresh PostgreSQL databases. Replay time = latest - base-only, so
# changes/s = changes / (latest - base-only); MB/s = restored database bytes / latest seconds.
# The restored file is compared with the source (row counts and a content digest per table).
set -euo pipefail
size_mb=${1:-1024}
changes=${2:-1000000}
case "$size_mb$changes" in *[!0-9]*|'') echo "usage: $0 [size_mb] [changes] (integers)" >&2; exit 2;; esac
root=$(cd "$(dirname "$0")/../.." && pwd)
gen=$root/benches/scripts/archive-gen.py
bin=${FERRY_BIN:-$root/target/release/ferry}
[ -x "$bin" ] || bin=$root/target/debug/ferry
[ -x "$bin" ] || { echo "no ferry binary: cargo build --release -p ferry" >&2; exit 2; }
: "${FERRY_TEST_PG_URL:?set FERRY_TEST_PG_URL to a PostgreSQL superuser URL}"
pg_base=${FERRY_TEST_PG_URL%/*}
work=$(mktemp -d "${WORK:-/tmp}/ferry-archive-restore.XXXXXX")
# Scratch databases are named ferry_archbench_<pid>_<label> and dropped by that name on exit
# (fresh_db runs in a command substitution, so it cannot record them in a variable).
db_labels="run base latest"
run_pid=
cleanup() {
  if [ -n "$run_pid" ] && kill -0 "$run_pid" 2>/dev/null; then kill -TERM "$run_pid"; wait "$run_pid" || true; fi
  for l in $db_labels; do
    psql -q "$FERRY_TEST_PG_URL" -c "DROP DATABASE IF EXISTS ferry_archbench_$$_$l WITH (FORCE)" >/dev/null 2>&1 || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "archive-restore: $*" >&2; exit 1; }
now() { date +%s.%N; }
fresh_db() {
  local d=ferry_archbench_$$_$1
  psql -q -v ON_ERROR_STOP=1 "$FERRY_TEST_PG_URL" -c "SET client_min_messages = warning" \
    -c "DROP DATABASE IF EXISTS $d WITH (FORCE)" -c "CREATE DATABASE $d" >/dev/null
  echo "$pg_base/$d"
}
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
status() { "$bin" status --state-dir "$work/state" --json 2>/dev/null; }
# wait_for <seconds> <description> <command...>: polls the condition every 0.5 s until the deadline.
wait_for() {
  local limit=$1 what=$2; shift 2
  local end=$(( $(date +%s) + limit ))
  until "$@"; do
    [ "$(date +%s)" -lt "$end" ] || fail "timed out after ${limit}s waiting for $what"
    kill -0 "$run_pid" 2>/dev/null || fail "ferry run exited while waiting for $what (log: $(tail -5 "$work/run.log"))"
    sleep 0.5
  done
}
# The first base is taken at the snapshot's end; once it is archived and PostgreSQL has
# everything captured, the initial load is done. (Not `"state": "streaming"`: after a shipping
# retry that succeeded, ferry status can keep reporting the old error until the next write.)
snapshot_loaded_with_base() {
  local s b
  b=$("$bin" backup list --archive-dir "$work/archive" --json 2>/dev/null | json 'd["sources"][0]["bases"][0]["lsn"]' 2>/dev/null) || return 1
  s=$(status) || return 1
  [ "$(json 'd["sources"][0]["shipped_lsn"]' <<<"$s")" -ge "$b" ] &&
    [ "$(json 'd["sources"][0]["captured_lsn"]' <<<"$s")" = "$(json 'd["sources"][0]["shipped_lsn"]' <<<"$s")" ]
}
last_seen=-1
writer_done=""
caught_up() {
  # Capture has read the database to its end in a pass that began after the writer finished
  # (the status's source_read_at), and captured == shipped.
  local s c p r
  s=$(status) || return 1
  c=$(json 'd["sources"][0]["captured_lsn"]' <<<"$s")
  p=$(json 'd["sources"][0]["shipped_lsn"]' <<<"$s")
  r=$(json 'd["sources"][0].get("source_read_at") or ""' <<<"$s")
  last_seen=$c
  [ "$c" = "$p" ] && [[ "$r" > "$writer_done" || "$r" == "$writer_done" ]]
}

echo "== machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GB RAM; binary: $bin"
echo "== building a ~${size_mb} MB database"
t=$(now)
python3 "$gen" build "$work/app.db" "$size_mb" | tee "$work/build.json"
db_bytes=$(stat -c %s "$work/app.db")
printf "built %d bytes in %.1f s\n" "$db_bytes" "$(echo "$(now) - $t" | bc)"

target=$(fresh_db run)
echo "== ferry run --archive-dir (initial snapshot into PostgreSQL, base at its end)"
t=$(now)
FERRY_LOG=warn "$bin" run --source "$work/app.db" --target "$target" --state-dir "$work/state" \
  --archive-dir "$work/archive" >"$work/run.log" 2>&1 &
run_pid=$!
wait_for 3600 "the initial snapshot and first base" snapshot_loaded_with_base
base_lsn=$("$bin" backup list --archive-dir "$work/archive" --json | json 'd["sources"][0]["bases"][-1]["lsn"]')
printf "streaming with a base at LSN %s after %.1f s\n" "$base_lsn" "$(echo "$(now) - $t" | bc)"

echo "== writing $changes row changes (1000 per transaction) while ferry runs"
python3 "$gen" changes "$work/app.db" "$changes" 1000 | tee "$work/changes.json"
writer_done=$(date -u +%Y-%m-%dT%H:%M:%S.%6NZ)
t=$(now)
wait_for 3600 "captured == shipped" caught_up
printf "caught up %.1f s after the writer finished, at LSN %s\n" "$(echo "$(now) - $t" | bc)" "$last_seen"
kill -TERM "$run_pid"
wait "$run_pid" || fail "ferry run exited with $? on SIGTERM (log: $(tail -5 "$work/run.log"))"
run_pid=
# What capture logged in the end (it may have read the writer's last commits after the poll
# above saw captured == shipped): the stopped run's log, from the state directory.
last_seen=$(status | json 'd["sources"][0]["captured_lsn"]')
archived=$("$bin" backup list --archive-dir "$work/archive" --json | json 'd["sources"][0]["archived_through"]')
[ "$archived" = "$last_seen" ] || fail "archive holds through LSN $archived, captured $last_seen"
"$bin" backup list --archive-dir "$work/archive"
python3 "$gen" digest "$work/app.db" >"$work/source.digest"

# timed <label> <command...>: runs it, keeps its last line, sets $secs.
timed() {
  local label=$1; shift
  local t0 out
  t0=$(now)
  out=$("$@" 2>"$work/$label.err") || fail "$label failed: $(tail -3 "$work/$label.err")"
  secs=$(echo "$(now) - $t0" | bc)
  printf "%-14s %8.2f s   %s\n" "$label" "$secs" "$out"
  last_out=$out
}
echo "== restores (the archive was just written, so it is likely in the page cache)"
timed file-base "$bin" restore --archive-dir "$work/archive" --to-lsn "$base_lsn" --output "$work/base.db"
file_base=$secs
timed file-latest "$bin" restore --archive-dir "$work/archive" --latest --output "$work/latest.db"
file_latest=$secs
replayed=$(sed -n 's/.*(\([0-9]*\) row changes) replayed.*/\1/p' <<<"$last_out")
[ "$replayed" = "$changes" ] || fail "restore replayed ${replayed:-?} row changes, expected $changes"
python3 "$gen" digest "$work/latest.db" >"$work/latest.digest"
cmp -s "$work/source.digest" "$work/latest.digest" ||
  fail "restored database differs from the source: $(diff "$work/source.digest" "$work/latest.digest")"
echo "restored file equals the source (row counts and content digest of every table)"
out_bytes=$(stat -c %s "$work/latest.db")
rm -f "$work/base.db"

if [ "${PG_RESTORE:-1}" != 0 ]; then
  timed pg-base "$bin" restore --archive-dir "$work/archive" --to-lsn "$base_lsn" --target "$(fresh_db base)"
  pg_base_s=$secs
  pg_latest_url=$(fresh_db latest)
  timed pg-latest "$bin" restore --archive-dir "$work/archive" --latest --target "$pg_latest_url"
  pg_latest_s=$secs
  pg_lsn=$(psql -At "$pg_latest_url" -c "SELECT lsn FROM ferry.progress")
  [ "$pg_lsn" = "$last_seen" ] || fail "PostgreSQL restore reflects LSN $pg_lsn, expected $last_seen"
fi

echo
echo "== results: database ${db_bytes} bytes built, $out_bytes bytes restored, $changes changes; $(nproc) cores shared"
python3 - "$out_bytes" "$changes" "$file_base" "$file_latest" "${pg_base_s:-}" "${pg_latest_s:-}" <<'EOF'
import sys
b, n, fb, fl = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
mb = b / 1e6
def row(what, base, latest):
    replay = latest - base
    print(f"{what:<10} base only {base:7.2f} s ({mb / base:7.1f} MB/s)   latest {latest:7.2f} s "
          f"({mb / latest:7.1f} MB/s)   replay {replay:7.2f} s ({n / replay if replay > 0 else float('nan'):9.0f} changes/s)")
row("sqlite", fb, fl)
if sys.argv[5]:
    row("postgres", float(sys.argv[5]), float(sys.argv[6]))
EOF
