#!/usr/bin/env bash
# Three echo processes on 127.0.0.1:7201-7203: who prints, kill -9 of the holder, then
# SIGTERM of the next one (TICKETS=1), with times. Build first:
#   cargo build --release --example echo
# usage: scripts/echo_fleet.sh TICKETS
set -u
BIN="$(cd "$(dirname "$0")/.." && pwd)/target/release/examples/echo"
T=$1
cd "$(mktemp -d)"
for i in 1 2 3; do
  $BIN --name w$i --bind 127.0.0.1:720$i --join 127.0.0.1:7201 --join 127.0.0.1:7202 --join 127.0.0.1:7203 --tickets $T --interval 100ms > >(while read l; do echo "$(date +%s%3N) $l"; done > out$i) 2>err$i &
  eval "pid$i=$!"
done
sleep 3
echo "printing pids in last second:"
now=$(date +%s%3N); for i in 1 2 3; do awk -v n=$now '$1>n-1000' out$i | awk '{print $NF}' | sort -u; done
# find the holder: first file with recent lines
for i in 1 2 3; do if [ -n "$(awk -v n=$now '$1>n-1000' out$i)" ]; then h=$i; break; fi; done
hp=$(tail -1 out$h | awk '{print $NF}')
t0=$(date +%s%3N); kill -9 $hp
sleep 4
for i in 1 2 3; do [ $i = $h ] && continue; f=$(awk -v n=$t0 '$1>n' out$i | head -1 | awk '{print $1}'); [ -n "$f" ] && echo "after kill -9 of $hp: w$i printed after $((f-t0)) ms"; done
now=$(date +%s%3N); for i in 1 2 3; do [ $i = $h ] && continue; if [ -n "$(awk -v n=$now '$1>n-500' out$i)" ]; then h2=$i; fi; done
if [ "$T" = 1 ]; then
hp2=$(tail -1 out$h2 | awk '{print $NF}')
t1=$(date +%s%3N); kill -TERM $hp2
while kill -0 $hp2 2>/dev/null; do sleep 0.01; done; t2=$(date +%s%3N)
wait $hp2 2>/dev/null; 
sleep 2
for i in 1 2 3; do [ $i = $h ] || [ $i = $h2 ] && continue; f=$(awk -v n=$t1 '$1>n' out$i | head -1 | awk '{print $1}'); echo "after SIGTERM of $hp2: w$i printed after $((f-t1)) ms; $hp2 exited after $((t2-t1)) ms"; done
fi
kill %1 %2 %3 2>/dev/null; pkill -f "examples/echo" ; sleep 0.5
