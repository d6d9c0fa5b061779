#!/usr/bin/env bash
# CPU accounting for a command that works against a local PostgreSQL: wall time, the CPU
# the server used meanwhile (every process of the postmaster's tree, plus the children it
# reaped — backends and parallel workers that came and went), and the command's own CPU.
# On a small machine this tells "the server is the bottleneck" from "we are".
#
# usage: benches/scripts/pg-cpu.sh <postmaster-pid> <command> [args...]
#        (the pid is the first line of <data-dir>/postmaster.pid)
set -euo pipefail
pm=$1; shift
tick=$(getconf CLK_TCK)
pgsum() {
  local s=0 p f
  for p in $pm $(pgrep -P "$pm"); do
    # Fields after the command name: state is [0], utime [11], stime [12], cutime [13], cstime [14].
    f=($(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null)) || continue
    [ -n "${f[0]:-}" ] || continue
    s=$((s + f[11] + f[12]))
    [ "$p" = "$pm" ] && s=$((s + f[13] + f[14]))
  done
  echo $s
}
timing=$(mktemp)
a=$(pgsum); t0=$(date +%s.%N)
/usr/bin/time -f "%U %S" -o "$timing" "$@"
t1=$(date +%s.%N); b=$(pgsum)
read -r u s < "$timing"; rm -f "$timing"
echo "wall $(echo "$t1 - $t0" | bc) s | postgres cpu $(echo "scale=2; ($b - $a) / $tick" | bc) s | command cpu $(echo "$u + $s" | bc) s"
