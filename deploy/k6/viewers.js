// Live viewers over WebSocket: each checks that versions never go back,
// that counts move only in groups of more than K ballots (the election's
// anonymity set) while voting is open, and measures the delay from a
// frame's creation (`at`) to its arrival.
//   k6 run -e LIVE=ws://127.0.0.1:8081 -e ELECTION=1 viewers.js
// A frame may carry no `version` and no counts: under `turnout_only` and
// `after_close`, and for everyone from the end of voting until `final`.
import ws from "k6/ws";
import { check } from "k6";
import { Counter, Trend } from "k6/metrics";

const LIVE = __ENV.LIVE || "ws://127.0.0.1:8081";
const ELECTION = __ENV.ELECTION;
const WATCH_MS = Number(__ENV.WATCH_MS || 20000);

const updateDelay = new Trend("tally_update_delay", true);
const backwards = new Counter("tally_versions_backwards");
const smallSteps = new Counter("tally_small_steps");
const frames = new Counter("tally_frames");

export const options = {
  vus: Number(__ENV.VUS || 50),
  iterations: Number(__ENV.VUS || 50),
  thresholds: {
    tally_versions_backwards: ["count==0"],
    // Every valid ballot here is a first ballot, so each group a worker
    // commits raises the turnout by more than K.
    tally_small_steps: ["count==0"],
    tally_frames: ["count>0"],
    tally_update_delay: ["p(99)<1000"],
    checks: ["rate==1"],
  },
};

export default function () {
  let lastVersion = -1;
  let lastTurnout = null;
  const response = ws.connect(`${LIVE}/v1/elections/${ELECTION}/live`, {}, (socket) => {
    socket.on("message", (text) => {
      const frame = JSON.parse(text);
      if (typeof frame.version === "number") {
        if (frame.version < lastVersion) backwards.add(1);
        lastVersion = frame.version;
      }
      if (frame.status === "open" && typeof frame.turnout === "number") {
        const step = frame.turnout - (lastTurnout ?? frame.turnout);
        if (step !== 0 && Math.abs(step) <= frame.anonymity_set) smallSteps.add(1);
        lastTurnout = frame.turnout;
      }
      frames.add(1);
      updateDelay.add(Math.max(0, Date.now() - Date.parse(frame.at)));
    });
    socket.setTimeout(() => socket.close(), WATCH_MS);
  });
  check(response, { "upgraded": (r) => r && r.status === 101 });
}
