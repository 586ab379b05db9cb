// Checking an election record in the browser (docs/record.md): the C2SP
// checkpoint note, and a receipt's RFC 6962 inclusion proof, hashed with
// WebCrypto's SHA-256 (which needs HTTPS or localhost). No page of its
// own: the live page uses it, and so can any page that shows a receipt.
// It is only as good as the files the server sent: the offline verifier
// (`tally record verify`) is the check that counts.
"use strict";

(function (global) {
  const subtle = () => {
    if (!global.crypto || !global.crypto.subtle) throw new Error("WebCrypto needs HTTPS or localhost");
    return global.crypto.subtle;
  };

  const fromBase64 = (text) => Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
  const toBase64 = (bytes) => btoa(String.fromCharCode(...bytes));
  const fromHex = (hex) => Uint8Array.from(hex.match(/../g) || [], (h) => parseInt(h, 16));
  const toHex = (bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  const same = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);

  async function sha256(...parts) {
    const joined = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const part of parts) { joined.set(part, at); at += part.length; }
    return new Uint8Array(await subtle().digest("SHA-256", joined));
  }

  // A signed note: the text (ending in its newline), then signature lines
  // "— <name> <base64(key id ‖ signature)>" after a blank line.
  function parseNote(note) {
    const cut = note.lastIndexOf("\n\n");
    if (cut < 0) throw new Error("not a signed note");
    const text = note.slice(0, cut + 1);
    const signatures = note.slice(cut + 2).split("\n").filter((l) => l.startsWith("\u2014 ")).map((line) => {
      const [name, blob] = line.slice(2).split(" ");
      const bytes = fromBase64(blob);
      return { name, keyId: toHex(bytes.slice(0, 4)), signature: bytes.slice(4) };
    });
    return { text, signatures };
  }

  // The checkpoint's text: origin, tree size, base64 root, and nothing else.
  function parseCheckpoint(note) {
    const { text, signatures } = parseNote(note);
    const lines = text.split("\n");
    if (lines.length !== 4 || !/^(0|[1-9][0-9]*)$/.test(lines[1])) throw new Error("not a checkpoint");
    const root = fromBase64(lines[2]);
    if (root.length !== 32) throw new Error("the checkpoint's root is not a SHA-256 hash");
    return { origin: lines[0], size: Number(lines[1]), root, text, signatures };
  }

  // true or false; null where the browser has no Ed25519 in WebCrypto.
  async function verifyNote(note, verifierKey) {
    // <name>+<hex key id>+<base64(0x01 ‖ public key)>; a name holds no "+".
    const [keyName, keyId, ...rest] = verifierKey.trim().split("+");
    const key = rest.join("+");
    const raw = fromBase64(key);
    if (raw[0] !== 1 || raw.length !== 33) return false;
    const expectedId = toHex((await sha256(new TextEncoder().encode(keyName + "\n"), raw)).slice(0, 4));
    if (expectedId !== keyId) return false;
    const { text, signatures } = parseNote(note);
    const mine = signatures.find((s) => s.name === keyName && s.keyId === keyId);
    if (!mine) return false;
    let publicKey;
    try {
      publicKey = await subtle().importKey("raw", raw.slice(1), { name: "Ed25519" }, false, ["verify"]);
    } catch (e) {
      return null;
    }
    return subtle().verify({ name: "Ed25519" }, publicKey, mine.signature, new TextEncoder().encode(text));
  }

  // RFC 9162 §2.1.3.2: the leaf's index says on which side each hash of
  // the audit path goes, up to a root that must be the checkpoint's.
  async function verifyInclusion(receipt, proof) {
    const checkpoint = parseCheckpoint(proof.checkpoint);
    const bytes = fromHex(receipt.replace(/-/g, "").toLowerCase());
    if (bytes.length !== 16 || proof.tree_size !== checkpoint.size) return false;
    let fn = proof.leaf_index;
    let sn = proof.tree_size - 1;
    if (fn > sn) return false;
    let r = await sha256(new Uint8Array([0]), bytes);
    for (const hash of proof.audit_path.map(fromBase64)) {
      if (sn === 0) return false;
      if (fn % 2 === 1 || fn === sn) {
        r = await sha256(new Uint8Array([1]), hash, r);
        while (fn % 2 === 0 && fn !== 0) { fn = Math.floor(fn / 2); sn = Math.floor(sn / 2); }
      } else {
        r = await sha256(new Uint8Array([1]), r, hash);
      }
      fn = Math.floor(fn / 2);
      sn = Math.floor(sn / 2);
    }
    return sn === 0 && same(r, checkpoint.root);
  }

  // A voter's receipt against the record: "in-record" (with the proof),
  // "not-in-record", "not-ready" or "unknown".
  async function checkReceipt(base, receipt) {
    const response = await fetch(`${base}/v1/receipts/${encodeURIComponent(receipt)}/proof`);
    if (response.status === 409) return { status: "not-ready" };
    if (response.status === 404 || response.status === 400) return { status: "unknown" };
    if (!response.ok) throw new Error(`the proof route answered ${response.status}`);
    const proof = await response.json();
    return { status: (await verifyInclusion(receipt, proof)) ? "in-record" : "not-in-record", proof };
  }

  global.TallyRecord = { parseCheckpoint, verifyNote, verifyInclusion, checkReceipt, toBase64 };
})(globalThis);
