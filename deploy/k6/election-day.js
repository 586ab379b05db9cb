// Election day over HTTP alone, for a staging deployment: each voter of a
// CSV signs up with an enrollment code, logs in, finds the open election,
// checks their eligibility, casts a ballot and polls the receipt. Nothing
// is read from or written to the database by this script.
//   k6 run -e API=https://staging.example.org -e CODES_FILE=codes.csv \
//     [-e ELECTION=ID] [-e RATE=10] --summary-export summary.json election-day.js
// CODES_FILE has `citizen_id,enrollment_code` lines, as written by
//   tally citizens codes --ids 1001,1002,... > codes.csv
// for test citizens of the staging registry (docs/operations.md, "Load
// testing a deployment"). Issuing codes replaces older ones, and a code
// works once: make a fresh file for every run.
// Every request comes from this machine's address: raise the per-address
// limits of the deployment under test for the run (the same page says
// which), or they, not the server's capacity, are what is measured.
import http from "k6/http";
import exec from "k6/execution";
import { check, fail, sleep } from "k6";
import { randomBytes } from "k6/crypto";
import { SharedArray } from "k6/data";

const API = (__ENV.API || "http://127.0.0.1:8080").replace(/\/$/, "");
const RATE = Number(__ENV.RATE || 10);
const PASSWORD = __ENV.PASSWORD || "election-day load test password";
// Sign-up needs a phone number no other account holds.
const PHONE_PREFIX = __ENV.PHONE_PREFIX || "+1999";
const RECEIPT_POLLS = Number(__ENV.RECEIPT_POLLS || 5);

const voters = new SharedArray("voters", () =>
  open(__ENV.CODES_FILE)
    .split("\n")
    .map((line) => line.trim())
    .filter((line) => /^\d+,/.test(line))
    .map((line) => {
      const [id, code] = line.split(",");
      return { id: Number(id), code: code.trim() };
    }),
);

export const options = {
  scenarios: {
    election_day: {
      // Voters arrive at RATE per second however slow the answers: a slow
      // deployment shows as latency and dropped iterations.
      executor: "constant-arrival-rate",
      rate: RATE,
      timeUnit: "1s",
      duration: `${Math.max(1, Math.ceil(voters.length / RATE))}s`,
      // A voter takes about RECEIPT_POLLS seconds (one poll a second) plus
      // a few requests: that many arrivals are in flight at once. VUs made
      // up front, since one started mid-run comes too late for its voter.
      preAllocatedVUs: Math.min(voters.length, RATE * (RECEIPT_POLLS + 3)),
      maxVUs: Math.max(RATE * (RECEIPT_POLLS + 3) * 2, 10),
      gracefulStop: `${RECEIPT_POLLS + 30}s`,
    },
  },
  thresholds: {
    http_req_failed: ["rate<0.01"],
    checks: ["rate>0.99"],
    // Sign-up and login hash a password on purpose: slower than the rest.
    "http_req_duration{name:signup}": ["p(95)<2000"],
    "http_req_duration{name:login}": ["p(95)<2000"],
    "http_req_duration{name:eligibility}": ["p(95)<250"],
    "http_req_duration{name:ballot}": ["p(95)<250", "p(99)<500"],
    "http_req_duration{name:receipt}": ["p(95)<250"],
    dropped_iterations: [`count<=${Math.floor(voters.length / 100)}`],
  },
};

export function setup() {
  if (voters.length === 0) fail(`no citizen_id,enrollment_code lines in ${__ENV.CODES_FILE}`);
  if (__ENV.ELECTION) return { election: Number(__ENV.ELECTION) };
  const open = http.get(`${API}/v1/elections?status=open&per_page=1`, { tags: { name: "elections" } });
  const first = open.status === 200 ? open.json("elections.0.election_id") : undefined;
  if (!first) fail("no open election: give ELECTION=ID or open one");
  return { election: first };
}

function uuid() {
  const b = new Uint8Array(randomBytes(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

const json = { "content-type": "application/json" };

export default function (data) {
  const i = exec.scenario.iterationInTest;
  if (i >= voters.length) return;
  const voter = voters[i];
  const phone = PHONE_PREFIX + String(voter.id).padStart(8, "0").slice(-8);

  const signup = http.post(`${API}/v1/auth/signup`, JSON.stringify({
    citizen_id: voter.id, password: PASSWORD, phone, enrollment_code: voter.code,
  }), { headers: json, tags: { name: "signup" } });
  if (!check(signup, { "signed up": (r) => r.status === 201 })) return;

  const login = http.post(`${API}/v1/auth/login`, JSON.stringify({ citizen_id: voter.id, password: PASSWORD }),
    { headers: json, tags: { name: "login" } });
  if (!check(login, { "logged in": (r) => r.status === 200 && !!r.json("access_token") })) return;
  const auth = { ...json, authorization: `Bearer ${login.json("access_token")}` };

  const election = http.get(`${API}/v1/elections/${data.election}`, { tags: { name: "election" } });
  const eligibility = http.get(`${API}/v1/elections/${data.election}/eligibility`,
    { headers: auth, tags: { name: "eligibility" } });
  if (!check(eligibility, { "eligible": (r) => r.status === 200 && r.json("eligible") === true })) return;

  // One runner per post, spread over the runners by citizen id.
  const selections = election.json("posts").map((post) => post.runners[voter.id % post.runners.length].citizen_id);
  const ballot = http.post(`${API}/v1/elections/${data.election}/ballots`, JSON.stringify({ selections }),
    { headers: { ...auth, "idempotency-key": uuid() }, tags: { name: "ballot" } });
  if (!check(ballot, { "ballot accepted": (r) => r.status === 202 })) return;

  // Workers record ballots in groups of more than K, holding the latest K
  // until more arrive or the election ends: pending is a right answer.
  const receipt = ballot.json("receipt");
  let status = "pending";
  for (let poll = 0; poll < RECEIPT_POLLS && status === "pending"; poll++) {
    sleep(1);
    const answer = http.get(`${API}/v1/receipts/${receipt}`, { tags: { name: "receipt" } });
    check(answer, { "receipt answered": (r) => r.status === 200 });
    status = answer.status === 200 ? answer.json("status") : status;
  }
  check(status, { "receipt not rejected": (s) => s === "pending" || s === "recorded" });
}
