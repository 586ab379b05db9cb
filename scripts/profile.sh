#!/usr/bin/env bash
# Where the CPU goes while ballots are cast at full speed: `tally serve`
# (every role) under wrk, sampled by `perf record -a -g`, written as a
# flame graph and a per-process share. Also prints the CPU time `tally`
# spends per recorded ballot, which the machine's other load disturbs far
# less than ballots/s.
#
#   make profile-build                 # release code with frame pointers
#   scripts/profile.sh NAME            # docs/perf/NAME.svg and NAME.txt
#
# env: N voters (200000), D seconds of load (20), C connections (128),
# STACKS=dwarf to unwind a build without frame pointers (heavier, sampled
# at 199 Hz),
# PROFILED_TALLY (target/profiling/tally), PROFILED_BENCH (target/profiling/tally-bench).
# Needs wrk, perf (linux-perf) and inferno (cargo install inferno).
set -euo pipefail
NAME=${1:?usage: scripts/profile.sh NAME}
N=${N:-200000}; D=${D:-20}; C=${C:-128}
B=${PROFILED_TALLY:-target/profiling/tally}
BENCH=${PROFILED_BENCH:-target/profiling/tally-bench}
S=$(mktemp -d /tmp/tally-profile.XXXX)
OUT=docs/perf; mkdir -p "$OUT"
q() { psql -h 127.0.0.1 -U postgres -d tally -tAc "$1"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

export TALLY_LIMITS__PER_CLIENT_PER_MINUTE=0
# Ports of its own, so a stack left running by `make up` is not measured.
export TALLY_HTTP__API_ADDR=127.0.0.1:18480 TALLY_HTTP__BROADCASTER_ADDR=127.0.0.1:18481
export TALLY_HTTP__ADMIN_ADDR=127.0.0.1:18482
"$B" migrate >"$S/migrate.log" 2>&1
"$BENCH" --tally "$B" provision --voters "$N" --output "$S/voters.json" >"$S/provision.log" 2>&1
python3 - "$S" <<'PY'
import json, sys
s = sys.argv[1]
p = json.load(open(f"{s}/voters.json"))
open(f"{s}/tokens", "w").write("\n".join(p["tokens"]) + "\n")
open(f"{s}/env", "w").write(f"ELECTION={p['election_id']}\nRUNNER={p['runners'][0]}\n")
PY
# shellcheck disable=SC1091
. "$S/env"
cat >"$S/cast.lua" <<'LUA'
-- One ballot per request, each with the next voter's token; the two wrk
-- threads take alternate lines so no voter is used twice.
local made = 0
function setup(thread) thread:set("id", made); made = made + 1 end
function init()
  voters, next_voter = {}, 0
  local line_no = 0
  for line in io.lines(os.getenv("TOKENS")) do
    if line_no % 2 == id then voters[#voters + 1] = line end
    line_no = line_no + 1
  end
  path = "/v1/elections/" .. os.getenv("ELECTION") .. "/ballots"
  body = '{"selections":[' .. os.getenv("RUNNER") .. ']}'
end
function request()
  next_voter = next_voter + 1
  local token = voters[next_voter] or voters[1]
  return wrk.format("POST", path,
    {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. token}, body)
end
LUA

setsid "$B" serve >"$S/serve.log" 2>&1 </dev/null &
P=$!
trap 'kill $P 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do curl -fsS -o /dev/null --max-time 2 http://127.0.0.1:18482/readyz && break; sleep 0.5; done
before_rows=$(q "select count(*) from voter_roll where election_id=$ELECTION")
before_ticks=$(cpu_ticks $P)
TOKENS=$S/tokens ELECTION=$ELECTION RUNNER=$RUNNER \
  wrk -t2 -c"$C" -d"${D}s" --latency -s "$S/cast.lua" http://127.0.0.1:18480 >"$S/wrk.txt" 2>&1 &
W=$!
sleep 3
if [ "${STACKS:-}" = dwarf ]; then stacks=(--call-graph dwarf,16384 -F 199); else stacks=(-g); fi
perf record -a "${stacks[@]}" -e cpu-clock -o "$S/perf.data" -- sleep $((D - 6)) 2>"$S/perf.log"
wait $W
prev=-1; rows=$(q "select count(*) from voter_roll where election_id=$ELECTION")
while [ "$rows" != "$prev" ]; do prev=$rows; sleep 1; rows=$(q "select count(*) from voter_roll where election_id=$ELECTION"); done
after_ticks=$(cpu_ticks $P)
recorded=$((rows - before_rows))
hz=$(getconf CLK_TCK)

perf script -i "$S/perf.data" 2>/dev/null | inferno-collapse-perf >"$S/stacks"
inferno-flamegraph --title "tally serve under wrk: $NAME" <"$S/stacks" >"$OUT/$NAME.svg"
{
  echo "# $NAME: wrk -c$C -d${D}s, $N voters provisioned"
  grep -E "Requests/sec|99%|Non-2xx" "$S/wrk.txt" || true
  echo "recorded: $recorded ballots"
  echo "tally CPU per recorded ballot: $(echo "($after_ticks - $before_ticks) * 1000000 / $hz / $recorded" | bc) us"
  echo "# share of samples by process (perf report --sort comm)"
  perf report -i "$S/perf.data" --no-children --sort comm --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -8
} | tee "$OUT/$NAME.txt"
echo "flame graph: $OUT/$NAME.svg"
