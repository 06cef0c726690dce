#!/usr/bin/env bash
# tests/interop/run.sh — the SCTP suite. Runs INSIDE a VM with kernel SCTP
# (scripts/sctp-vm), as root, from the repository root:
#
#   scripts/sctp-vm -- env RSERPOOL_BIN=target/debug/rserpool \
#       RSERPOOL_SCTP_TESTS="target/debug/deps/rserpool-... target/debug/deps/sctp_registrar-..." \
#       bash tests/interop/run.sh
#
# Steps (each prints PASS/FAIL; the exit status is the number of failures):
#   0. the Rust SCTP tests (test binaries built on the host, filter "sctp")
#   1. `rserpool registrar` with no --asap listens on TCP and SCTP 3863
#   2. our registrar on a multi-homed SCTP endpoint; RSPLIB's `rspserver -echo`
#      registers there (Registration Life in ms: --profile rsplib)
#   3. our `rserpool resolve` and `rserpool dump` over SCTP see RSPLIB's PE
#   4. RSPLIB's `rspterminal` resolves EchoPool through our registrar and gets
#      its echo back from the PE
#   5. all of it is captured (dumpcap, in the namespace) to $OUT/cap.pcap;
#      tests/interop/check-capture.sh then checks with tshark that there is no
#      malformed packet and no ASAP/ENRP expert warning. tshark needs over a
#      minute just to start in the emulated guest, so by default that check
#      runs on the host after the VM ends (the Rust wrapper does it);
#      INTEROP_CHECK_IN_VM=1 runs it here instead.
#
# Network: everything runs in a network namespace this script creates, on a
# dummy interface carrying 10.77.0.1 and 10.77.0.2 (RSPLIB refuses
# loopback-only PEs); no traffic leaves the namespace.
set -uo pipefail

