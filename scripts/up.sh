#!/usr/bin/env bash
# `make up`: migrate, seed the demo, then run every role with
# `tally-bench demo` beside it, so the demo election moves on its own.
# Ctrl-C stops both; the demo stops by itself once its electorate voted.
set -euo pipefail
# Arguments, not TALLY_* variables: every TALLY_ variable is a setting.
tally=${1:-target/release/tally}
bench=${2:-target/release/tally-bench}

"$tally" migrate
"$tally" seed-demo

# The demo's whole electorate signs up and votes from 127.0.0.1, which
# the per-address limits would otherwise stop after a handful of
# sign-ups; so would deploy/k6/election-day.js run against this stack,
# whose voters also poll their receipts. Only this local stack lifts
# them; set them to override.
export TALLY_AUTH__SIGNUP_ATTEMPTS_PER_IP=${TALLY_AUTH__SIGNUP_ATTEMPTS_PER_IP:-1000000}
export TALLY_AUTH__LOGIN_ATTEMPTS_PER_IP=${TALLY_AUTH__LOGIN_ATTEMPTS_PER_IP:-1000000}
export TALLY_LIMITS__PER_CLIENT_PER_MINUTE=${TALLY_LIMITS__PER_CLIENT_PER_MINUTE:-1000000}
export TALLY_LIMITS__RECEIPTS_PER_CLIENT_PER_MINUTE=${TALLY_LIMITS__RECEIPTS_PER_CLIENT_PER_MINUTE:-1000000}

"$tally" serve &
serve=$!
"$bench" --tally "$tally" demo --rate "${DEMO_RATE:-20}" --voters "${DEMO_VOTERS:-3000}" &
demo=$!
trap 'kill "$demo" "$serve" 2>/dev/null || true; wait' INT TERM
status=0
wait "$serve" || status=$?
kill "$demo" 2>/dev/null || true
exit "$status"
