#!/usr/bin/env bash
# Failover side by side: gossip-election's `echo` (5 workers) against an etcd election
# (5 campaigners of scripts/etcd-campaigner against one local etcd, 2 s session TTL).
#
# For each system it measures, in fresh fleets, the time from the signal to the leader
# (the process that prints) to the first line printed by another process:
#   crash     kill -9 of the leader
#   graceful  SIGTERM of the leader (echo leaves the fleet; the campaigner resigns)
# Every process prints a line every 100 ms while it leads, and at once when it starts
# to lead. Each stdout line is stamped with a millisecond wall-clock time by this
# script as it reads it; the signal's time is taken just before `kill`. Both systems
# go through the same stamping, so the figures compare.
#
# usage: scripts/side_by_side.sh [PATH_TO_ECHO_BINARY]
#   without a path it runs `cargo build --release --example echo` ($CARGO, default cargo)
#   TRIALS=5       trials of each kind per system
#   KEEP=1         keep the work directory (stdout/stderr of every process, etcd's log)
# Needs root or sudo to install, when missing, Debian's etcd-server, etcd-client,
# golang-go and golang-etcd-server-dev; the campaigner is built with GO111MODULE=off
# against /usr/share/gocode. Everything listens on 127.0.0.1 only: etcd on 23790
# (client) and 23800 (peer), echo on UDP 7401-7405. The trials take about 2 minutes
# (after the builds). Not part of CI.
set -u

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TRIALS=${TRIALS:-5}
N=5
ECHO_BASE=7401
ETCD_CLIENT=127.0.0.1:23790
ETCD_PEER=127.0.0.1:23800
INTERVAL=100ms

WORK=$(mktemp -d "${TMPDIR:-/tmp}/side_by_side.XXXXXX")
STARTED=()  # every process this script started
FLEET=()    # the current fleet's processes

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  for p in "${STARTED[@]}"; do kill -9 "$p" 2>/dev/null; done
  for p in "${STARTED[@]}"; do wait "$p" 2>/dev/null; done
  if [ "${KEEP:-0}" = 1 ] || [ "$rc" != 0 ]; then
    echo "work directory kept: $WORK" >&2
  else
    rm -rf "$WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

die() { echo "side_by_side: $*" >&2; exit 1; }