BIN=${RSERPOOL_BIN:-target/debug/rserpool}
OUT=${INTEROP_OUT:-target/interop}
NS=rsptest$$
A1=10.77.0.1
A2=10.77.0.2
mkdir -p "$OUT"
rm -f "$OUT"/*.log "$OUT"/cap.pcap
failures=0
pids=()
t0=$(date +%s)

pass() { echo "PASS: $*"; }
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
N() { ip netns exec "$NS" "$@"; }
# For background jobs: `ip netns exec` execs the command, so $! is its pid
# (a shell function would put a subshell in between that kill can't see past).
NX=(ip netns exec "$NS")
# Stop one background process: TERM, then KILL after 3 s.
stop() {
  local p=$1 i
  kill "$p" 2>/dev/null
  for ((i = 0; i < 30; i++)); do kill -0 "$p" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$p" 2>/dev/null
}
elapsed() { echo "$(($(date +%s) - t0))s"; }
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  sleep 0.5
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done
  ip netns del "$NS" 2>/dev/null
}
trap cleanup EXIT
# Wait until FILE contains PATTERN (extended regex), at most SECS seconds.
wait_for() {
  local file=$1 pat=$2 secs=$3 i
  for ((i = 0; i < secs * 10; i++)); do
    grep -qE "$pat" "$file" 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}
show() { sed 's/^/    | /' "$@" | tail -n 25; }

echo "== SCTP suite in $(uname -r), $(nproc) CPUs"
[ -x "$BIN" ] || { echo "FAIL: no binary $BIN (build on the host first)"; exit 1; }

# ---- 0. the Rust SCTP tests ---------------------------------------------------
if [ -n "${RSERPOOL_SCTP_TESTS:-}" ]; then
  for t in $RSERPOOL_SCTP_TESTS; do
    name=$(basename "$t")
    if "$t" sctp --test-threads 2 >"$OUT/rust-$name.log" 2>&1 &&
      ! grep -q "skipping: no kernel SCTP" "$OUT/rust-$name.log"; then
      pass "rust tests $name: $(grep -E '^test result' "$OUT/rust-$name.log" | tail -1)"
    else
      fail "rust tests $name"
      show "$OUT/rust-$name.log"
    fi
  done
else
  echo "note: RSERPOOL_SCTP_TESTS unset: Rust SCTP tests not run"
fi
echo "   ($(elapsed))"

# ---- the namespace ------------------------------------------------------------
ip netns add "$NS"
N ip link set lo up
N ip link add dummy0 type dummy
N ip addr add $A1/24 dev dummy0
N ip addr add $A2/24 dev dummy0
N ip link set dummy0 up

# ---- 1. default endpoints -------------------------------------------------------
"${NX[@]}" "$BIN" registrar --server-id 0x5eed0000 >"$OUT/default.log" 2>&1 &
pids+=($!)
if wait_for "$OUT/default.log" '^listening asap sctp://0\.0\.0\.0:3863$' 30 &&
  grep -q '^listening asap tcp://0.0.0.0:3863$' "$OUT/default.log"; then
  pass "default registrar listens on tcp and sctp 3863"
else
  fail "default registrar endpoints"
  show "$OUT/default.log"
fi
stop "${pids[-1]}"
unset 'pids[-1]'

# ---- capture ----------------------------------------------------------------------
: >"$OUT/cap.pcap"
chmod 666 "$OUT/cap.pcap" 2>/dev/null
"${NX[@]}" dumpcap -q -i lo -i dummy0 -w "$OUT/cap.pcap" -f sctp >"$OUT/dumpcap.log" 2>&1 &
pids+=($!)
cap_pid=$!
# dumpcap writes the pcapng header once both interfaces are open.
for ((i = 0; i < 100; i++)); do [ -s "$OUT/cap.pcap" ] && break; sleep 0.1; done
sleep 0.5

# ---- 2. our registrar, RSPLIB's PE ----------------------------------------------------
"${NX[@]}" "$BIN" registrar --profile rsplib --server-id 0x5eed0001 \
  --asap "sctp://$A1,$A2:3863" --asap "tcp://$A1:3863" >"$OUT/registrar.log" 2>&1 &
pids+=($!)
if wait_for "$OUT/registrar.log" "^listening asap sctp://$A1,$A2:3863\$" 30; then
  pass "registrar: $(grep '^listening asap sctp' "$OUT/registrar.log")"
else
  fail "registrar did not start on sctp://$A1,$A2:3863"
  show "$OUT/registrar.log"
fi

"${NX[@]}" rspserver -echo -registrar=$A1:3863 -asapannounce=off -local=$A1 \
  -poolhandle=EchoPool >"$OUT/rspserver.log" 2>&1 </dev/null &
pids+=($!)
registered=0
for ((i = 0; i < 60; i++)); do
  if N "$BIN" dump --registrar "sctp://$A1:3863" >"$OUT/dump.log" 2>&1 &&
    grep -q "EchoPool" "$OUT/dump.log"; then
    registered=1
    break
  fi
  sleep 0.5
done
if [ $registered = 1 ]; then
  pass "rspserver registered at our registrar over SCTP ($(elapsed))"
else
  fail "rspserver did not register"
  show "$OUT/rspserver.log"
  show "$OUT/registrar.log"
fi

# ---- 3. our tools over SCTP ------------------------------------------------------------
if grep -qE "PE 0x[0-9a-f]{8} +sctp" "$OUT/dump.log" || grep -qE "PE 0x" "$OUT/dump.log"; then
  pass "rserpool dump over SCTP shows RSPLIB's PE:"
  show "$OUT/dump.log"
else
  fail "dump over SCTP"
  show "$OUT/dump.log"
fi
if N "$BIN" resolve --registrar "sctp://$A2:3863" --pool EchoPool --json >"$OUT/resolve.log" 2>&1 &&
  grep -q '"elements":\[{' "$OUT/resolve.log" && grep -q "$A1" "$OUT/resolve.log"; then
  pass "rserpool resolve over SCTP (second address of the registrar) finds the PE at $A1"
else
  fail "resolve over SCTP"
  show "$OUT/resolve.log"
fi

# ---- 4. RSPLIB's PU through our registrar ---------------------------------------------
# rspterminal reads its stdin (a FIFO we hold open); stop it once the echo is in.
fifo=$(mktemp -u)
mkfifo "$fifo"
"${NX[@]}" rspterminal -registrar=$A1:3863 -asapannounce=off -poolhandle=EchoPool \
  <"$fifo" >"$OUT/rspterminal.log" 2>&1 &
term_pid=$!
pids+=($term_pid)
exec 3>"$fifo"
echo "hello-from-rspterminal" >&3
wait_for "$OUT/rspterminal.log" 'from PE .*hello-from-rspterminal' 60
exec 3>&-
stop "$term_pid"
rm -f "$fifo"
if grep -aqE 'from PE .*hello-from-rspterminal' "$OUT/rspterminal.log"; then
  pass "rspterminal got its echo through our registrar: $(grep -a hello-from "$OUT/rspterminal.log" | tail -1 | tr -d '\033' | cut -c1-80)"
else
  fail "rspterminal echo"
  show "$OUT/rspterminal.log"
fi
echo "   ($(elapsed))"

# ---- 5. the capture ---------------------------------------------------------------------
sleep 1
stop "$cap_pid"
if [ -s "$OUT/cap.pcap" ]; then
  pass "captured $(stat -c %s "$OUT/cap.pcap") bytes of SCTP to $OUT/cap.pcap"
  if [ "${INTEROP_CHECK_IN_VM:-0}" = 1 ]; then
    if bash tests/interop/check-capture.sh "$OUT/cap.pcap"; then pass "capture check"; else fail "capture check"; fi
  fi
else
  fail "no capture (see $OUT/dumpcap.log)"
  show "$OUT/dumpcap.log"
fi

echo "== $failures failure(s), $(elapsed) inside the VM; logs in $OUT"
exit "$failures"
