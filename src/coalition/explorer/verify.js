// A second, independent verifier of Coalition's proof formats (docs/proofs.md), written
// from the specification alone: RFC 8785 canonical JSON, RFC 9162 leaf and node hashes,
// inclusion and consistency proofs, and Ed25519 header signatures via WebCrypto.
// No dependencies; runs in any browser with crypto.subtle Ed25519 (a secure context:
// https, or http on localhost / 127.0.0.1).

export class VerificationError extends Error {
  constructor(message) {
    super(message);
    this.name = "VerificationError";
  }
}

const MAX_SAFE = Number.MAX_SAFE_INTEGER;
const HEX64 = /^[0-9a-f]{64}$/;
const TIME = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$/;
const PROGRAM = /^[a-z][a-z0-9-]{1,31}$/;
const HEADER_KEYS = [
  "block_root", "entry_count", "first_index", "height", "log_root", "log_size",
  "prev_hash", "program", "sealed_at", "type",
];
const PROOF_KEYS = ["entry", "header", "leaf_index", "path", "signature", "tree_size", "type"];
const ROTATION_KEYS = ["epoch", "key", "key_id", "previous_key_id", "proof", "signature"];
const encoder = new TextEncoder();

function fail(message) {
  throw new VerificationError(message);
}

// ------------------------------------------------------------------ canonical JSON

