// The live results page. Every name is inserted with textContent, never as
// HTML, so a runner called "<script>" is shown, not run.
"use strict";

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

async function showIndex() {
  const list = document.getElementById("elections");
  const response = await fetch("/v1/live/elections");
  const elections = response.ok ? await response.json() : [];
  document.getElementById("empty").hidden = elections.length > 0;
  for (const e of elections) {
    const item = el("li");
    const link = el("a", "", e.name);
    link.href = "/elections/" + encodeURIComponent(e.election_id);
    item.append(link, el("span", "status", e.status));
    list.append(item);
  }
}

function render(message) {
  document.getElementById("status").textContent = message.status + (message.final ? " · final" : "");
  document.getElementById("turnout").textContent =
    message.turnout === undefined ? "hidden until final" : message.turnout.toLocaleString();
  document.getElementById("cadence").textContent =
    "Updated every " + (message.anonymity_set + 1) + " ballots or more, so no single ballot shows.";
  const updated = document.getElementById("updated");
  updated.textContent = new Date(message.at).toLocaleTimeString();
  updated.dateTime = message.at;
  const posts = document.getElementById("posts");
  posts.replaceChildren();
  for (const post of message.posts) {
    const section = el("section", "post");
    section.append(el("h2", "", post.post));
    const total = post.runners.reduce((sum, r) => sum + (r.votes || 0), 0);
    for (const runner of post.runners) {
      const row = el("div", "runner");
      row.dataset.runner = runner.citizen_id;
      const label = el("div", "label");
      const votes = runner.votes;
      const share = votes === undefined || total === 0 ? 0 : (100 * votes) / total;
      const figure = votes === undefined ? "–" : votes.toLocaleString() + " (" + share.toFixed(1) + "%)";
      label.append(el("span", "name", runner.full_name), el("span", "votes", figure));
      const bar = el("div", "bar");
      const fill = el("span");
      fill.style.width = share + "%";
      bar.append(fill);
      row.append(label, bar);
      section.append(row);
    }
    posts.append(section);
  }
}

// Once the election is final and its record built: the checkpoint, the
// files, and a voter's receipt checked against the record.
async function showRecord(id) {
  const base = "";
  const checkpoint = await fetch(`${base}/v1/elections/${encodeURIComponent(id)}/record/checkpoint`);
  if (!checkpoint.ok) return false;
  const note = await checkpoint.text();
  const section = document.getElementById("record");
  document.getElementById("record-checkpoint").textContent = note;
  const key = await fetch(`${base}/v1/record/verifier-key`).then((r) => (r.ok ? r.text() : ""));
  document.getElementById("record-key").textContent = key.trim();
  const signed = key ? await TallyRecord.verifyNote(note, key).catch(() => false) : false;
  document.getElementById("record-signature").textContent = signed === null
    ? "this browser cannot check Ed25519; the offline verifier does"
    : signed ? "the checkpoint's signature checks out here" : "the checkpoint's signature does NOT check out";
  const files = document.getElementById("record-files");
  const manifest = await fetch(`${base}/v1/elections/${encodeURIComponent(id)}/record/MANIFEST`);
  const names = manifest.ok ? (await manifest.text()).split("\n\n")[0].split("\n").map((l) => l.split("  ")[1]) : [];
  files.replaceChildren();
  for (const name of names.filter(Boolean).concat("MANIFEST")) {
    const item = el("li");
    const link = el("a", "", name);
    link.href = `${base}/v1/elections/${encodeURIComponent(id)}/record/${name}`;
    link.download = name;
    item.append(link);
    files.append(item);
  }
  const result = document.getElementById("record-result");
  document.getElementById("record-check").onclick = async () => {
    const receipt = document.getElementById("record-receipt").value.trim();
    result.textContent = "checking…";
    try {
      const found = await TallyRecord.checkReceipt(base, receipt);
      result.dataset.status = found.status;
      result.textContent = {
        "in-record": found.proof && `Your ballot is in the record: leaf ${found.proof.leaf_index + 1} of ${found.proof.tree_size}, checked in this browser.`,
        "not-in-record": "The proof does not lead to the signed checkpoint: your ballot is NOT shown to be in the record.",
        "not-ready": "The record is not built yet.",
        "unknown": "No recorded ballot has this receipt.",
      }[found.status];
    } catch (e) {
      result.textContent = String(e.message || e);
    }
  };
  section.hidden = false;
  return true;
}

function showElection() {
  const id = location.pathname.split("/").pop();
  const connection = document.getElementById("connection");
  const setState = (state, text) => { connection.dataset.state = state; connection.textContent = text; };
  let version = -1;
  let delay = 500;
  let recordShown = false;
  fetch("/v1/live/elections").then((r) => (r.ok ? r.json() : [])).then((list) => {
    const found = list.find((e) => String(e.election_id) === id);
    if (found) { document.getElementById("title").textContent = found.name; document.title = found.name + " · Tally"; }
  });
  const connect = () => {
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    const socket = new WebSocket(scheme + location.host + "/v1/elections/" + encodeURIComponent(id) + "/live");
    socket.onopen = () => { setState("live", "live"); delay = 500; };
    socket.onmessage = (event) => {
      const message = JSON.parse(event.data);
      if (message.type !== "tally" || message.version < version) return;
      version = message.version;
      render(message);
      // The record follows the final mark within seconds; ask until it is there.
      if (message.final && !recordShown) {
        recordShown = true;
        const ask = (tries) => showRecord(id).then((shown) => {
          if (!shown && tries > 0) setTimeout(() => ask(tries - 1), 3000);
        }).catch(() => {});
        ask(20);
      }
    };
    socket.onclose = (event) => {
      if (event.code === 1008 || event.reason === "feed ended") version = -1;
      setState("offline", "reconnecting…");
      setTimeout(connect, delay);
      delay = Math.min(delay * 2, 15000);
    };
  };
  connect();
}

if (document.body.dataset.page === "index") showIndex(); else showElection();
