// Reading: the election list, one election, and its results.
//   k6 run -e API=http://127.0.0.1:8080 -e ELECTION=1 browse.js
// Results carry no `version` (nor counts) while they are hidden: under
// `turnout_only` and `after_close`, and from the end of voting until
// `final`.
import http from "k6/http";
import { check } from "k6";

const API = __ENV.API || "http://127.0.0.1:8080";
const ELECTION = __ENV.ELECTION;

export const options = {
  vus: Number(__ENV.VUS || 16),
  duration: __ENV.DURATION || "30s",
  thresholds: {
    http_req_failed: ["rate<0.01"],
    http_req_duration: ["p(95)<100", "p(99)<250"],
    checks: ["rate>0.99"],
  },
};

export default function () {
  const list = http.get(`${API}/v1/elections?status=open`, { tags: { name: "list" } });
  check(list, { "list answered": (r) => r.status === 200 && Array.isArray(r.json("elections")) });
  const one = http.get(`${API}/v1/elections/${ELECTION}`, { tags: { name: "election" } });
  check(one, { "election answered": (r) => r.status === 200 && r.json("election_id") === Number(ELECTION) });
  const results = http.get(`${API}/v1/elections/${ELECTION}/results`, { tags: { name: "results" } });
  check(results, {
    "results answered": (r) =>
      r.status === 200 &&
      r.json("election_id") === Number(ELECTION) &&
      (r.json("version") == null || r.json("version") >= 0),
  });
}