/** RFC 8785 canonical JSON of `value` (Coalition's subset: safe integers, no floats). */
export function canonicalJson(value) {
  if (value === null || value === true || value === false) return String(value);
  if (typeof value === "number") {
    if (!Number.isSafeInteger(value)) fail(`not a safe integer: ${value}`);
    return Object.is(value, -0) ? "0" : String(value);
  }
  if (typeof value === "string") {
    if (!value.isWellFormed()) fail("a string holds a lone surrogate");
    return JSON.stringify(value);
  }
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(",")}]`;
  if (typeof value === "object") {
    // Default sort compares UTF-16 code units, as RFC 8785 §3.2.3 requires.
    const keys = Object.keys(value).sort();
    return `{${keys.map((k) => `${canonicalJson(k)}:${canonicalJson(value[k])}`).join(",")}}`;
  }
  fail(`not a JSON value: ${typeof value}`);
}

// -------------------------------------------------------------------------- bytes

export function hexToBytes(hex) {
  if (typeof hex !== "string" || !HEX64.test(hex)) fail(`not 64 lowercase hex digits: ${hex}`);
  const out = new Uint8Array(32);
  for (let i = 0; i < 32; i++) out[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return out;
}

export function bytesToHex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Standard base64 with padding; `canonical` also requires re-encoding to give it back. */
export function base64ToBytes(text, { canonical = false } = {}) {
  let binary;
  try {
    binary = atob(text);
  } catch {
    fail("not base64");
  }
  const bytes = Uint8Array.from(binary, (c) => c.charCodeAt(0));
  if (canonical && bytesToBase64(bytes) !== text) fail("base64 is not in its canonical form");
  return bytes;
}

export function bytesToBase64(bytes) {
  return btoa(String.fromCharCode(...bytes));
}

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** Equal bytes, comparing every byte whatever the first difference. */
export function sameBytes(a, b) {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i];
  return diff === 0;
}

// ------------------------------------------------------------------- RFC 9162 hashes

export async function sha256(bytes) {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
}

const LEAF = Uint8Array.of(0);
const NODE = Uint8Array.of(1);

export function leafHashOf(bytes) {
  return sha256(concat(LEAF, bytes));
}

function nodeHash(left, right) {
  return sha256(concat(NODE, left, right));
}

/** The canonical bytes of an entry and its leaf hash SHA-256(0x00 || JCS(entry)). */
export async function entryLeaf(entry) {
  const bytes = encoder.encode(canonicalJson(entry));
  return { bytes, leaf: await leafHashOf(bytes) };
}

/** SHA-256(JCS(header)) as hex: the next header's prev_hash. */
export async function headerHash(header) {
  return bytesToHex(await sha256(encoder.encode(canonicalJson(header))));
}

function size(value, what) {
  // BigInt so the published vectors' 2^64 - 1 indices are handled exactly.
  if (typeof value === "bigint") return value;
  if (typeof value !== "number" || !Number.isInteger(value) || value < 0) {
    fail(`${what} is not a non-negative integer`);
  }
  return BigInt(value);
}

function checkHashes(path, what) {
  if (!Array.isArray(path)) fail(`${what}: the proof is not a list`);
  for (const p of path) {
    if (!(p instanceof Uint8Array) || p.length !== 32) fail(`${what}: a proof hash is not 32 bytes`);
  }
}

/** RFC 9162 §2.1.3.2: throws VerificationError unless `path` proves `leaf` at `index`
 * in the tree of `treeSize` leaves with root `root` (all hashes as Uint8Array). */
export async function verifyInclusion(leaf, index, treeSize, path, root) {
  let fn = size(index, "leaf index");
  let sn = size(treeSize, "tree size");
  if (fn >= sn) fail(`inclusion: leaf index ${fn} >= tree size ${sn}`);
  if (!(leaf instanceof Uint8Array) || leaf.length !== 32) fail("inclusion: leaf hash is not 32 bytes");
  checkHashes(path, "inclusion");
  sn -= 1n;
  let r = leaf;
  for (const p of path) {
    if (sn === 0n) fail("inclusion: too many proof hashes");
    if (fn & 1n || fn === sn) {
      r = await nodeHash(p, r);
      if (!(fn & 1n)) {
        while (fn !== 0n && !(fn & 1n)) {
          fn >>= 1n;
          sn >>= 1n;
        }
      }
    } else {
      r = await nodeHash(r, p);
    }
    fn >>= 1n;
    sn >>= 1n;
  }
  if (sn !== 0n) fail("inclusion: too few proof hashes");
  if (!sameBytes(r, root)) fail("inclusion: the computed root does not match the tree root");
}

/** RFC 9162 §2.1.4.2: throws VerificationError unless `path` proves the tree of `size1`
 * leaves (root `root1`) is a prefix of the tree of `size2` leaves (root `root2`). */
export async function verifyConsistency(size1, size2, path, root1, root2) {
  const first = size(size1, "size1");
  const second = size(size2, "size2");
  checkHashes(path, "consistency");
  if (first > second) fail(`consistency: size1 ${first} > size2 ${second}`);
  if (first === 0n) fail("consistency: a proof from the empty tree is meaningless");
  if (first === second) {
    if (path.length) fail("consistency: equal sizes need an empty proof");
    if (!sameBytes(root1, root2)) fail("consistency: equal sizes but different roots");
    return;
  }
  if (!path.length) fail("consistency: empty proof for different sizes");
  const hashes = (first & (first - 1n)) === 0n ? [root1, ...path] : [...path];
  let fn = first - 1n;
  let sn = second - 1n;
  while (fn & 1n) {
    fn >>= 1n;
    sn >>= 1n;
  }
  let fr = hashes[0];
  let sr = hashes[0];
  for (const c of hashes.slice(1)) {
    if (sn === 0n) fail("consistency: too many proof hashes");
    if (fn & 1n || fn === sn) {
      fr = await nodeHash(c, fr);
      sr = await nodeHash(c, sr);
      if (!(fn & 1n)) {
        while (fn !== 0n && !(fn & 1n)) {
          fn >>= 1n;
          sn >>= 1n;
        }
      }
    } else {
      sr = await nodeHash(sr, c);
    }
    fn >>= 1n;
    sn >>= 1n;
  }
  if (sn !== 0n) fail("consistency: too few proof hashes");
  if (!sameBytes(fr, root1)) fail("consistency: the first root does not match");
  if (!sameBytes(sr, root2)) fail("consistency: the second root does not match");
}

// ------------------------------------------------------------------------ Ed25519

/** The DER bytes of a PEM SubjectPublicKeyInfo. */
function pemToDer(pem) {
  return base64ToBytes(pem.replace(/-----(BEGIN|END) PUBLIC KEY-----/g, "").replace(/\s+/g, ""));
}

/** A program's public key from its PEM SubjectPublicKeyInfo (as /v1/ledger/public-key
 * serves it), for `verifySignature`. */
export async function importPublicKey(pem) {
  const der = pemToDer(pem);
  try {
    return await crypto.subtle.importKey("spki", der, { name: "Ed25519" }, false, ["verify"]);
  } catch (err) {
    fail(`not an Ed25519 public key: ${err.message}`);
  }
}

/** The hex key id (SHA-256 of the raw 32-byte key) of a PEM public key. */
export async function keyIdOf(pem) {
  const der = pemToDer(pem);
  return bytesToHex(await sha256(der.slice(der.length - 32)));
}

/** Throws VerificationError unless `signature` (canonical base64 of 64 bytes) is the
 * program's Ed25519 signature of JCS(header). */
export async function verifyHeaderSignature(header, signature, publicKey) {
  if (typeof signature !== "string") fail("the signature is not a string");
  const sig = base64ToBytes(signature, { canonical: true });
  if (sig.length !== 64) fail(`the signature is ${sig.length} bytes, not 64`);
  const data = encoder.encode(canonicalJson(header));
  if (!(await crypto.subtle.verify({ name: "Ed25519" }, publicKey, sig, data))) {
    fail("the Ed25519 signature does not verify with the program's key");
  }
}

// ---------------------------------------------------------------- key rotations

async function verifyOver(key, signature, data, what) {
  if (typeof signature !== "string") fail(`${what}: the signature is not a string`);
  const sig = base64ToBytes(signature, { canonical: true });
  if (sig.length !== 64 || !(await crypto.subtle.verify({ name: "Ed25519" }, key, sig, data))) {
    fail(what);
  }
}

/** The program's keys across its rotations (docs/proofs.md §11): the first key (PEM, as
 * /v1/ledger/public-key serves it), then each rotation `{log_index, entry}` in log order
 * (as /v1/ledger/key-rotations serves them), each checked: the next epoch, naming the
 * key in force, signed by it, with the new key's proof. Returns `[{from, key, keyId,
 * epoch}]` (`from`: the rotation's log index, -1 for the first key) for `keyInForce`;
 * throws VerificationError naming the rotation that fails. That each rotation sits in
 * the log at its index is what an auditor's chain audit checks, not this page. */
export async function verifyKeyRotations(firstPem, rotations) {
  const first = { from: -1, key: await importPublicKey(firstPem), keyId: await keyIdOf(firstPem), epoch: 0 };
  const schedule = [first];
  if (!Array.isArray(rotations)) fail("the key rotations are not a list");
  for (const item of rotations) {
    const current = schedule[schedule.length - 1];
    const index = item?.log_index;
    safeInt(index, "a rotation's log_index");
    const where = `the key rotation at log index ${index}`;
    if (index <= current.from) fail(`${where} is out of order`);
    const entry = item.entry;
    if (!isObject(entry) || entry.kind !== "key-rotation") fail(`${where} is not a key-rotation entry`);
    checkEntryEnvelope(entry);
    const r = entry.rotation;
    if (!isObject(r) || !sameKeys(r, ROTATION_KEYS)) fail(`${where} does not have the six rotation keys`);
    if (r.epoch !== current.epoch + 1) fail(`${where} names epoch ${r.epoch}, not ${current.epoch + 1}`);
    if (r.previous_key_id !== current.keyId) fail(`${where} does not name the key in force as its previous key`);
    if (typeof r.key !== "string") fail(`${where}: key is not base64`);
    const raw = base64ToBytes(r.key, { canonical: true });
    if (raw.length !== 32) fail(`${where}: the key is ${raw.length} bytes, not 32`);
    const keyId = bytesToHex(await sha256(raw));
    if (keyId !== r.key_id) fail(`${where}: key_id is not the SHA-256 of the key`);
    if (keyId === current.keyId) fail(`${where} names the key already in force`);
    const statement = encoder.encode(canonicalJson({
      type: "coalition/key-rotation/v1",
      program: entry.program,
      epoch: r.epoch,
      key: r.key,
      previous_key_id: r.previous_key_id,
    }));
    const key = await crypto.subtle.importKey("raw", raw, { name: "Ed25519" }, false, ["verify"]);
    await verifyOver(current.key, r.signature, statement, `${where} is not signed by the key in force`);
    await verifyOver(key, r.proof, statement, `${where}: the new key's proof does not verify`);
    schedule.push({ from: index, key, keyId, epoch: r.epoch });
  }
  return schedule;
}

