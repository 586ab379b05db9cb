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

function showElection() {
  const id = location.pathname.split("/").pop();
  const connection = document.getElementById("connection");
  const setState = (state, text) => { connection.dataset.state = state; connection.textContent = text; };
  let version = -1;
  let delay = 500;
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