# now: wall-clock milliseconds, without a fork.
now() { local t=${EPOCHREALTIME//[!0-9]/}; echo "${t:0:${#t}-3}"; }
# stamp: prefix every line read with the wall-clock milliseconds it was read at.
stamp() { local l t; while IFS= read -r l; do t=${EPOCHREALTIME//[!0-9]/}; printf '%s %s\n' "${t:0:${#t}-3}" "$l"; done; }

# ---- tools ---------------------------------------------------------------------------
need=()
command -v etcd >/dev/null || need+=(etcd-server)
command -v etcdctl >/dev/null || need+=(etcd-client)
command -v go >/dev/null || need+=(golang-go)
[ -d /usr/share/gocode/src/go.etcd.io/etcd/clientv3/concurrency ] || need+=(golang-etcd-server-dev)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  echo "installing ${need[*]}"
  $SUDO apt-get update -q >/dev/null || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${need[@]}" >/dev/null \
    || die "apt-get install ${need[*]} failed"
fi

for port in 23790 23800; do
  [ -z "$(ss -Hlnt "sport = :$port" 2>/dev/null)" ] || die "TCP port $port is in use"
done
for i in $(seq 0 $((N - 1))); do
  [ -z "$(ss -Hlnu "sport = :$((ECHO_BASE + i))" 2>/dev/null)" ] || die "UDP port $((ECHO_BASE + i)) is in use"
done

echo "building the etcd campaigner"
CAMPAIGNER=$WORK/campaigner
(cd "$ROOT/scripts/etcd-campaigner" && GO111MODULE=off GOPATH=/usr/share/gocode GOFLAGS= \
  GOCACHE="$WORK/gocache" go build -o "$CAMPAIGNER" main.go) || die "go build failed"

if [ $# -ge 1 ]; then
  ECHO_BIN=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
else
  echo "building echo"
  (cd "$ROOT" && ${CARGO:-cargo} build --release --example echo -q) || die "cargo build failed"
  ECHO_BIN=$ROOT/target/release/examples/echo
fi
[ -x "$ECHO_BIN" ] || die "no echo binary at $ECHO_BIN"

# ---- etcd ----------------------------------------------------------------------------
etcdctl_() { ETCDCTL_API=3 etcdctl --endpoints="$ETCD_CLIENT" --dial-timeout=1s --command-timeout=1s "$@"; }
etcd --name side-by-side --data-dir "$WORK/etcd.data" \
  --listen-client-urls "http://$ETCD_CLIENT" --advertise-client-urls "http://$ETCD_CLIENT" \
  --listen-peer-urls "http://$ETCD_PEER" --initial-advertise-peer-urls "http://$ETCD_PEER" \
  --initial-cluster "side-by-side=http://$ETCD_PEER" --initial-cluster-state new \
  > "$WORK/etcd.log" 2>&1 &
STARTED+=($!)
for _ in $(seq 100); do etcdctl_ endpoint health >/dev/null 2>&1 && break; sleep 0.1; done
etcdctl_ endpoint health >/dev/null 2>&1 || die "etcd is not healthy after 10 s (see $WORK/etcd.log)"

# ---- fleets --------------------------------------------------------------------------
# start_fleet SYSTEM DIR: start N processes with stamped stdout in DIR/out1..N.
start_fleet() {
  local sys=$1 dir=$2 i joins=()
  mkdir -p "$dir"
  FLEET=()
  for i in $(seq 0 $((N - 1))); do joins+=(--join "127.0.0.1:$((ECHO_BASE + i))"); done
  for i in $(seq 1 $N); do
    if [ "$sys" = echo ]; then
      "$ECHO_BIN" --name "w$i" --bind "127.0.0.1:$((ECHO_BASE + i - 1))" "${joins[@]}" \
        --interval "$INTERVAL" > >(stamp > "$dir/out$i") 2> "$dir/err$i" &
    else
      "$CAMPAIGNER" --endpoints "$ETCD_CLIENT" --election "/side-by-side/$(basename "$dir")" \
        --name "c$i" --ttl 2 --interval "$INTERVAL" > >(stamp > "$dir/out$i") 2> "$dir/err$i" &
    fi
    FLEET+=($!)
    STARTED+=($!)
  done
}

stop_fleet() {
  local p
  for p in "${FLEET[@]}"; do kill -9 "$p" 2>/dev/null; done
  for p in "${FLEET[@]}"; do wait "$p" 2>/dev/null; done
  FLEET=()
  sleep 0.3
}

# printers DIR SINCE: the numbers of the processes that printed after SINCE.
printers() {
  local i
  for i in $(seq 1 $N); do
    [ -n "$(awk -v s="$2" '$1 > s' "$1/out$i" 2>/dev/null | head -1)" ] && echo "$i"
  done
}

# stable_leader SYSTEM DIR: wait (at most 30 s) until everyone is up (echo: 3 s since
# start; etcd: every campaigner campaigns) and one process alone has printed in the last
# 1.5 s, for 1.2 s at least; print its number.
stable_leader() {
  local sys=$1 dir=$2 start t p c
  start=$(now)
  for _ in $(seq 300); do
    sleep 0.1
    t=$(now)
    if [ "$sys" = echo ]; then
      [ $((t - start)) -ge 3000 ] || continue
    else
      c=$(cat "$dir"/err* 2>/dev/null | grep -c campaigning)
      [ "$c" -ge $N ] || continue
    fi
    p=$(printers "$dir" $((t - 1500)))
    [ -n "$p" ] && [ "$(echo "$p" | wc -l)" = 1 ] || continue
    # printing for 1.2 s at least: a line in the first 300 ms of the window
    [ -n "$(awk -v a=$((t - 1500)) -v b=$((t - 1200)) '$1 > a && $1 <= b' "$dir/out$p" | head -1)" ] || continue
    echo "$p"
    return 0
  done
  return 1
}

# first_other DIR SINCE OLD: the first line by a process other than OLD after SINCE
# (waits at most 10 s): "NUMBER MS".
first_other() {
  local dir=$1 since=$2 old=$3 i f best= who=
  for _ in $(seq 200); do
    for i in $(seq 1 $N); do
      [ "$i" = "$old" ] && continue
      f=$(awk -v s="$since" '$1 > s { print $1; exit }' "$dir/out$i" 2>/dev/null)
      if [ -n "$f" ] && { [ -z "$best" ] || [ "$f" -lt "$best" ]; }; then best=$f; who=$i; fi
    done
    if [ -n "$best" ]; then echo "$who $best"; return 0; fi
    sleep 0.05
  done
  return 1
}

declare -A RESULTS  # "sys kind" -> space-separated ms ("-" for a trial without failover)

# trial SYSTEM KIND NUMBER
trial() {
  local sys=$1 kind=$2 n=$3 dir="$WORK/$1-$2-$3" h pid t0 who first ms after sig how p
  if [ "$sys" = echo ]; then p=w; else p=c; fi
  start_fleet "$sys" "$dir"
  if ! h=$(stable_leader "$sys" "$dir"); then
    printf '  %-4s %-8s #%d  no single stable leader within 30 s\n' "$sys" "$kind" "$n"
    RESULTS["$sys $kind"]+="- "
    stop_fleet
    return
  fi
  pid=${FLEET[$((h - 1))]}
  if [ "$kind" = crash ]; then sig=KILL how="kill -9"; else sig=TERM how=SIGTERM; fi
  t0=$(now)
  kill -s "$sig" "$pid"
  # reap a killed leader at once (quietly); the times come from the stamped lines
  [ "$sig" = KILL ] && { wait "$pid"; } 2>/dev/null
  if read -r who first < <(first_other "$dir" "$t0" "$h"); then
    ms=$((first - t0))
    sleep 1
    after=$(printers "$dir" $(($(now) - 500)) | wc -l)
    printf '  %-4s %-8s #%d  %-7s of %s%d (pid %d) -> %s%d printed after %5d ms; printing 1 s later: %d process(es)\n' \
      "$sys" "$kind" "$n" "$how" "$p" "$h" "$pid" "$p" "$who" "$ms" "$after"
    RESULTS["$sys $kind"]+="$ms "
  else
    printf '  %-4s %-8s #%d  %-7s of %s%d (pid %d) -> nobody else printed within 10 s\n' \
      "$sys" "$kind" "$n" "$how" "$p" "$h" "$pid"
    RESULTS["$sys $kind"]+="- "
  fi
  stop_fleet
}

echo
echo "== setup"
echo "  host:        $(uname -srm), $(nproc) cores"
echo "  echo:        $ECHO_BIN ($(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')), $N workers on 127.0.0.1:$ECHO_BASE-$((ECHO_BASE + N - 1)), --interval $INTERVAL, defaults otherwise"
echo "  etcd:        $(etcd --version | head -1), one member on $ETCD_CLIENT"
echo "  campaigner:  built with $(go version | awk '{print $3}'), $N campaigners, session TTL 2 s, --interval $INTERVAL"
echo "  trials:      $TRIALS crash (kill -9) + $TRIALS graceful (SIGTERM) per system, each in a fresh fleet"
echo
echo "== trials (ms from the signal to the first line printed by another process)"
for sys in echo etcd; do
  for kind in crash graceful; do
    for n in $(seq 1 "$TRIALS"); do trial "$sys" "$kind" "$n"; done
  done
done

# stats VALUES: "median max failed" over the numeric values.
stats() {
  local v=() x
  for x in "$@"; do [ "$x" = - ] || v+=("$x"); done
  local failed=$(($# - ${#v[@]}))
  if [ ${#v[@]} = 0 ]; then echo "- - $failed"; return; fi
  mapfile -t v < <(printf '%s\n' "${v[@]}" | sort -n)
  local c=${#v[@]} med
  if [ $((c % 2)) = 1 ]; then med=${v[$((c / 2))]}; else med=$(((v[c / 2 - 1] + v[c / 2]) / 2)); fi
  echo "$med ${v[$((c - 1))]} $failed"
}

echo
echo "== side by side: signal to the leader -> first line from another process, ms"
printf '%-34s %-32s %7s %7s\n' "" "trials" median max
for kind in crash graceful; do
  for sys in echo etcd; do
    if [ "$sys" = echo ]; then label="gossip-election echo"; else label="etcd election (TTL 2 s)"; fi
    [ "$kind" = crash ] && k="kill -9" || k="SIGTERM"
    vals=(${RESULTS["$sys $kind"]})
    read -r med max failed <<< "$(stats "${vals[@]}")"
    printf '%-34s %-32s %7s %7s%s\n' "$label, $k" "${vals[*]}" "$med" "$max" \
      "$([ "$failed" = 0 ] || echo "  ($failed without failover)")"
  done
done
