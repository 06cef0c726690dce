#!/usr/bin/env bash
# tests/interop/run.sh — the SCTP suite. Runs INSIDE a VM with kernel SCTP
# (scripts/sctp-vm), as root, from the repository root:
#
#   scripts/sctp-vm -- env RSERPOOL_BIN=target/debug/rserpool \
#       RSERPOOL_SCTP_TESTS="target/debug/deps/rserpool-... target/debug/deps/sctp_registrar-..." \
#       bash tests/interop/run.sh
#
# Steps (each prints PASS/FAIL; the exit status is the number of failures):
#   1. `rserpool registrar` with no --asap listens on TCP and SCTP 3863
#   2. everything else starts, in a network namespace, under a capture:
#      - R1, our registrar (--profile rsplib: Registration Life in ms), on a
#        multi-homed SCTP ASAP endpoint and SCTP ENRP, mentor: RSP;
#      - RSP, RSPLIB's `rspregistrar`, naming no peer: it learns us from our
#        presences;
#      - R3, a second registrar of ours, mentor: RSP;
#      - RSP2, a second `rspregistrar`, naming R1 as its peer;
#      - RSPLIB's `rspserver -echo`: PE1 (EchoPool) registers at R1, PE2
#        (RspPool) at RSP;
#      - our `rserpool pe --service echo` (OurEcho) at RSP, two RSPLIB
#        `rspserver -pingpong` (PingPool) at RSP;
#      - R6, our registrar on sctp://IPv4,[IPv6]:3863
#   3. meanwhile the Rust SCTP tests (test binaries built on the host, run at
#      the same time, filter
#      "sctp", on loopback outside the namespace): RSPLIB's programs need tens
#      of seconds just to start in the emulated guest
#   4. PE1 is registered at R1; our `rserpool dump` and `rserpool resolve`
#      over SCTP see it
#   5. ENRP over SCTP with RSPLIB: R1 and R3 list both PEs with their homes,
#      and RSP as an active peer; RSP resolves EchoPool to PE1 with R1 as
#      home; RSP2 has both from us
#   6. RSPLIB's `rspterminal` gets its echo through R1 from PE1, through RSP
#      from PE1 (registered at R1) and through R1 from PE2 (registered at RSP)
#   7. our PE is registered at RSP (its transport as we listen); rspterminal
#      through RSP gets its echo from it
#   8. our `rserpool pu --pingpong` through RSP: two pings, SIGKILL to the
#      rspserver that answered, two more; the PU fails over echoing the latest
#      cookie, and the other rspserver goes on with its reply numbers (3, 4)
#   9. R6 resolves, over IPv6 and over IPv4, a PE on IPv4+IPv6 and a PE on two
#      IPv6 addresses, each with every address; our PU gets its echo (it
#      exits with its last reply: a long --linger only keeps it from giving up)
#  10. SIGKILL to RSP: R1 takes PE2 over (RSP2 and R3 ack; RSP2 applies our
#      TAKEOVER_SERVER); PE2 adopts R1 on the H=1 keep-alive and keeps
#      answering R1's keep-alives; R1, R3 and RSP2 resolve it with R1 as home
#  11. SIGKILL to R1: RSP2 takes both PEs over (R3 acks, and follows without a
#      takeover of its own although RSPLIB's TAKEOVER_SERVER never comes); the
#      PEs answer RSP2's keep-alives; rspterminal gets its echo through RSP2
#  12. all of it is captured (dumpcap, in the namespace) to $OUT/cap.pcap;
#      tests/interop/check-capture.sh then checks with tshark that ASAP and
#      every ENRP message type but ENRP_ERROR is there, that every exchange
#      of tests/interop/capture-expect.txt is (keep-alives between RSP and our
#      PE, our PU's cookie echo, RSPLIB's cookies, ping-pong DATA on PPID 33,
#      ASAP over IPv6), that there is no
#      malformed packet and no ASAP/ENRP expert warning. tshark needs over a
#      minute just to start in the emulated guest, so by default that check
#      runs on the host after the VM ends (the Rust wrapper does it);
#      INTEROP_CHECK_IN_VM=1 runs it here instead.
#
# Why R3: RSPLIB completes a takeover only when an INIT_TAKEOVER_ACK arrives
# (it waits for one from every other peer and does nothing when its wait
# list starts empty), so with two registrars it never takes the dead one's
# PEs over. R3 probes slowly (--enrp-max-time-no-response 30s) so that it
# does not run a takeover of its own: RSPLIB arbitrates concurrent takeovers
# the other way round from RFC 5353 (the lowest id wins); against our
# registrars (highest id wins, as the RFC says) our side wins after a retry,
# so R3 would take R1 over rather than RSP2. See docs/sctp.md.
#
# Network: everything runs in network namespaces this script creates, on
# dummy interfaces: 10.77.0.1-10.77.0.9 for RSPLIB and its peers (RSPLIB
# refuses loopback-only PEs), 10.77.0.10-11 and fd77::10-fd77::13 for step 9
# (see NS6); no traffic leaves them.
set -uo pipefail

