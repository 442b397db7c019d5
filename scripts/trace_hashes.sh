#!/usr/bin/env bash
# Trace hashes of a fixed set of simulator runs, one "scenario nodes seed duration hash" a
# line. A refactor that should not change behaviour prints the same lines before and
# after. The last run (1000 nodes) takes a minute or two; pass --quick to skip it.
#   cargo build --release -p sim && scripts/trace_hashes.sh [--quick]
set -euo pipefail
SIM="$(cd "$(dirname "$0")/.." && pwd)/target/release/sim"
export MIMALLOC_PURGE_DELAY=-1
runs=(
  "steady 5 1 600s"
  "crash-owner 20 9 300s"
  "crash-owner-restarting 20 30 300s"
  "partition-halves 100 3 120s"
  "isolate-owner 50 7 120s"
  "one-way-cut 20 5 300s"
  "address-churn 20 11 300s"
  "rolling-restart 20 4 300s"
  "churn 30 2 300s"
  "swarm 40 17 300s"
)
[ "${1:-}" = --quick ] || runs+=("partition-halves 1000 1 600s")
for r in "${runs[@]}"; do
  set -- $r
  out=$("$SIM" run --scenario "$1" --nodes "$2" --seed "$3" --duration "$4" 2>&1)
  line=${out%%$'\n'*}
  hash=$(sed -n 's/.* trace \([0-9a-f]*\) .*/\1/p' <<<"$line")
  wall=$(sed -n 's/.* wall \([0-9.]*s\) .*/\1/p' <<<"$line")
  echo "$1 $2 $3 $4 $hash (wall $wall)"
done
