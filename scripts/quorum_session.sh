#!/usr/bin/env bash
# Three `echo --quorum 3` processes on 127.0.0.1:7301-7303, printing every 100 ms while
# they hold `echo`:
#   1. kill -9 of both workers that do not print: the one that prints must stop (it
#      lost its majority) within the fencing window; prints when it last printed.
#   2. a fresh fleet: SIGTERM of the printing worker (a handover: it releases its
#      promises as it leaves).
#   3. a fresh fleet: kill -9 of the printing worker (a crash: the next one prints once
#      the crashed one's promises ran out).
# Build first:
#   cargo build --release --example echo && scripts/quorum_session.sh
set -u
BIN="$(cd "$(dirname "$0")/.." && pwd)/target/release/examples/echo"
cd "$(mktemp -d)"
now() { date +%s%3N; }

# fleet: start w1..w3 (fresh output files) and wait until one prints.
fleet() {
  for i in 1 2 3; do
    "$BIN" --name "w$i" --bind "127.0.0.1:730$i" --join 127.0.0.1:7301 --join 127.0.0.1:7302 \
      --join 127.0.0.1:7303 --quorum 3 --interval 100ms \
      > >(while read -r l; do echo "$(now) $l"; done > "out$i") 2> "err$i" &
    eval "pid$i=$!"
  done
  for _ in $(seq 200); do
    for i in 1 2 3; do
      if [ -s "out$i" ]; then h=$i; return; fi
    done
    sleep 0.1
  done
  echo "nobody printed within 20 s"; exit 1
}
# printing I: whether wI printed in the last 300 ms.
printing() { [ -n "$(awk -v n="$(now)" '$1 > n - 300' "out$1")" ]; }
stop_all() {
  for i in 1 2 3; do { kill -9 "$(eval echo \$pid$i)" && wait "$(eval echo \$pid$i)"; } 2>/dev/null; done
  sleep 0.5
}
# next_printer SINCE OLD: the first worker other than OLD to print after SINCE, with when.
next_printer() {
  for _ in $(seq 300); do
    for i in 1 2 3; do
      [ "$i" = "$2" ] && continue
      f=$(awk -v n="$1" '$1 > n' "out$i" | head -1 | cut -d' ' -f1)
      if [ -n "$f" ]; then echo "$i $f"; return; fi
    done
    sleep 0.05
  done
  echo "- -"
}

echo "== 1. kill -9 of both non-holders"
fleet
t0=$(now)
echo "w$h prints"
for i in 1 2 3; do
  [ "$i" = "$h" ] || { kill -9 "$(eval echo \$pid$i)" && wait "$(eval echo \$pid$i)"; } 2>/dev/null
done
t_kill=$(now)
sleep 6
last=$(tail -1 "out$h" | cut -d' ' -f1)
echo "w$h printed last $(( last - t_kill )) ms after the kill"
if printing "$h"; then echo "w$h STILL PRINTS"; else echo "w$h stopped"; fi
sed "s/\x1b\[[0-9;]*m//g" "err$h" | grep -h -o "no majority[^=]*" | head -2
stop_all

echo "== 2. SIGTERM of the holder"
fleet
t_term=$(now)
kill -TERM "$(eval echo \$pid$h)"
read -r n f <<< "$(next_printer "$t_term" "$h")"
last=$(tail -1 "out$h" | cut -d' ' -f1)
echo "w$h printed last $(( last - t_term )) ms after SIGTERM; w$n printed after $(( f - t_term )) ms"
stop_all

echo "== 3. kill -9 of the holder"
fleet
t_kill=$(now)
{ kill -9 "$(eval echo \$pid$h)" && wait "$(eval echo \$pid$h)"; } 2>/dev/null
read -r n f <<< "$(next_printer "$t_kill" "$h")"
echo "after kill -9 of w$h: w$n printed after $(( f - t_kill )) ms"
stop_all