BIN=${RSERPOOL_BIN:-target/debug/rserpool}
OUT=${INTEROP_OUT:-target/interop}
NS=rsptest$$
# Step 9 runs in a namespace of its own: RSPLIB's programs bind to every
# address, so with IPv6 addresses beside theirs every association lists them,
# our registrars pass them on in the PEs' ASAP transports, and an
# rspregistrar bound to one IPv4 address then dials a PE over IPv6 from an
# address it does not own (INIT, INIT_ACK, ABORT: it never reaches the PE).
NS6=rsptest6$$
A1=10.77.0.1 # R1 (with A2)
A2=10.77.0.2
A3=10.77.0.3 # rspregistrar
A4=10.77.0.4 # R3
A5=10.77.0.5 # RSPLIB's second PE
A6=10.77.0.6 # the second rspregistrar
A7=10.77.0.7 # our PE, registered at RSP
A8=10.77.0.8 # RSPLIB's ping-pong PEs (at RSP)
A9=10.77.0.9
A10=10.77.0.10 # R6, our mixed IPv4/IPv6 registrar (with B10)
A11=10.77.0.11 # our mixed-family PE (with B11)
B10=fd77::10
B11=fd77::11
B12=fd77::12 # our IPv6-only multi-homed PE (with B13)
B13=fd77::13
# RSPLIB's registrars send a PE the next keep-alive KA_INTERVAL after its ack
# and drop the PE (and ABORT its association) when no ack came within
# KA_TIMEOUT. RSPLIB's default timeout, 5 s, is within reach of the loaded
# emulated guest: acks have taken 6-9 s there. A PE RSP2 dropped after its
# takeover knows no registrar but the dead R1 (-registrar is static and
# announces are off), so it never comes back, and RSP2's keep-alives stop.
KA_INTERVAL=5 # s, RSPLIB's default
KA_TIMEOUT=30 # s
RSPLIB_KA=(-endpointkeepalivetransmissioninterval=$((KA_INTERVAL * 1000))
  -endpointkeepalivetimeoutinterval=$((KA_TIMEOUT * 1000)))
