// Runs the browser's record checks (common/http/static/record.js) under
// Node's WebCrypto against a real proof, a tampered one, and the signed
// checkpoint. Usage: node record_check.mjs PROOF.json RECEIPT VERIFIER_KEY
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

const [, , proofFile, receipt, verifierKey] = process.argv;
await import(fileURLToPath(new URL("../../common/http/static/record.js", import.meta.url)));
const { verifyInclusion, verifyNote, parseCheckpoint } = globalThis.TallyRecord;
const proof = JSON.parse(readFileSync(proofFile, "utf8"));

const tampered = structuredClone(proof);
if (tampered.audit_path.length > 0) {
  const first = Buffer.from(tampered.audit_path[0], "base64");
  first[0] ^= 1;
  tampered.audit_path[0] = first.toString("base64");
} else {
  tampered.leaf_index += 1;
}
const otherReceipt = receipt.replace(/[0-9a-f]$/, (c) => (c === "0" ? "1" : "0"));
// The same name and key id with another key: the signature must fail.
const [name, id, ...rest] = verifierKey.split("+");
const key = rest.join("+");
const otherKey = Buffer.from(key, "base64");
otherKey[5] ^= 1;

console.log(JSON.stringify({
  size: parseCheckpoint(proof.checkpoint).size,
  inRecord: await verifyInclusion(receipt, proof),
  tamperedPath: await verifyInclusion(receipt, tampered),
  otherReceipt: await verifyInclusion(otherReceipt, proof),
  signed: await verifyNote(proof.checkpoint, verifierKey),
  otherKey: await verifyNote(proof.checkpoint, `${name}+${id}+${otherKey.toString("base64")}`),
}));