/** The key in force for `header` (docs/proofs.md §11): the last one a rotation below the
 * header's first_index named, else the first key. */
export function keyInForce(schedule, header) {
  let found = schedule[0];
  for (const one of schedule) if (one.from < header.first_index) found = one;
  return found;
}

// ------------------------------------------------------------------------- shapes

function isObject(value) {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

function sameKeys(obj, keys) {
  return canonicalJson(Object.keys(obj).sort()) === canonicalJson(keys);
}

function safeInt(value, what) {
  if (!Number.isSafeInteger(value) || value < 0) fail(`${what} is not an integer in [0, 2^53 - 1]`);
}

/** Throws unless `entry` has the envelope of docs/proofs.md §2. */
export function checkEntryEnvelope(entry) {
  if (!isObject(entry)) fail("the entry is not an object");
  if (entry.type !== "coalition/entry/v1") fail("entry.type is not coalition/entry/v1");
  if (typeof entry.program !== "string" || !PROGRAM.test(entry.program)) fail("entry.program is not a program id");
  if (typeof entry.id !== "string" || !entry.id) fail("entry.id is missing");
  if (typeof entry.kind !== "string" || !entry.kind) fail("entry.kind is missing");
  if (typeof entry.at !== "string" || !TIME.test(entry.at)) fail("entry.at is not a six-digit UTC time");
}

/** Throws unless `header` is a well-formed block header (docs/proofs.md §4). */
export function checkHeader(header) {
  if (!isObject(header)) fail("the header is not an object");
  if (!sameKeys(header, HEADER_KEYS)) fail("the header does not have exactly the ten keys");
  if (header.type !== "coalition/block-header/v1") fail("header.type is not coalition/block-header/v1");
  if (typeof header.program !== "string" || !PROGRAM.test(header.program)) fail("header.program is not a program id");
  for (const key of ["height", "first_index", "entry_count", "log_size"]) safeInt(header[key], `header.${key}`);
  for (const key of ["prev_hash", "block_root", "log_root"]) hexToBytes(header[key]);
  if (typeof header.sealed_at !== "string" || !TIME.test(header.sealed_at)) fail("header.sealed_at is not a six-digit UTC time");
  if (header.first_index + header.entry_count !== header.log_size) fail("header.log_size is not first_index + entry_count");
}

// ------------------------------------------------------------ inclusion proof document

/** The checks of docs/proofs.md §5 on an inclusion proof document, each reported:
 * `{ok, checks: [{id, label, ok, detail}], leafHash, headerHash}`. Never throws: a check
 * that cannot run because an earlier one failed is reported as not run (ok: null). */
export async function verifyInclusionDocument(doc, publicKey) {
  // `publicKey`: the program's CryptoKey, or its schedule from `verifyKeyRotations`.
  const checks = [];
  const report = { ok: false, checks, leafHash: null, headerHash: null };
  const run = async (id, label, body) => {
    const check = { id, label, ok: null, detail: "not run: an earlier check failed" };
    checks.push(check);
    if (checks.some((c) => c.ok === false)) return;
    try {
      check.detail = (await body()) || "";
      check.ok = true;
    } catch (err) {
      check.ok = false;
      check.detail = err instanceof VerificationError ? err.message : `error: ${err.message}`;
    }
  };
  let leaf = null;
  await run("shape", "Document shape (seven keys, type)", () => {
    if (!isObject(doc)) fail("the proof is not a JSON object");
    if (!sameKeys(doc, PROOF_KEYS)) fail("the proof does not have exactly the seven keys");
    if (doc.type !== "coalition/inclusion-proof/v1") fail("type is not coalition/inclusion-proof/v1");
    checkEntryEnvelope(doc.entry);
    safeInt(doc.leaf_index, "leaf_index");
    safeInt(doc.tree_size, "tree_size");
    if (!Array.isArray(doc.path)) fail("path is not a list");
    doc.path.forEach(hexToBytes);
    checkHeader(doc.header);
    return "entry envelope, header and path are well formed";
  });
  await run("binding", "Proof matches its header", () => {
    if (doc.tree_size !== doc.header.log_size) fail(`tree_size ${doc.tree_size} is not the header's log_size ${doc.header.log_size}`);
    if (doc.entry.program !== doc.header.program) fail("the entry's program is not the header's");
    if (doc.leaf_index >= doc.tree_size) fail(`leaf_index ${doc.leaf_index} >= tree_size ${doc.tree_size}`);
    return `leaf ${doc.leaf_index} of ${doc.tree_size}, program ${doc.header.program}`;
  });
  await run("leaf", "Leaf hash SHA-256(0x00 || JCS(entry))", async () => {
    const { bytes, leaf: hash } = await entryLeaf(doc.entry);
    leaf = hash;
    report.leafHash = bytesToHex(hash);
    return `${bytes.length} canonical bytes, leaf ${report.leafHash}`;
  });
  await run("inclusion", "RFC 9162 inclusion path to log_root", async () => {
    await verifyInclusion(leaf, doc.leaf_index, doc.tree_size, doc.path.map(hexToBytes), hexToBytes(doc.header.log_root));
    return `${doc.path.length} hashes lead to log_root ${doc.header.log_root}`;
  });
  await run("header", "Header hash SHA-256(JCS(header))", async () => {
    report.headerHash = await headerHash(doc.header);
    return `block ${doc.header.height}: ${report.headerHash}`;
  });
  await run("signature", "Ed25519 signature over JCS(header)", async () => {
    if (!Array.isArray(publicKey)) {
      await verifyHeaderSignature(doc.header, doc.signature, publicKey);
      return "signed by the program's key";
    }
    const inForce = keyInForce(publicKey, doc.header);
    await verifyHeaderSignature(doc.header, doc.signature, inForce.key);
    return inForce.epoch === 0
      ? "signed by the program's first key"
      : `signed by the program's key in force (epoch ${inForce.epoch}, ${inForce.keyId.slice(0, 16)})`;
  });
  report.ok = checks.every((c) => c.ok === true);
  return report;
}
