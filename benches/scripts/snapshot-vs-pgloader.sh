#!/usr/bin/env bash
# Side-by-side: ferry's initial-load path vs pgloader vs the floor (server-side COPY FROM of
# files exported beforehand, into tables with primary keys), against the same local
# PostgreSQL, runs alternated, medians printed with ratios. Also the streaming apply rate.
#
# ferry's side is the release binary's `ferry snapshot` end to end (profile, create tables,
# parallel binary COPY, unique constraints, indexes, foreign keys, sequences). The example
# crates/ferry-pg/examples/sqlite_snapshot_load.rs exports the floor's files and drives the
# streaming measurements.
#
# usage: benches/scripts/snapshot-vs-pgloader.sh
# env:   PGURL (default postgresql://postgres@127.0.0.1:55432/postgres), RUNS (5), SCALE (1.0),
#        WORK (/tmp/ferry-bench), STREAM_TXNS (30000), STREAM_ROWS (10), LAG_RATE (10000
#        one-row transactions/s), LAG_SECONDS (10), SKIP_STREAM (set: snapshot comparison only),
#        PLAIN (set: the same data without secondary indexes, UNIQUE or foreign keys, so that
#        ferry, pgloader and the floor all build primary keys only)
set -euo pipefail
cd "$(dirname "$0")/../.."
PGURL=${PGURL:-postgresql://postgres@127.0.0.1:55432/postgres}
RUNS=${RUNS:-5}
SCALE=${SCALE:-1.0}
WORK=${WORK:-/tmp/ferry-bench}
base=${PGURL%/*}
mkdir -p "$WORK"
chmod 755 "$WORK"

cargo build --release -q -p ferry-pg --example sqlite_snapshot_load
cargo build --release -q -p ferry
LOADER=target/release/examples/sqlite_snapshot_load
FERRY=target/release/ferry

DB="$WORK/app${PLAIN:+-plain}.db"
if [ ! -f "$DB.scale-$SCALE" ]; then
  python3 benches/scripts/snapshot-vs-pgloader-gen.py "$DB" "$SCALE" ${PLAIN:+plain}
  touch "$DB.scale-$SCALE"
fi

psql_admin() { psql -q -v ON_ERROR_STOP=1 "$PGURL" "$@"; }
# A CHECKPOINT first, so no run pays for the previous run's writes.
fresh() { psql_admin -c "DROP DATABASE IF EXISTS $1 WITH (FORCE)" -c "CREATE DATABASE $1" -c CHECKPOINT; }
now() { date +%s.%N; }

# Export once (not timed) for the floor: load with ferry, COPY each table out in binary.
EXPORT="$WORK/export"
rm -rf "$EXPORT"; mkdir -p "$EXPORT"; chmod 777 "$EXPORT"
fresh bench_export
"$LOADER" load "$DB" "$base/bench_export?sslmode=disable" >/dev/null
TABLES=$(psql -At "$base/bench_export" -c "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")
for t in $TABLES; do
  psql -q "$base/bench_export" -c "COPY public.\"$t\" TO '$EXPORT/$t.bin' (FORMAT binary)"
done
# Floor DDL: the same columns and primary keys, nothing else.
FLOOR_DDL="$WORK/floor.sql"
: > "$FLOOR_DDL"
for t in $TABLES; do
  cols=$(psql -At "$base/bench_export" -c "SELECT string_agg(format('%I %s', attname, format_type(atttypid, atttypmod)), ', ' ORDER BY attnum) FROM pg_attribute WHERE attrelid = 'public.\"$t\"'::regclass AND attnum > 0 AND NOT attisdropped")
  pk=$(psql -At "$base/bench_export" -c "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 'public.\"$t\"'::regclass AND contype = 'p'")
  echo "CREATE TABLE \"$t\" ($cols, $pk);" >> "$FLOOR_DDL"
done

# The floor builds no secondary index; "floor + DDL" adds, after the same COPY, the indexes,
# UNIQUE constraints and foreign keys ferry creates (taken from ferry's result below), the
# indexes in parallel (one session each), then the foreign keys: the work any loader that
# keeps the schema has to do, done by the server alone.
FLOOR_IDX="$WORK/floor-indexes.sql"; FLOOR_FK="$WORK/floor-fks.sql"
ferry_t=(); pgl_t=(); floor_t=(); floor_ddl_t=(); ferry_rss=(); pgl_rss=()
for run in $(seq 1 "$RUNS"); do
  # ferry
  fresh bench_ferry
  s=$(now)
  out=$(/usr/bin/time -f "%M" "$FERRY" snapshot --source "$DB" --target "$base/bench_ferry?sslmode=disable" 2>"$WORK/ferry.time")
  e=$(now)
  ferry_t+=("$(echo "$e - $s" | bc)")
  ferry_rss+=("$(tail -1 "$WORK/ferry.time")")
  echo "run $run ferry:    ${ferry_t[-1]} s  ($out)"
  if [ "$run" = 1 ]; then
    psql -At "$base/bench_ferry" -c "SELECT indexdef || ';' FROM pg_indexes i WHERE schemaname = 'public' AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname AND c.contype IN ('p', 'u'))" \
         -c "SELECT format('CREATE UNIQUE INDEX %I ON %s (%s);', conname, conrelid::regclass, (SELECT string_agg(quote_ident(attname), ', ') FROM pg_attribute WHERE attrelid = conrelid AND attnum = ANY (conkey))) FROM pg_constraint WHERE connamespace = 'public'::regnamespace AND contype = 'u'" > "$FLOOR_IDX"
    psql -At "$base/bench_ferry" -c "SELECT format('ALTER TABLE %s ADD CONSTRAINT %I %s;', conrelid::regclass, conname, pg_get_constraintdef(oid)) FROM pg_constraint WHERE connamespace = 'public'::regnamespace AND contype = 'f'" > "$FLOOR_FK"
  fi
  # pgloader
  fresh bench_pgloader
  s=$(now)
  /usr/bin/time -f "%M" pgloader --quiet "sqlite://$DB" "$base/bench_pgloader" >"$WORK/pgloader.log" 2>"$WORK/pgloader.time" || { echo "pgloader failed:"; tail -20 "$WORK/pgloader.log" "$WORK/pgloader.time"; exit 1; }
  e=$(now)
  pgl_t+=("$(echo "$e - $s" | bc)")
  pgl_rss+=("$(tail -1 "$WORK/pgloader.time")")
  echo "run $run pgloader: ${pgl_t[-1]} s"
  # floor: server-side COPY FROM, tables in parallel (one session per table)
  fresh bench_floor
  psql -q -v ON_ERROR_STOP=1 "$base/bench_floor" -f "$FLOOR_DDL"
  s=$(now)
  for t in $TABLES; do
    psql -q -v ON_ERROR_STOP=1 "$base/bench_floor" -c "COPY \"$t\" FROM '$EXPORT/$t.bin' (FORMAT binary)" &
  done
  wait
  e=$(now)
  floor_t+=("$(echo "$e - $s" | bc)")
  echo "run $run floor:    ${floor_t[-1]} s"
  while read -r stmt; do
    psql -q -v ON_ERROR_STOP=1 "$base/bench_floor" -c "SET maintenance_work_mem = '256MB'" -c "$stmt" &
  done < "$FLOOR_IDX"
  wait
  psql -q -v ON_ERROR_STOP=1 "$base/bench_floor" -f "$FLOOR_FK"
  e=$(now)
  floor_ddl_t+=("$(echo "$e - $s" | bc)")
  echo "run $run floor+DDL: ${floor_ddl_t[-1]} s"
done

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
mf=$(median "${ferry_t[@]}"); mp=$(median "${pgl_t[@]}"); mc=$(median "${floor_t[@]}"); md=$(median "${floor_ddl_t[@]}")
rows=$(psql -At "$base/bench_ferry" -c "SELECT sum(n_live_tup) FROM pg_stat_user_tables WHERE schemaname = 'public'")
echo
echo "rows: ~$rows   runs: $RUNS (alternated)   medians:"
printf "  ferry    %8.2f s   peak RSS %s MiB (max of runs)\n" "$mf" "$(( $(printf '%s\n' "${ferry_rss[@]}" | sort -n | tail -1) / 1024 ))"
printf "  pgloader %8.2f s   peak RSS %s MiB (max of runs)\n" "$mp" "$(( $(printf '%s\n' "${pgl_rss[@]}" | sort -n | tail -1) / 1024 ))"
printf "  floor    %8.2f s   (COPY FROM binary files, PK only, tables in parallel)\n" "$mc"
printf "  floor+DDL %7.2f s   (the same, then ferry's indexes, UNIQUE constraints and foreign keys)\n" "$md"
echo "  ferry / floor    = $(echo "scale=2; $mf / $mc" | bc)"
echo "  ferry / floor+DDL = $(echo "scale=2; $mf / $md" | bc)"
echo "  pgloader / ferry = $(echo "scale=2; $mp / $mf" | bc)"

[ -n "${SKIP_STREAM:-}" ] && exit 0
# Streaming apply rate.
fresh bench_stream
"$LOADER" stream "$base/bench_stream?sslmode=disable" "${STREAM_TXNS:-30000}" "${STREAM_ROWS:-10}"

# Apply lag at a steady rate of small transactions (append → applied in PostgreSQL).
fresh bench_lag
"$LOADER" lag "$base/bench_lag?sslmode=disable" "${LAG_RATE:-10000}" "${LAG_SECONDS:-10}"