R1_ID=0x5eed0001
R3_ID=0x5eed0003
RSP_ID=0x7e570002
RSP2_ID=0x7e570004
mkdir -p "$OUT"
rm -f "$OUT"/*.log "$OUT"/cap.pcap
failures=0
pids=()
declare -A pp_pid
t0=$(date +%s)

pass() { echo "PASS: $*"; }
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
N() { ip netns exec "$NS" "$@"; }
N6() { ip netns exec "$NS6" "$@"; }
# For background jobs: `ip netns exec` execs the command, so $! is its pid
# (a shell function would put a subshell in between that kill can't see past).
NX=(ip netns exec "$NS")
NX6=(ip netns exec "$NS6")
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
  ip netns del "$NS6" 2>/dev/null
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
# Poll a command (a shell function) every half second until it succeeds, at
# most SECS seconds (a hang guard; how long things take is not a pass criterion).
until_ok() {
  local end=$((SECONDS + $1))
  shift
  # By the clock: in the slow guest one round of a check can take a second.
  while ((SECONDS < end)); do
    "$@" && return 0
    sleep 0.5
  done
  "$@"
}
# The home registrar id (0x........) of the first PE of POOL as the registrar
# at URL resolves it; empty when it has none.
home_at() {
  N "$BIN" resolve --registrar "$1" --pool "$2" --json 2>/dev/null |
    grep -o '"home_hex":"0x[0-9a-f]*"' | head -1 | cut -d'"' -f4
}
# dump at URL (to FILE) lists PE of POOL with home HOME.
dump_has() {
  local url=$1 file=$2 pool=$3 home=$4
  N "$BIN" dump --registrar "$url" >"$file" 2>&1 &&
    grep -A1 "^pool \"$pool\"" "$file" | grep -q "home $home"
}
# Count the keep-alives an RSPLIB PE logged from registrar ID (its -loglevel=6).
kas_from() { grep -ac "EndpointKeepAlive from registrar \$${2#0x}" "$1" 2>/dev/null; }
# Start rspterminal on POOL through the registrar at ADDR:3863, send one line,
# wait for its echo; $1 = a name for the log.
echo_through() {
  local name=$1 reg=$2 pool=$3 fifo pid
  fifo=$(mktemp -u)
  mkfifo "$fifo"
  "${NX[@]}" rspterminal -registrar=$reg:3863 -asapannounce=off -poolhandle=$pool \
    <"$fifo" >"$OUT/$name.log" 2>&1 &
  pid=$!
  pids+=($pid)
  exec 4>"$fifo"
  echo "hello-$name" >&4
  wait_for "$OUT/$name.log" "from PE .*hello-$name" 60
  exec 4>&-
  stop "$pid"
  rm -f "$fifo"
  grep -aqE "from PE .*hello-$name" "$OUT/$name.log"
}

echo "== SCTP suite in $(uname -r), $(nproc) CPUs"
[ -x "$BIN" ] || { echo "FAIL: no binary $BIN (build on the host first)"; exit 1; }

# ---- the namespace ------------------------------------------------------------
ip netns add "$NS"
N ip link set lo up
N ip link add dummy0 type dummy
for a in $A1 $A2 $A3 $A4 $A5 $A6 $A7 $A8 $A9; do N ip addr add $a/24 dev dummy0; done
N ip link set dummy0 up
ip netns add "$NS6"
N6 ip link set lo up
N6 ip link add dummy0 type dummy
for a in $A10 $A11; do N6 ip addr add $a/24 dev dummy0; done
for a in $B10 $B11 $B12 $B13; do N6 ip -6 addr add $a/64 dev dummy0 nodad; done
N6 ip link set dummy0 up

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

# ---- 2. the registrars and PEs, under a capture ---------------------------------------
: >"$OUT/cap.pcap"
chmod 666 "$OUT/cap.pcap" 2>/dev/null
"${NX[@]}" dumpcap -q -i lo -i dummy0 -w "$OUT/cap.pcap" -f sctp >"$OUT/dumpcap.log" 2>&1 &
pids+=($!)
cap_pid=$!
: >"$OUT/cap6.pcap"
chmod 666 "$OUT/cap6.pcap" 2>/dev/null
"${NX6[@]}" dumpcap -q -i lo -i dummy0 -w "$OUT/cap6.pcap" -f sctp >"$OUT/dumpcap6.log" 2>&1 &
pids+=($!)
cap6_pid=$!
# dumpcap writes the pcapng header once both interfaces are open.
for ((i = 0; i < 100; i++)); do [ -s "$OUT/cap.pcap" ] && break; sleep 0.1; done
sleep 0.5

# RSP first, so that it is up when R1 and R3 dial it.
"${NX[@]}" rspregistrar -identifier=$RSP_ID -asap=$A3:3863 -enrp=$A3:9901 \
  -asapannounce=off -enrpannounce=off "${RSPLIB_KA[@]}" -loglevel=4 -logcolor=off \
  >"$OUT/rspregistrar.log" 2>&1 </dev/null &
rsp_pid=$!
pids+=($rsp_pid)
"${NX[@]}" "$BIN" registrar --profile rsplib --server-id $R1_ID \
  --asap "sctp://$A1,$A2:3863" --asap "tcp://$A1:3863" \
  --enrp "sctp://$A1:9901" --peer "sctp://$A3:9901" >"$OUT/registrar.log" 2>&1 &
r1_pid=$!
pids+=($r1_pid)
"${NX[@]}" "$BIN" registrar --profile rsplib --server-id $R3_ID \
  --asap "sctp://$A4:3863" --enrp "sctp://$A4:9901" --peer "sctp://$A3:9901" \
  --enrp-max-time-no-response 30s >"$OUT/registrar3.log" 2>&1 &
pids+=($!)
"${NX[@]}" rspregistrar -identifier=$RSP2_ID -asap=$A6:3863 -enrp=$A6:9901 -peer=$A1:9901 \
  -asapannounce=off -enrpannounce=off "${RSPLIB_KA[@]}" -loglevel=4 -logcolor=off \
  >"$OUT/rspregistrar2.log" 2>&1 </dev/null &
rsp2_pid=$!
pids+=($rsp2_pid)
"${NX[@]}" rspserver -echo -registrar=$A1:3863 -asapannounce=off -local=$A1 \
  -poolhandle=EchoPool -loglevel=6 -logcolor=off >"$OUT/rspserver.log" 2>&1 </dev/null &
pids+=($!)
"${NX[@]}" rspserver -echo -registrar=$A3:3863 -asapannounce=off -local=$A5 \
  -poolhandle=RspPool -loglevel=6 -logcolor=off >"$OUT/rspserver2.log" 2>&1 </dev/null &
pids+=($!)
# Our PE at RSPLIB's registrar (Registration Life in ms, as RSPLIB wants),
# and two RSPLIB ping-pong PEs there for our PU.
"${NX[@]}" "$BIN" pe --service echo --pool OurEcho --listen "sctp://$A7:0" --reglife-unit ms \
  --pe-id 0x0e0e0007 \
  --registrar "sctp://$A3:3863" >"$OUT/pe-at-rsp.log" 2>&1 </dev/null &
pids+=($!)
extra_pids=($!)
for a in $A8 $A9; do
  "${NX[@]}" rspserver -pingpong -registrar=$A3:3863 -asapannounce=off -local=$a \
    -poolhandle=PingPool -loglevel=4 -logcolor=off >"$OUT/rspserver-pp-$a.log" 2>&1 </dev/null &
  pids+=($!)
  pp_pid[$a]=$!
  extra_pids+=($!)
done
# R6 and two PEs of ours: multi-homed across the families.
"${NX6[@]}" "$BIN" registrar --server-id 0x5eed0006 --asap "sctp://$A10,[$B10]:3863" \
  >"$OUT/registrar6.log" 2>&1 &
pids+=($!)
extra_pids+=($!)
if wait_for "$OUT/registrar.log" "^listening asap sctp://$A1,$A2:3863\$" 30; then
  pass "registrar: $(grep '^listening asap sctp' "$OUT/registrar.log")"
else
  fail "registrar did not start on sctp://$A1,$A2:3863"
  show "$OUT/registrar.log"
fi

# ---- 3. the Rust SCTP tests ---------------------------------------------------
# The binaries run at the same time (every test uses ephemeral ports): much of
# their time is spent waiting (the PU test of cli_tools sleeps on purpose).
if [ -n "${RSERPOOL_SCTP_TESTS:-}" ]; then
  declare -A rust_pid
  for t in $RSERPOOL_SCTP_TESTS; do
    "$t" sctp --test-threads 2 >"$OUT/rust-$(basename "$t").log" 2>&1 &
    rust_pid[$t]=$!
  done
  for t in $RSERPOOL_SCTP_TESTS; do
    name=$(basename "$t")
    if wait "${rust_pid[$t]}" &&
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

# The PEs of step 9 (R6 is up by now): one on both families, registering over
# IPv6; one on two IPv6 addresses, registering over IPv4.
"${NX6[@]}" "$BIN" pe --service echo --pool MixPool --listen "sctp://$A11,[$B11]:0" \
  --registrar "sctp://[$B10]:3863" >"$OUT/pe-mix4.log" 2>&1 </dev/null &
pids+=($!)
extra_pids+=($!)
"${NX6[@]}" "$BIN" pe --service echo --pool MixPool --listen "sctp://[$B12],[$B13]:0" \
  --registrar "sctp://$A10:3863" >"$OUT/pe-mix6.log" 2>&1 </dev/null &
pids+=($!)
extra_pids+=($!)

# ---- 4. RSPLIB's PE at our registrar, our tools over SCTP -------------------------------
pe1_registered() {
  N "$BIN" dump --registrar "sctp://$A1:3863" >"$OUT/dump.log" 2>&1 &&
    grep -A1 '^pool "EchoPool"' "$OUT/dump.log" | grep -q "home $R1_ID"
}
if until_ok 120 pe1_registered; then
  pass "rspserver registered at our registrar over SCTP ($(elapsed)); rserpool dump over SCTP:"
  show "$OUT/dump.log"
else
  fail "rspserver did not register"
  show "$OUT/rspserver.log"
  show "$OUT/registrar.log"
fi
if N "$BIN" resolve --registrar "sctp://$A2:3863" --pool EchoPool --json >"$OUT/resolve.log" 2>&1 &&
  grep -q '"elements":\[{' "$OUT/resolve.log" && grep -q "$A1" "$OUT/resolve.log"; then
  pass "rserpool resolve over SCTP (second address of the registrar) finds the PE at $A1"
else
  fail "resolve over SCTP"
  show "$OUT/resolve.log"
fi

# ---- 5. ENRP with rspregistrar ---------------------------------------------------------
r1_sees_both() {
  dump_has "sctp://$A1:3863" "$OUT/dump-r1.log" RspPool $RSP_ID &&
    grep -A1 '^pool "EchoPool"' "$OUT/dump-r1.log" | grep -q "home $R1_ID" &&
    grep -qE "peer $RSP_ID +$A3:9901 +active" "$OUT/dump-r1.log" &&
    grep -qE "peer $RSP2_ID +$A6:9901 +active" "$OUT/dump-r1.log"
}
if until_ok 90 r1_sees_both; then
  pass "R1 lists RSP's PE (home $RSP_ID) and its own; RSP and RSP2 are active peers ($(elapsed))"
  show "$OUT/dump-r1.log"
else
  fail "R1 and rspregistrar do not share their PEs"
  show "$OUT/dump-r1.log"
  show "$OUT/rspregistrar.log"
fi
r3_sees_both() {
  dump_has "sctp://$A4:3863" "$OUT/dump-r3.log" RspPool $RSP_ID &&
    grep -A1 '^pool "EchoPool"' "$OUT/dump-r3.log" | grep -q "home $R1_ID"
}
if until_ok 30 r3_sees_both; then
  pass "R3 (mentor: RSP) lists both PEs with their homes"
else
  fail "R3 does not list both PEs"
  show "$OUT/dump-r3.log"
fi
# RSPLIB's view, through ASAP (it answers handle table requests only to
# known peers).
h=$(home_at "sctp://$A3:3863" EchoPool)
if [ "$h" = "$R1_ID" ]; then
  pass "RSP resolves EchoPool to R1's PE (home $h)"
else
  fail "RSP resolves EchoPool to home '$h', want $R1_ID"
  show "$OUT/rspregistrar.log"
fi
# RSPLIB took every presence of ours (it drops one whose ENRP port is not
# the association's: we dial from our ENRP port) and answered our handle
# table requests (it refuses servers it does not know).
if grep -aE "Presence from peer .5eed.* no usable ENRP endpoint|HandleTableRequest from peer .5eed.*unknown" \
  "$OUT/rspregistrar.log" "$OUT/rspregistrar2.log" >"$OUT/rsplib-refusals.log"; then
  fail "RSPLIB refused our presences or table requests"
  show "$OUT/rsplib-refusals.log"
else
  pass "RSPLIB accepted our presences and answered our handle table requests"
fi
rsp2_has_both() {
  [ "$(home_at "sctp://$A6:3863" EchoPool)" = "$R1_ID" ] &&
    [ "$(home_at "sctp://$A6:3863" RspPool)" = "$RSP_ID" ]
}
if until_ok 30 rsp2_has_both; then
  pass "RSP2 (peer: R1) resolves both pools with their homes"
else
  fail "RSP2: EchoPool $(home_at "sctp://$A6:3863" EchoPool), RspPool $(home_at "sctp://$A6:3863" RspPool)"
  show "$OUT/rspregistrar2.log"
fi
echo "   ($(elapsed))"

# ---- 6. RSPLIB's PU through either registrar ----------------------------------------------
# In parallel: each rspterminal takes seconds to start.
echo_through term-r1-echopool $A1 EchoPool &
e1=$!
echo_through term-rsp-echopool $A3 EchoPool &
e2=$!
echo_through term-r1-rsppool $A1 RspPool &
e3=$!
if wait $e1; then
  pass "rspterminal through R1: $(grep -a hello- "$OUT/term-r1-echopool.log" | tail -1 | tr -d '\033' | cut -c1-60)"
else
  fail "rspterminal through R1 to EchoPool"
  show "$OUT/term-r1-echopool.log"
fi
if wait $e2; then
  pass "rspterminal through RSP reaches the PE registered at R1"
else
  fail "rspterminal through RSP to EchoPool"
  show "$OUT/term-rsp-echopool.log"
fi
if wait $e3; then
  pass "rspterminal through R1 reaches the PE registered at RSP"
else
  fail "rspterminal through R1 to RspPool"
  show "$OUT/term-r1-rsppool.log"
fi
echo "   ($(elapsed))"

# ---- 7. our PE at rspregistrar, reached by rspterminal -------------------------------
ourpe_at_rsp() {
  N "$BIN" resolve --registrar "sctp://$A3:3863" --pool OurEcho --json >"$OUT/resolve-ourecho.log" 2>&1 &&
    grep -qE "\"transport\":\"sctp://$A7:[0-9]+\",\"home\":$((RSP_ID))," "$OUT/resolve-ourecho.log"
}
if until_ok 60 ourpe_at_rsp; then
  pass "our PE registered at rspregistrar: $(grep -o '"id_hex":"[^"]*","pool":"OurEcho","transport":"[^"]*"' "$OUT/resolve-ourecho.log")"
else
  fail "our PE is not registered at rspregistrar"
  show "$OUT/resolve-ourecho.log"
  show "$OUT/pe-at-rsp.log"
fi
echo_through term-rsp-ourpe $A3 OurEcho &
e5=$!

# ---- 8. our PU, RSPLIB's ping-pong PEs, fail-over with the cookie -----------------------
# Two pings, SIGKILL to the PE that answered them, two more pings: the new PE
# must go on from the reply number in the cookie our PU echoed (3, 4), not
# start over at 1, and must not have refused the cookie echo.
pingpong_failover() {
  local fifo pid id a victim="" other=""
  fifo=$(mktemp -u)
  mkfifo "$fifo"
  "${NX[@]}" "$BIN" pu --registrar "sctp://$A3:3863" --reglife-unit ms --pool PingPool --pingpong \
    --linger 3s <"$fifo" >"$OUT/pu-pingpong.out" 2>"$OUT/pu-pingpong.err" &
  pid=$!
  pids+=($pid)
  exec 5>"$fifo"
  echo "ping-one" >&5
  echo "ping-two" >&5
  if ! wait_for "$OUT/pu-pingpong.out" "^pong 2 reply 2: ping-two" 60; then
    echo "    (no pong for the first pings)"
    exec 5>&-
    return 1
  fi
  id=$(grep -o 'connected to PE 0x[0-9a-f]*' "$OUT/pu-pingpong.err" | head -1 | sed 's/.*0x//')
  for a in $A8 $A9; do
    # its log names its PE id: "Trying to register $ID", "... ID is $ID"
    if grep -aq "\$$id" "$OUT/rspserver-pp-$a.log"; then victim=$a; else other=$a; fi
  done
  if [ -z "$victim" ]; then
    echo "    (PE $id is neither ping-pong PE)"
    exec 5>&-
    return 1
  fi
  echo "    | serving PE 0x$id ($victim) gets SIGKILL; $other should take over"
  kill -9 "${pp_pid[$victim]}"
  # Send on only once the PU has failed over (what a dying PE's kernel took is gone).
  wait_for "$OUT/pu-pingpong.err" "^failover from PE 0x$id" 60
  echo "ping-three" >&5
  echo "ping-four" >&5
  wait_for "$OUT/pu-pingpong.out" "^pong 4 " 60
  exec 5>&-
  for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  stop "$pid"
  rm -f "$fifo"
  sed 's/^/    | /' "$OUT/pu-pingpong.err" "$OUT/pu-pingpong.out"
  grep -qE "^failover from PE 0x$id to PE 0x[0-9a-f]+: .*cookie of 16 bytes echoed" "$OUT/pu-pingpong.err" &&
    grep -qx "pong 3 reply 3: ping-three" "$OUT/pu-pingpong.out" &&
    grep -qx "pong 4 reply 4: ping-four" "$OUT/pu-pingpong.out" &&
    ! grep -aq "bad cookie" "$OUT/rspserver-pp-$other.log"
}
if pingpong_failover; then
  pass "our PU failed over between RSPLIB's ping-pong PEs; the new PE took the echoed cookie (reply numbers go on)"
else
  fail "our PU with rspserver -pingpong: fail-over with the cookie"
  show "$OUT/pu-pingpong.err"
  show "$OUT/pu-pingpong.out"
  for a in $A8 $A9; do show "$OUT/rspserver-pp-$a.log"; done
fi
if wait $e5; then
  pass "rspterminal through RSP reaches our PE: $(grep -a hello- "$OUT/term-rsp-ourpe.log" | tail -1 | tr -d '\033' | cut -c1-60)"
else
  fail "rspterminal through RSP to our PE"
  show "$OUT/term-rsp-ourpe.log"
  show "$OUT/pe-at-rsp.log"
fi
echo "   ($(elapsed))"

# ---- 9. multi-homing across IPv4 and IPv6 ------------------------------------------------
if grep -qx "listening asap sctp://$A10,\[$B10\]:3863" "$OUT/registrar6.log"; then
  pass "R6: $(grep '^listening asap' "$OUT/registrar6.log")"
else
  fail "R6 is not on sctp://$A10,[$B10]:3863"
  show "$OUT/registrar6.log"
fi
mixed_listed() {
  local url=$1
  N6 "$BIN" resolve --registrar "$url" --pool MixPool --json >"$OUT/resolve-mix.log" 2>&1 &&
    grep -qE "\"transport\":\"sctp://$A11,\[$B11\]:[0-9]+\"" "$OUT/resolve-mix.log" &&
    grep -qE "\"transport\":\"sctp://\[$B12\],\[$B13\]:[0-9]+\"" "$OUT/resolve-mix.log"
}
if until_ok 30 mixed_listed "sctp://[$B10]:3863" && mixed_listed "sctp://$A10:3863"; then
  pass "R6 resolves (over IPv6 and IPv4) both PEs with every address: $(grep -o '"transport":"[^"]*"' "$OUT/resolve-mix.log" | grep -v asap | cut -d'"' -f4 | sort -u | tr '\n' ' ')"
else
  fail "the multi-homed PEs at R6"
  show "$OUT/resolve-mix.log"
  show "$OUT/pe-mix4.log"
  show "$OUT/pe-mix6.log"
fi
# --linger: the PU exits as soon as both replies are in; the long quiet time
# only keeps it from giving up on them in a slow guest.
if printf 'v6-one\nv6-two\n' | timeout 90 "${NX6[@]}" "$BIN" pu --registrar "sctp://[$B10]:3863" \
  --pool MixPool --linger 60s >"$OUT/pu-mix.out" 2>"$OUT/pu-mix.err" &&
  grep -qx v6-one "$OUT/pu-mix.out" && grep -qx v6-two "$OUT/pu-mix.out"; then
  pass "our PU gets its echo from a mixed-family PE ($(head -1 "$OUT/pu-mix.err"))"
else
  fail "our PU through R6"
  show "$OUT/pu-mix.err"
  show "$OUT/pu-mix.out"
fi
echo "   ($(elapsed))"

# The PEs and the registrar of steps 7-9 leave (deregistering) before the
# takeovers: steps 10-11 check which PEs R1, RSP2 and R3 own, and in the slow
# guest RSPLIB drops PEs whose keep-alives or updates come late.
kill "${extra_pids[@]}" 2>/dev/null
for ((i = 0; i < 150; i++)); do
  alive=0
  for p in "${extra_pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
  [ $alive = 0 ] && break
  sleep 0.1
done
for p in "${extra_pids[@]}"; do kill -9 "$p" 2>/dev/null; done

# ---- 10. RSP dies: R1 takes its PE over --------------------------------------------------
ka_before=$(kas_from "$OUT/rspserver2.log" $R1_ID)
kill -9 $rsp_pid
r1_owns_rsppool() { dump_has "sctp://$A1:3863" "$OUT/dump-r1.log" RspPool $R1_ID; }
if until_ok 60 r1_owns_rsppool &&
  grep -qE "peer $RSP_ID .*taken-over" "$OUT/dump-r1.log"; then
  pass "RSP killed: R1 took its PE over ($(elapsed))"
else
  fail "R1 did not take RSP's PE over"
  show "$OUT/dump-r1.log"
fi
# RSPLIB acked our INIT_TAKEOVER and applied our TAKEOVER_SERVER.
if grep -aqE "Acknowledging peer .${R1_ID#0x}'s takeover of .${RSP_ID#0x}" "$OUT/rspregistrar2.log" &&
  wait_for "$OUT/rspregistrar2.log" "Got TakeoverServer from peer .${R1_ID#0x} for target .${RSP_ID#0x}" 10; then
  pass "RSP2 acked R1's takeover and applied its TAKEOVER_SERVER"
else
  fail "RSP2 and R1's takeover"
  show "$OUT/rspregistrar2.log"
fi
# PE2 adopted R1 (H=1 keep-alive) and answers R1's keep-alives: it logs
# them, and R1 keeps it (a missing ack would remove it).
pe2_answers_r1() { [ "$(kas_from "$OUT/rspserver2.log" $R1_ID)" -ge $((ka_before + 2)) ]; }
if until_ok 60 pe2_answers_r1 && r1_owns_rsppool; then
  pass "PE2 answers R1's keep-alives ($(kas_from "$OUT/rspserver2.log" $R1_ID) so far)"
else
  fail "PE2 does not answer R1's keep-alives"
  show "$OUT/rspserver2.log"
fi
rsppool_home_r1() {
  [ "$(home_at "sctp://$A1:3863" RspPool)" = "$R1_ID" ] &&
    [ "$(home_at "sctp://$A4:3863" RspPool)" = "$R1_ID" ] &&
    [ "$(home_at "sctp://$A6:3863" RspPool)" = "$R1_ID" ]
}
if until_ok 30 rsppool_home_r1; then
  pass "R1, R3 and RSP2 resolve RspPool with R1 as home"
else
  fail "RspPool homes after the takeover: R1 $(home_at "sctp://$A1:3863" RspPool), R3 $(home_at "sctp://$A4:3863" RspPool), RSP2 $(home_at "sctp://$A6:3863" RspPool)"
fi
echo "   ($(elapsed))"

# ---- 11. R1 dies: RSP2 takes its PEs over ------------------------------------------------
# RSP2 waits for an ack from every peer it lists: let it drop the dead RSP
# first (it does so MAX-TIME-NO-RESPONSE after acking its takeover).
if ! wait_for "$OUT/rspregistrar2.log" "Dead peer .${RSP_ID#0x}" 30; then
  fail "RSP2 still lists the dead RSP"
  show "$OUT/rspregistrar2.log"
fi
ka1_before=$(kas_from "$OUT/rspserver.log" $RSP2_ID)
ka2_before=$(kas_from "$OUT/rspserver2.log" $RSP2_ID)
kill -9 $r1_pid
if wait_for "$OUT/rspregistrar2.log" "Takeover of peer .${R1_ID#0x} completed" 60; then
  pass "R1 killed: RSP2 took it over ($(elapsed))"
else
  fail "RSP2 did not take R1 over"
  show "$OUT/rspregistrar2.log"
fi
echo_through term-rsp2-echopool $A6 EchoPool &
e4=$!
rsp2_home() {
  [ "$(home_at "sctp://$A6:3863" EchoPool)" = "$RSP2_ID" ] &&
    [ "$(home_at "sctp://$A6:3863" RspPool)" = "$RSP2_ID" ]
}
if until_ok 30 rsp2_home; then
  pass "RSP2 resolves both pools with itself as home"
else
  fail "RSP2's homes after the takeover: EchoPool $(home_at "sctp://$A6:3863" EchoPool), RspPool $(home_at "sctp://$A6:3863" RspPool)"
fi
# R3 acked and follows: both PEs home at RSP2, R1 taken over by it (RSPLIB's
# TAKEOVER_SERVER never arrives; R3 sees the win through its audit and must
# not start a takeover of its own).
r3_follows() {
  dump_has "sctp://$A4:3863" "$OUT/dump-r3.log" EchoPool $RSP2_ID &&
    grep -A1 '^pool "RspPool"' "$OUT/dump-r3.log" | grep -q "home $RSP2_ID" &&
    N "$BIN" dump --registrar "sctp://$A4:3863" --json >"$OUT/dump-r3.json" 2>&1 &&
    grep -qE "\"id\":$((R1_ID)),[^}]*\"taken_over_by\":$((RSP2_ID))[,}]" "$OUT/dump-r3.json"
}
if until_ok 30 r3_follows; then
  pass "R3 follows: both PEs home at $RSP2_ID, R1 taken over by it"
  show "$OUT/dump-r3.log"
else
  fail "R3 after RSP2's takeover"
  show "$OUT/dump-r3.log"
  show "$OUT/dump-r3.json"
fi
pes_answer_rsp2() {
  [ "$(kas_from "$OUT/rspserver.log" $RSP2_ID)" -ge $((ka1_before + 2)) ] &&
    [ "$(kas_from "$OUT/rspserver2.log" $RSP2_ID)" -ge $((ka2_before + 2)) ]
}
# Two keep-alives after the takeover's: each comes KA_INTERVAL after the ack
# of the one before, which RSP2 waits for at most KA_TIMEOUT.
if until_ok $((2 * (KA_INTERVAL + KA_TIMEOUT) + 20)) pes_answer_rsp2; then
  pass "both PEs answer RSP2's keep-alives ($(kas_from "$OUT/rspserver.log" $RSP2_ID) and $(kas_from "$OUT/rspserver2.log" $RSP2_ID) so far)"
else
  fail "keep-alives from RSP2: PE1 got $(kas_from "$OUT/rspserver.log" $RSP2_ID) (before $ka1_before), PE2 $(kas_from "$OUT/rspserver2.log" $RSP2_ID) (before $ka2_before)"
  grep -a -E "Keep-alive timeout|removing it|Taking ownership" "$OUT/rspregistrar2.log" | show
  show "$OUT/rspserver.log"
fi
if wait $e4; then
  pass "rspterminal through RSP2 reaches PE1, which R1 had"
else
  fail "rspterminal through RSP2 after the takeover"
  show "$OUT/term-rsp2-echopool.log"
fi
echo "   ($(elapsed))"

# ---- 12. the capture ---------------------------------------------------------------------
sleep 1
stop "$cap_pid"
stop "$cap6_pid"
# One capture of both namespaces (step 9's is its own).
if [ -s "$OUT/cap6.pcap" ] && mergecap -w "$OUT/cap-all.pcap" "$OUT/cap.pcap" "$OUT/cap6.pcap" 2>"$OUT/mergecap.log"; then
  mv "$OUT/cap-all.pcap" "$OUT/cap.pcap"
else
  fail "no capture of step 9 to merge (see $OUT/dumpcap6.log, $OUT/mergecap.log)"
  show "$OUT/dumpcap6.log" "$OUT/mergecap.log"
fi
if [ -s "$OUT/cap.pcap" ]; then
  pass "captured $(stat -c %s "$OUT/cap.pcap") bytes of SCTP to $OUT/cap.pcap"
  if [ "${INTEROP_CHECK_IN_VM:-0}" = 1 ]; then
    if bash tests/interop/check-capture.sh --expect-file tests/interop/capture-expect.txt "$OUT/cap.pcap" 1 2 3 4 5 6 7 8 9; then
      pass "capture check"
    else
      fail "capture check"
    fi
  fi
else
  fail "no capture (see $OUT/dumpcap.log)"
  show "$OUT/dumpcap.log"
fi

echo "== $failures failure(s), $(elapsed) inside the VM; logs in $OUT"
exit "$failures"
