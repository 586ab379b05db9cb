// "Is my ballot in the record?": the receipt's inclusion proof, checked in
// this browser against the signed checkpoint's root (record.js). The
// answer is only as good as the files this server sent; the page says so.
"use strict";

const RECORD_ANSWERS = {
  "in-record": "Your ballot is in the election's record: your receipt's proof leads to the signed root.",
  "not-in-record": "Your receipt's proof does NOT lead to the record's root. Keep your receipt and report this.",
  "not-ready": "The record is published once the count is final. Check again then.",
  unknown: "This receipt is in no record: it is still pending, was rejected, or was never issued.",
};

window.TallyVote.receiptChecks.push((receipt, _electionId, container) => {
  const line = document.createElement("p");
  const ask = document.createElement("button");
  ask.type = "button";
  ask.className = "link";
  ask.textContent = "Is my ballot in the election record?";
  const answer = document.createElement("span");
  answer.id = "record-answer";
  ask.addEventListener("click", async () => {
    answer.textContent = " checking…";
    try {
      const found = await window.TallyRecord.checkReceipt("", receipt);
      const where = found.proof ? ` (leaf ${found.proof.leaf_index + 1} of ${found.proof.tree_size})` : "";
      answer.textContent = " " + RECORD_ANSWERS[found.status] + where;
      answer.dataset.status = found.status;
    } catch (e) {
      answer.textContent = " The check failed: " + e.message;
    }
  });
  line.append(ask, answer);
  const caveat = document.createElement("p");
  caveat.className = "meta";
  caveat.textContent =
    "This check runs in your browser, but on a proof this same server sent, so on its own it proves " +
    "little. To check without trusting this server, download the election's record and run " +
    "`tally record prove RECEIPT --dir DIR` with a verifier key you got elsewhere (see docs/record.md). " +
    "Browsers check only on HTTPS or localhost.";
  container.append(line, caveat);
});
