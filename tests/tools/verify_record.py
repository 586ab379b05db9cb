#!/usr/bin/env python3
"""An independent verifier of a Tally election record.

Written from the published specifications, not from Tally's Rust code:
  - RFC 6962 section 2.1 (Merkle tree hash) and RFC 9162 section 2.1.3.2
    (verifying an inclusion proof);
  - C2SP tlog-checkpoint (origin, tree size, base64 root hash);
  - C2SP signed-note (text, blank line, "— <name> <base64(key id || sig)>"
    lines; key id = SHA-256(name || 0x0A || 0x01 || public key)[:4]);
  - docs/record.md for the record's files.
Only hashlib and the cryptography package are used.

    verify_record.py DIR VERIFIER_KEY
    verify_record.py DIR VERIFIER_KEY --proof PROOF.json --receipt HEX

Prints "OK ..." and exits 0, or "FAIL <check>: <why>" and exits 1. The
check names are the ones `tally record verify` prints.
"""

import base64
import hashlib
import json
import os
import re
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

FIXED = ["election.json", "receipts.txt", "totals.json", "audit.jsonl", "checkpoint", "MANIFEST"]
RECORD_NAME = re.compile(r"^(election\.json|receipts\.txt|totals\.json|audit\.jsonl|checkpoint|MANIFEST|ballots-[1-9][0-9]*\.csv)$")


class Failed(Exception):
    def __init__(self, check, why):
        super().__init__(f"{check}: {why}")
        self.check = check


def sha256(data):
    return hashlib.sha256(data).digest()


# --- C2SP signed-note -------------------------------------------------------

def parse_verifier_key(text):
    # A name holds no "+"; the base64 key may.
    name, key_id_hex, key_b64 = text.strip().split("+", 2)
    key = base64.b64decode(key_b64, validate=True)
    if key[:1] != b"\x01" or len(key) != 33:
        raise ValueError("not an Ed25519 verifier key")
    key_id = bytes.fromhex(key_id_hex)
    if sha256(name.encode() + b"\n" + key)[:4] != key_id:
        raise ValueError("the key id does not match the key")
    return name, key_id, Ed25519PublicKey.from_public_bytes(key[1:])


def open_note(note, key, check):
    """The note's text, if a signature line of this key verifies."""
    name, key_id, public = key
    cut = note.rfind("\n\n")
    if cut < 0:
        raise Failed(check, "no blank line before the signatures")
    text, signatures = note[: cut + 1], note[cut + 2 :]
    for line in signatures.splitlines():
        if not line.startswith("\u2014 "):
            raise Failed(check, "a line after the blank line is not a signature")
        signer, blob = line[2:].split(" ", 1)
        blob = base64.b64decode(blob)
        if signer != name or blob[:4] != key_id:
            continue  # another key's signature: the spec says to ignore it
        try:
            public.verify(blob[4:], text.encode())
        except InvalidSignature:
            raise Failed(check, f"the signature by {name} does not verify")
        return text
    raise Failed(check, f"no signature by {name} with its key id")


# --- RFC 6962 ----------------------------------------------------------------

def leaf_hash(data):
    return sha256(b"\x00" + data)


def node_hash(left, right):
    return sha256(b"\x01" + left + right)


def tree_hash(leaves):
    """MTH(D[n]), with k the largest power of two smaller than n."""
    if not leaves:
        return sha256(b"")
    if len(leaves) == 1:
        return leaf_hash(leaves[0])
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return node_hash(tree_hash(leaves[:k]), tree_hash(leaves[k:]))


def verify_inclusion(index, size, leaf, path, root):
    """RFC 9162 section 2.1.3.2, step by step."""
    if index >= size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            return False
        if fn % 2 == 1 or fn == sn:
            r = node_hash(p, r)
            if fn % 2 == 0:
                while fn % 2 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


# --- C2SP tlog-checkpoint ---------------------------------------------------

def parse_checkpoint(text):
    lines = text.split("\n")
    if len(lines) != 4 or lines[3] != "":
        raise Failed("origin", "a checkpoint here has exactly origin, size and root")
    origin, size, root = lines[:3]
    if not re.fullmatch(r"0|[1-9][0-9]*", size):
        raise Failed("origin", "the tree size is not decimal")
    root = base64.b64decode(root, validate=True)
    if len(root) != 32:
        raise Failed("origin", "the root is not a SHA-256 hash")
    return origin, int(size), root


# --- the record ---------------------------------------------------------------

def read_record(directory):
    return {
        name: open(os.path.join(directory, name), "rb").read()
        for name in os.listdir(directory)
        if RECORD_NAME.match(name) and os.path.isfile(os.path.join(directory, name))
    }


