// Casting ballots with pre-issued tokens (see `tally-bench provision`),
// then polling each receipt. Every voter votes once.
//   k6 run -e API=http://127.0.0.1:8080 -e VOTERS_FILE=voters.json -e RATE=100 vote.js
// Workers hold at least K ballots of an open election (its anonymity set)
// and record them only in groups, so a receipt polled right away is
// usually `pending`. A pending answer names no election: it is the same
// for any well-formed receipt that is neither recorded nor rejected.
// Waiting for every ballot to be recorded needs the election closed
// first (scripts/load.sh does that after this script).
import http from "k6/http";
import exec from "k6/execution";
import { check } from "k6";
import { SharedArray } from "k6/data";

const API = __ENV.API || "http://127.0.0.1:8080";
const voters = JSON.parse(open(__ENV.VOTERS_FILE));
const tokens = new SharedArray("tokens", () => voters.tokens);

// An open model: ballots arrive at RATE per second whether or not earlier
// ones were answered, as voters do, so a slow server shows as latency and
// as iterations k6 had no free VU for (`dropped_iterations`), never as a
// quietly lower rate.
const RATE = Number(__ENV.RATE || 100);
const VUS = Number(__ENV.VUS || 32);

export const options = {
  scenarios: {
    vote: {
      executor: "constant-arrival-rate",
      rate: RATE,
      timeUnit: "1s",
      duration: `${Math.ceil(tokens.length / RATE)}s`,
      preAllocatedVUs: VUS,
      maxVUs: VUS * 4,
      gracefulStop: "30s",
    },
  },
  thresholds: {
    http_req_failed: ["rate<0.01"],
    "http_req_duration{name:ballot}": ["p(95)<250", "p(99)<500"],
    "checks{check:ballot accepted}": ["rate>0.99"],
    // A voter k6 could not start in time is a ballot the server never saw.
    dropped_iterations: [`count<=${Math.floor(tokens.length / 100)}`],
  },
};

export default function () {
  const i = exec.scenario.iterationInTest;
  if (i >= tokens.length) return; // the last second may start more than there are voters
  const headers = { authorization: `Bearer ${tokens[i]}`, "content-type": "application/json" };
  const body = JSON.stringify({ selections: [voters.runners[i % voters.runners.length]] });
  const ballot = http.post(`${API}/v1/elections/${voters.election_id}/ballots`, body, { headers, tags: { name: "ballot" } });
  const accepted = check(ballot, { "ballot accepted": (r) => r.status === 202 }, { check: "ballot accepted" });
  if (!accepted) return;
  const receipt = ballot.json("receipt");
  const status = http.get(`${API}/v1/receipts/${receipt}`, { tags: { name: "receipt" } });
  check(status, {
    "receipt known": (r) =>
      r.status === 200 &&
      ((r.json("status") === "pending" && r.json("election_id") == null) ||
        (r.json("status") === "recorded" && r.json("election_id") === voters.election_id)),
  });
}
