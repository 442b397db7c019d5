#!/usr/bin/env bash
# Three `gossip-election run` sidecars on 127.0.0.1 whose children append to a ledger:
# kill -9 of the holder's sidecar, SIGTERM to the next holder's, then a fleet whose
# preferred worker's child exits with status 1 after a second, every time. Prints the
# ledger (child pids in order), the handover times and `owners`.
#
#   cargo build --release --workspace --bins && scripts/sidecar_session.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${BIN:-target/release/gossip-election}
dir=$(mktemp -d)
pids=()
# kill_all: kill -9 every sidecar started so far, quietly.
kill_all() {
  for p in "${pids[@]}"; do { kill -9 "$p" && wait "$p"; } 2>/dev/null || true; done
  pids=()
}
cleanup() {
  kill_all
  rm -rf "$dir"
}
trap cleanup EXIT

now() { date +%s.%N; }
ms() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f ms", (b - a) * 1000 }'; }
ledger="$dir/ledger"
steady="echo \"\$(date +%s.%N) start \$\$ \$GOSSIP_ELECTION_NODE lease=\$GOSSIP_ELECTION_LEASE\" >> $ledger; \
trap 'echo \"\$(date +%s.%N) stop \$\$\" >> $ledger; exit 0' TERM; sleep 1000 & wait"
crashing="echo \"\$(date +%s.%N) start \$\$ \$GOSSIP_ELECTION_NODE lease=\$GOSSIP_ELECTION_LEASE\" >> $ledger; \
sleep 1; exit 1"

# start NAME INDEX SCRIPT [FLAGS...]: a sidecar on 127.0.0.1:76<INDEX>, debug on 77<INDEX>.
declare -A pid_of
start() {
  local name=$1 i=$2 script=$3; shift 3
  "$bin" run --name "$name" --bind "127.0.0.1:760$i" \
    --join 127.0.0.1:7601,127.0.0.1:7602,127.0.0.1:7603 --resource job \
    --debug-addr "127.0.0.1:770$i" "$@" -- sh -c "$script" 2>"$dir/$name.log" &
  pids+=($!)
  pid_of[$name]=$!
}
# wait_starts N: until the ledger has N start lines (at most 30 s).
wait_starts() {
  for _ in $(seq 3000); do
    [ "$(grep -c ' start ' "$ledger" 2>/dev/null || true)" -ge "$1" ] && return 0
    sleep 0.01
  done
  echo "timed out waiting for start $1" >&2; exit 1
}
last_start() { grep ' start ' "$ledger" | tail -1; }

echo "== three sidecars, resource job, tickets 1"
: >"$ledger"
for i in 1 2 3; do start "w$i" "$i" "$steady"; done
wait_starts 1
sleep 1
"$bin" owners --debug-addr 127.0.0.1:7701
holder=$(last_start | awk '{print $4}')

echo "== kill -9 of $holder's sidecar"
t=$(now); kill -9 "${pid_of[$holder]}"; { wait "${pid_of[$holder]}"; } 2>/dev/null || true
wait_starts 2
echo "new child after $(ms "$t" "$(last_start | awk '{print $1}')") ($(last_start | cut -d' ' -f2-))"
holder=$(last_start | awk '{print $4}')

echo "== SIGTERM to $holder's sidecar"
t=$(now); kill -TERM "${pid_of[$holder]}"
wait_starts 3
echo "new child after $(ms "$t" "$(last_start | awk '{print $1}')") ($(last_start | cut -d' ' -f2-))"
wait "${pid_of[$holder]}" && echo "$holder's sidecar exited 0"
echo "== ledger"
awk -v t0="$(head -1 "$ledger" | awk '{print $1}')" '{ printf "%+8.0f ms  %s\n", ($1 - t0) * 1000, substr($0, index($0, $2)) }' "$ledger"
kill_all
sleep 0.5

echo "== crash loop: job over a, b, c prefers c; c's child exits 1 after 1 s"
: >"$ledger"
start a 1 "$steady"; start b 2 "$steady"; start c 3 "$crashing"
sleep 40
echo "== ledger (40 s)"
awk -v t0="$(head -1 "$ledger" | awk '{print $1}')" '{ printf "%+8.0f ms  %s\n", ($1 - t0) * 1000, substr($0, index($0, $2)) }' "$ledger"
"$bin" owners --debug-addr 127.0.0.1:7701
grep -E "exited on its own|back-off ends" "$dir/c.log" | sed -E 's/^[^ ]+ +//' | head -6
