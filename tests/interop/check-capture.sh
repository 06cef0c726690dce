#!/usr/bin/env bash
# tests/interop/check-capture.sh [--expect-file FILE] CAP.pcap [ENRP_TYPE...] — wire-format check of
# an SCTP suite capture with Wireshark's dissectors (ASAP = SCTP PPID 11, ENRP
# = PPID 12): there must be ASAP frames, ENRP frames of every ENRP message type
# listed (decimal, e.g. 1 = ENRP_PRESENCE ... 9 = ENRP_TAKEOVER_SERVER), no
# malformed packet, and no ASAP/ENRP expert item of severity warning or above.
# With --expect-file, every `LABEL<TAB>DISPLAY-FILTER` line of FILE (# starts
# a comment) must match at least one frame.
# Prints PASS/FAIL lines; exit 0 on PASS.
set -uo pipefail
expect_file=
if [ "${1:-}" = --expect-file ]; then
  expect_file=$2
  shift 2
fi
cap=${1:?usage: check-capture.sh CAP.pcap [ENRP_TYPE...]}
shift
command -v tshark >/dev/null || { echo "FAIL: tshark is not installed"; exit 1; }
n_asap=$(tshark -r "$cap" -Y asap 2>/dev/null | wc -l)
n_enrp=$(tshark -r "$cap" -Y enrp 2>/dev/null | wc -l)
bad=$(tshark -r "$cap" -Y '_ws.malformed || ((asap || enrp) && _ws.expert.severity >= warning)' 2>/dev/null)
enrp_types=$(tshark -r "$cap" -Y enrp -T fields -e enrp.message_type 2>/dev/null | tr ',' '\n')
echo "    | ASAP messages by type:"
tshark -r "$cap" -Y asap -T fields -e asap.message_type 2>/dev/null | tr ',' '\n' | sort | uniq -c |
  sort -rn | sed 's/^/    |   /'
echo "    | ENRP messages by type:"
printf '%s\n' "$enrp_types" | grep . | sort -n | uniq -c | sed 's/^/    |   /'
missing=()
for t in "$@"; do
  printf '%s\n' "$enrp_types" | grep -qx "$t" || missing+=("$t")
done
absent=()
if [ -n "$expect_file" ]; then
  while IFS=$'\t' read -r label filter; do
    case "$label" in '' | '#'*) continue ;; esac
    n=$(tshark -r "$cap" -Y "$filter" 2>/dev/null | wc -l)
    echo "    | $n frame(s): $label"
    [ "$n" -gt 0 ] || absent+=("$label")
  done <"$expect_file"
fi
if [ "$n_asap" -gt 0 ] && [ -z "$bad" ] && [ ${#missing[@]} -eq 0 ] && [ ${#absent[@]} -eq 0 ]; then
  echo "PASS: tshark: $n_asap ASAP / $n_enrp ENRP frames${*:+ (ENRP types $* all present)}, none malformed, no ASAP/ENRP expert warnings${expect_file:+, every expected exchange present}"
  exit 0
fi
echo "FAIL: tshark: $n_asap ASAP / $n_enrp ENRP frames; missing ENRP types: ${missing[*]:-none}; nothing matched: $(printf '[%s] ' "${absent[@]}")none else; problems:"
printf '%s\n' "$bad" | head -20 | sed 's/^/    | /'
exit 1
