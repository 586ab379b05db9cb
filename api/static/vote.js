// The voter page: sign up, log in, vote, follow the receipt. Every name
// and message from the server is inserted with textContent, never as HTML.
// The access token lives only in this page's memory: reloading logs out.
"use strict";

// Checks run on a receipt once it is shown: each is called with
// (receipt, electionId, container) and may add what it finds to the
// container. The check against the published election record
// (vote-record.js) registers itself here.
window.TallyVote = { receiptChecks: [] };

const REASONS = {
  too_young: "You are below this election's minimum age.",
  wrong_province: "This election is for another province.",
  not_open: "Voting is not open.",
  cancelled: "This election was cancelled.",
};

let session = null; // { citizenId, token }
let polling = null;

const $ = (id) => document.getElementById(id);

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function problem(text) {
  $("problem").textContent = text || "";
  $("problem").hidden = !text;
}

function show(section) {
  for (const id of ["welcome", "ballots", "receipt"]) $(id).hidden = id !== section;
  $("who").hidden = session === null;
}

async function call(method, path, body, headers = {}) {
  const init = { method, headers: { ...headers } };
  if (session) init.headers.authorization = "Bearer " + session.token;
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const data = response.status === 204 ? null : await response.json().catch(() => null);
  if (!response.ok) {
    const error = new Error((data && (data.detail || data.title)) || "the server answered " + response.status);
    error.status = response.status;
    error.code = data && data.code;
    throw error;
  }
  return data;
}

function liveUrl(electionId) {
  // The server names the live page: a URL, or ":PORT" for this host on
  // the broadcaster's port (one machine, no proxy in front).
  const base = document.querySelector('meta[name="tally-live-page"]').content;
  const root = base.startsWith(":") ? location.protocol + "//" + location.hostname + base : base;
  return root.replace(/\/$/, "") + "/elections/" + encodeURIComponent(electionId);
}

function uuid() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

async function logIn(citizenId, password) {
  session = null;
  const pair = await call("POST", "/v1/auth/login", { citizen_id: citizenId, password });
  session = { citizenId, token: pair.access_token };
  $("citizen").textContent = String(citizenId);
  await showElections();
}

async function showElections() {
  show("ballots");
  const list = $("elections");
  list.replaceChildren();
  const page = await call("GET", "/v1/elections?status=open&per_page=50");
  $("none").hidden = page.elections.length > 0;
  for (const election of page.elections) {
    const card = el("article", "election");
    card.dataset.election = election.election_id;
    card.append(el("h3", "", election.name));
    const live = el("a", "", "Live results");
    live.href = liveUrl(election.election_id);
    const [eligibility, ballot] = await Promise.all([
      call("GET", `/v1/elections/${election.election_id}/eligibility`),
      call("GET", `/v1/elections/${election.election_id}/ballot`),
    ]);
    const verdict = el("p", "eligibility");
    verdict.dataset.eligible = String(eligibility.eligible);
    if (!eligibility.eligible) {
      verdict.textContent = REASONS[eligibility.reason] || "You may not vote here (" + eligibility.reason + ").";
      card.append(verdict, live);
    } else if (ballot.voted) {
      verdict.textContent = "You have voted in this election.";
      card.append(verdict, live);
    } else {
      verdict.textContent = "You may vote: choose one runner per post (or leave a post out).";
      card.append(verdict, ballotForm(election), live);
    }
    list.append(card);
  }
}

function ballotForm(election) {
  const form = el("form", "ballot");
  for (const [index, post] of election.posts.entries()) {
    const fieldset = el("fieldset");
    fieldset.append(el("legend", "", post.post));
    for (const runner of post.runners) {
      const label = el("label", "runner");
      const radio = el("input");
      radio.type = "radio";
      radio.name = "post-" + index;
      radio.value = String(runner.citizen_id);
      label.append(radio, el("span", "name", runner.full_name));
      fieldset.append(label);
    }
    form.append(fieldset);
  }
  const cast = el("button", "cast", "Cast my ballot");
  cast.type = "submit";
  form.append(cast);
  // One key per ballot, kept for its retries, so a retry counts once.
  const key = uuid();
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const selections = Array.from(form.querySelectorAll("input:checked"), (r) => Number(r.value));
    if (selections.length === 0) return problem("Choose at least one runner.");
    cast.disabled = true;
    try {
      const path = `/v1/elections/${election.election_id}/ballots`;
      const answer = await call("POST", path, { selections }, { "idempotency-key": key });
      problem("");
      showReceipt(answer.receipt, election.election_id);
    } catch (e) {
      problem(e.message);
      cast.disabled = false;
    }
  });
  return form;
}

function showReceipt(receipt, electionId) {
  show("receipt");
  $("receipt-id").textContent = receipt;
  // A receipt looked up without signing in does not name its election.
  $("live-link").hidden = electionId === null;
  if (electionId !== null) $("live-link").href = liveUrl(electionId);
  $("receipt-checks").replaceChildren();
  for (const check of window.TallyVote.receiptChecks) check(receipt, electionId, $("receipt-checks"));
  const update = async () => {
    try {
      const status = await call("GET", "/v1/receipts/" + encodeURIComponent(receipt));
      $("receipt-status").textContent = status.status;
      $("receipt-reason").textContent = status.status === "pending"
        ? "Ballots are recorded in groups, so no count narrows down to yours: this changes once more ballots arrive, or when the election ends."
        : status.reason ? "(" + status.reason + ")" : "";
      if (status.status !== "pending") stopPolling();
    } catch (e) {
      problem(e.message);
    }
  };
  stopPolling();
  update();
  polling = setInterval(update, 3000);
}

function stopPolling() {
  if (polling !== null) clearInterval(polling);
  polling = null;
}

function fields(form) {
  return Object.fromEntries(new FormData(form).entries());
}

$("signup").addEventListener("submit", async (event) => {
  event.preventDefault();
  const f = fields(event.target);
  const citizenId = Number(f.citizen_id);
  try {
    await call("POST", "/v1/auth/signup", {
      citizen_id: citizenId, password: f.password, phone: f.phone.trim(), enrollment_code: f.enrollment_code,
    });
    problem("");
    await logIn(citizenId, f.password);
  } catch (e) {
    problem(e.message);
  }
});

$("login").addEventListener("submit", async (event) => {
  event.preventDefault();
  const f = fields(event.target);
  try {
    await logIn(Number(f.citizen_id), f.password);
    problem("");
  } catch (e) {
    problem(e.message);
  }
});

$("logout").addEventListener("click", async () => {
  stopPolling();
  await call("POST", "/v1/auth/logout").catch(() => {});
  session = null;
  show("welcome");
});

$("back").addEventListener("click", () => {
  stopPolling();
  if (session === null) return show("welcome");
  showElections().catch((e) => problem(e.message));
});

$("lookup").addEventListener("submit", (event) => {
  event.preventDefault();
  problem("");
  showReceipt(fields(event.target).receipt.trim(), null);
});