def verify(files, key):
    if "election.json" not in files:
        raise Failed("files", "election.json is missing")
    election = json.loads(files["election.json"])
    posts = election["posts"]
    expected = set(FIXED) | {f"ballots-{n}.csv" for n in range(1, len(posts) + 1)}
    for name in sorted(expected - files.keys()):
        raise Failed("files", f"{name} is missing")
    for name in sorted(files.keys() - expected):
        raise Failed("files", f"{name} is not part of a record")

    manifest = open_note(files["MANIFEST"].decode(), key, "manifest-signature")
    checkpoint_text = open_note(files["checkpoint"].decode(), key, "checkpoint-signature")

    listed = {}
    for line in manifest.splitlines():
        digest, name = line.split("  ", 1)
        listed[name] = digest
    if set(listed) != expected - {"MANIFEST"}:
        raise Failed("file-hashes", "MANIFEST does not list exactly the other files")
    for name, digest in listed.items():
        if hashlib.sha256(files[name]).hexdigest() != digest.lower():
            raise Failed("file-hashes", f"{name} does not hash to what MANIFEST lists")

    origin, size, root = parse_checkpoint(checkpoint_text)
    if not origin.endswith(f"/tally/election/{election['election_id']}"):
        raise Failed("origin", f"{origin} is not this election's log")

    lines = files["receipts.txt"].decode().split("\n")
    if lines[-1] != "":
        raise Failed("receipts", "receipts.txt does not end in a newline")
    receipts = lines[:-1] if lines != [""] else []
    if any(not re.fullmatch(r"[0-9a-f]{32}", r) for r in receipts):
        raise Failed("receipts", "a line is not 32 lower-case hex characters")
    if any(a >= b for a, b in zip(receipts, receipts[1:])):
        raise Failed("receipts", "receipts are not sorted, or one repeats")
    if size != len(receipts):
        raise Failed("tree-size", f"the checkpoint says {size}, receipts.txt has {len(receipts)}")
    if tree_hash([bytes.fromhex(r) for r in receipts]) != root:
        raise Failed("merkle-root", "the root of receipts.txt is not the checkpoint's")

    totals = json.loads(files["totals.json"])
    counted = []
    for n, post in enumerate(posts, start=1):
        runners = {str(r["citizen_id"]) for r in post["runners"]}
        text = files[f"ballots-{n}.csv"].decode()
        ballots = text.split("\n")[:-1] if text else []
        if text and not text.endswith("\n"):
            raise Failed("runners", f"ballots-{n}.csv does not end in a newline")
        counts = {}
        for line in ballots:
            if line != "" and line not in runners:
                raise Failed("runners", f"ballots-{n}.csv: {line!r} is not a runner for {post['post']}")
            counts[line] = counts.get(line, 0) + 1
        counted.append((len(ballots), counts))
    for post, stated, (_, counts) in zip(posts, totals["posts"], counted):
        for runner in stated["runners"]:
            if counts.get(str(runner["citizen_id"]), 0) != runner["votes"]:
                raise Failed("recount", f"{post['post']}: runner {runner['citizen_id']} does not recount")
        if counts.get("", 0) != stated["abstentions"]:
            raise Failed("recount", f"{post['post']}: abstentions do not recount")
    if len(totals["posts"]) != len(posts):
        raise Failed("recount", "totals.json has other posts")
    n = len(receipts)
    if any(lines != n for lines, _ in counted) or totals["turnout"] != n or totals["voter_roll"] != n:
        raise Failed("counts", "ballots, receipts, turnout and voter roll disagree")
    return f"election {election['election_id']}: {n} ballots, {len(posts)} posts, root {base64.b64encode(root).decode()}"


def check_proof(proof, receipt_hex, key):
    text = open_note(proof["checkpoint"], key, "checkpoint-signature")
    _, size, root = parse_checkpoint(text)
    path = [base64.b64decode(h) for h in proof["audit_path"]]
    leaf = leaf_hash(bytes.fromhex(receipt_hex.replace("-", "")))
    if proof["tree_size"] != size or not verify_inclusion(proof["leaf_index"], size, leaf, path, root):
        raise Failed("inclusion", "the proof does not lead to the signed root")


def main(argv):
    directory, key = argv[1], parse_verifier_key(argv[2])
    try:
        summary = verify(read_record(directory), key)
        if "--proof" in argv:
            proof = json.load(open(argv[argv.index("--proof") + 1]))
            check_proof(proof, argv[argv.index("--receipt") + 1], key)
            summary += ", the receipt's proof verifies"
    except Failed as failure:
        print(f"FAIL {failure}")
        return 1
    print(f"OK {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
