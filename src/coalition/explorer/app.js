// The explorer page: plain DOM, hash routes, data from this node's REST API with the keys
// the user typed (kept in sessionStorage only). Every proof is checked by verify.js.

import {
  canonicalJson,
  headerHash,
  importPublicKey,
  keyIdOf,
  keyInForce,
  verifyHeaderSignature,
  verifyKeyRotations,
  verifyInclusionDocument,
  base64ToBytes,
  bytesToBase64,
  hexToBytes,
  verifyConsistency,
} from "./verify.js";

const RECENT_BLOCKS = 20;
const HISTORY_LIMIT = 50;
const FLOW_BUCKETS = 48;
const STORE = { ledger: "coalition.ledgerKey", memberId: "coalition.memberId", member: "coalition.memberKey" };
const PALETTE = ["#2451b5", "#d9730d", "#1a7f37", "#9c27b0", "#c62828", "#00838f", "#6d4c41", "#5c6bc0"];
const SVG = "http://www.w3.org/2000/svg";

const $ = (selector) => document.querySelector(selector);

// ------------------------------------------------------------------------- DOM

/** An element with attributes and children (strings become text nodes: never HTML). */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  return fill(node, attrs, children);
}

function svg(tag, attrs = {}, ...children) {
  return fill(document.createElementNS(SVG, tag), attrs, children);
}

function fill(node, attrs, children) {
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function table(headers, rows, attrs = {}) {
  return el(
    "table",
    attrs,
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", { class: h.num ? "num" : null }, h.label ?? h)))),
    el("tbody", {}, rows),
  );
}

function short(text, n = 10) {
  return typeof text === "string" && text.length > n + 2 ? `${text.slice(0, n)}…` : String(text ?? "");
}

function show(...nodes) {
  $("#view").replaceChildren(...nodes.filter((n) => n !== null && n !== undefined));
}

function showError(message) {
  const box = $("#error");
  box.textContent = message;
  box.hidden = !message;
}

// ------------------------------------------------------------------------- keys

function keys() {
  return {
    ledger: sessionStorage.getItem(STORE.ledger) || "",
    memberId: sessionStorage.getItem(STORE.memberId) || "",
    member: sessionStorage.getItem(STORE.member) || "",
  };
}

function saveKeys(event) {
  event.preventDefault();
  sessionStorage.setItem(STORE.ledger, $("#ledger-key").value.trim());
  sessionStorage.setItem(STORE.memberId, $("#member-id").value.trim());
  sessionStorage.setItem(STORE.member, $("#member-key").value.trim());
  route();
}

function forgetKeys() {
  for (const name of Object.values(STORE)) sessionStorage.removeItem(name);
  for (const id of ["#ledger-key", "#member-id", "#member-key"]) $(id).value = "";
  route();
}

// -------------------------------------------------------------------------- API

class ApiError extends Error {
  constructor(status, kind, message) {
    super(message);
    this.status = status;
    this.kind = kind;
  }
}

async function api(path, key, { text = false } = {}) {
  if (!key) throw new ApiError(0, "no_key", "Enter an API key above (and press “Use keys”) to read this.");
  let response;
  try {
    response = await fetch(path, { headers: { Authorization: `Bearer ${key}` } });
  } catch (err) {
    throw new ApiError(0, "network", `Cannot reach the node: ${err.message}`);
  }
  if (!response.ok) {
    let kind = "http";
    let message = response.statusText;
    try {
      const body = await response.json();
      kind = body.error ?? (response.status === 404 ? "no_route" : "http");
      message = body.message ?? body.detail ?? message;
      if (typeof message !== "string") message = JSON.stringify(message);
    } catch {
      // not JSON: keep the status text
    }
    throw new ApiError(response.status, kind, `${path}: HTTP ${response.status} ${kind}: ${message}`);
  }
  return text ? response.text() : response.json();
}

const ledger = (path, options) => api(path, keys().ledger, options);

let publicKeyPromise = null;
let publicKeyFor = null;

/** The program's first Ed25519 key from /v1/ledger/public-key and its rotations from
 * /v1/ledger/key-rotations (each checked, verify.js), imported once per ledger key:
 * `key` is the schedule a proof is checked with (the key in force for its header). */
function programKey() {
  const key = keys().ledger;
  if (!publicKeyPromise || publicKeyFor !== key) {
    publicKeyFor = key;
    publicKeyPromise = ledger("/v1/ledger/public-key", { text: true }).then(async (pem) => {
      const rotations = await ledger("/v1/ledger/key-rotations");
      return { pem, key: await verifyKeyRotations(pem, rotations), keyId: await keyIdOf(pem) };
    });
    publicKeyPromise.catch(() => {
      publicKeyPromise = null;
    });
  }
  return publicKeyPromise;
}

// ------------------------------------------------------------------------ views

function witnessCell(status) {
  if (status instanceof ApiError) {
    if (status.kind === "no_route") return el("span", { class: "muted" }, "no witness on this node");
    return el("span", { class: "bad", title: status.message }, status.kind);
  }
  const names = status.cosigners.map((c) => c.witness).join(", ");
  return el(
    "span",
    { class: `witness-status ${status.witnessed ? "ok" : "pending"}`, "data-height": status.height },
    `${status.cosigners.length} / ${status.quorum} `,
    status.witnessed ? "witnessed" : "pending",
    names ? el("span", { class: "muted" }, ` (${names})`) : null,
  );
}

function witnessOf(height) {
  return ledger(`/v1/blocks/${height}/witnesses`).catch((err) => err);
}

async function aboutNode() {
  const about = await ledger("/v1/explorer/about");
  const coalition = about.coalition ? ` · ${about.coalition.name}` : "";
  $("#node-name").textContent = `— ${about.program}${coalition}`;
  return about;
}

async function viewBlocks(render) {
  const about = await aboutNode();
  if (about.height === null) {
    render(el("h2", {}, "Recent blocks"), el("p", {}, "No block has been sealed yet."));
    return;
  }
  const start = Math.max(0, about.height - RECENT_BLOCKS + 1);
  const headers = (await ledger(`/v1/ledger/headers?start=${start}&limit=${RECENT_BLOCKS}`)).reverse();
  // One request for the page's witness statuses (not one per block), oldest first.
  const statuses = await ledger(`/v1/blocks/witnesses?start=${start}&limit=${RECENT_BLOCKS}`).catch((err) => err);
  const byHeight = new Map(statuses instanceof ApiError ? [] : statuses.map((s) => [s.height, s]));
  const witnesses = headers.map((h) => (statuses instanceof ApiError ? statuses : byHeight.get(h.header.height) ?? new ApiError(404, "not_found", `no status of block ${h.header.height}`)));
  const rows = headers.map(({ header }, i) =>
    el(
      "tr",
      { "data-height": header.height },
      el("td", {}, el("a", { href: `#/block/${header.height}` }, `#${header.height}`)),
      el("td", { class: "num" }, header.entry_count),
      el("td", { class: "num" }, header.log_size),
      el("td", {}, header.sealed_at),
      el("td", { class: "mono" }, short(header.log_root, 16)),
      el("td", {}, witnessCell(witnesses[i])),
    ),
  );
  render(
    el("h2", {}, `Recent blocks of ${about.program}`),
    el("p", { class: "muted" }, `Log size ${about.log_size}; newest block #${about.height}.`),
    table(
      ["Block", { label: "Entries", num: true }, { label: "Log size", num: true }, "Sealed at", "Log root", "Witnesses (cosigners / quorum)"],
      rows,
      { id: "blocks-table" },
    ),
  );
}

function entryAmount(entry) {
  return typeof entry.amount === "number" ? entry.amount : "";
}

async function viewBlock(height, render) {
  const [block, program, witness] = await Promise.all([
    ledger(`/v1/ledger/blocks/${height}`),
    programKey(),
    witnessOf(height),
  ]);
  const { header, signature } = block.header;
  let signed;
  try {
    await verifyHeaderSignature(header, signature, keyInForce(program.key, header).key);
    signed = el("span", { class: "ok", id: "header-signature" }, "valid (verified in this browser)");
  } catch (err) {
    signed = el("span", { class: "bad", id: "header-signature" }, `INVALID: ${err.message}`);
  }
  const fields = Object.entries(header).map(([k, v]) => [el("dt", {}, k), el("dd", { class: "mono" }, v)]);
  const rows = block.entries.map((entry, i) =>
    el(
      "tr",
      { "data-entry": entry.id },
      el("td", { class: "num" }, header.first_index + i),
      el("td", { class: "mono" }, el("a", { href: `#/entry/${entry.id}` }, entry.id)),
      el("td", {}, entry.kind),
      el("td", { class: "mono" }, short(entry.account, 12)),
      el("td", { class: "num" }, entryAmount(entry)),
      el("td", {}, entry.at),
    ),
  );
  const nav = el(
    "p",
    {},
    height > 0 ? el("a", { href: `#/block/${height - 1}` }, "← previous block") : null,
    " ",
    el("a", { href: `#/block/${height + 1}` }, "next block →"),
  );
  render(
    el("h2", {}, `Block #${height}`),
    nav,
    el(
      "div",
      { class: "columns" },
      el("div", { class: "card" }, el("dl", { class: "fields" }, fields)),
      el(
        "div",
        { class: "card" },
        el(
          "dl",
          { class: "fields" },
          el("dt", {}, "header hash"),
          el("dd", { class: "mono", id: "header-hash" }, await headerHash(header)),
          el("dt", {}, "signature"),
          el("dd", {}, signed),
          el("dt", {}, "key id"),
          el("dd", { class: "mono" }, program.keyId),
          el("dt", {}, "witnesses"),
          el("dd", {}, witnessCell(witness)),
        ),
      ),
    ),
    el("h3", {}, `${block.entries.length} entries`),
    table(["Log index", "Entry id", "Kind", "Account", { label: "Amount", num: true }, "At"], rows, { id: "entries-table" }),
  );
}

// --------------------------------------------------------------- entry and proof

const TAMPERS = {
  amount: {
    label: "Change the amount",
    apply(doc) {
      if (typeof doc.entry.amount === "number") doc.entry.amount += 1;
      else doc.entry.at = doc.entry.at.replace(/\d(?=Z$)/, (d) => String((Number(d) + 1) % 10));
    },
  },
  path: {
    label: "Change a path hash",
    apply(doc) {
      if (!doc.path.length) doc.path.push(doc.header.log_root);
      else doc.path[0] = (doc.path[0][0] === "0" ? "1" : "0") + doc.path[0].slice(1);
    },
  },
  signature: {
    label: "Change the signature",
    apply(doc) {
      const bytes = base64ToBytes(doc.signature);
      bytes[0] ^= 1;
      doc.signature = bytesToBase64(bytes);
    },
  },
};

function renderReport(report, note) {
  const result = $("#proof-result");
  const failed = report.checks.find((c) => c.ok === false);
  result.className = report.ok ? "ok" : "bad";
  result.textContent = report.ok
    ? `Proof verified${note}: the entry is in the signed log.`
    : `Proof REJECTED${note}: ${failed ? failed.detail : "invalid"}`;
  $("#checks").replaceChildren(
    ...report.checks.map((c) =>
      el(
        "li",
        { "data-check": c.id, class: c.ok === true ? "ok" : c.ok === false ? "bad" : "muted" },
        el("span", { class: "mark" }, c.ok === true ? "✓" : c.ok === false ? "✗" : "–"),
        c.label,
        el("span", { class: "detail" }, c.detail),
      ),
    ),
  );
}

async function verifyAndShow(doc, note = "") {
  const program = await programKey();
  renderReport(await verifyInclusionDocument(doc, program.key), note);
}

async function viewEntry(entryId, render) {
  const [proof, program] = await Promise.all([
    ledger(`/v1/ledger/entries/${encodeURIComponent(entryId)}/proof`),
    programKey(),
  ]);
  const original = JSON.stringify(proof, null, 1);
  const textarea = el("textarea", { id: "proof-json", spellcheck: "false" });
  textarea.value = original;
  const tamperButtons = Object.entries(TAMPERS).map(([name, tamper]) =>
    el(
      "button",
      {
        type: "button",
        class: "secondary",
        id: `tamper-${name}`,
        onclick: () => {
          const doc = JSON.parse(original);
          tamper.apply(doc);
          textarea.value = JSON.stringify(doc, null, 1);
          verifyAndShow(doc, ` after “${tamper.label.toLowerCase()}”`).catch(report);
        },
      },
      tamper.label,
    ),
  );
  const verifyText = () => {
    let doc;
    try {
      doc = JSON.parse(textarea.value);
    } catch (err) {
      renderReport({ ok: false, checks: [{ id: "json", label: "Parse the document", ok: false, detail: err.message }] }, "");
      return;
    }
    verifyAndShow(doc, " (edited text)").catch(report);
  };
  render(
    el("h2", {}, "Entry ", el("span", { class: "mono" }, entryId)),
    el(
      "p",
      {},
      `Log index ${proof.leaf_index}, proved in the log of ${proof.tree_size} entries signed by `,
      el("a", { href: `#/block/${proof.header.height}` }, `block #${proof.header.height}`),
      `'s header; program key id `,
      el("span", { class: "mono" }, short(program.keyId, 16)),
      ".",
    ),
    el(
      "div",
      { class: "columns" },
      el("div", {}, el("h3", {}, "Entry (as signed)"), el("pre", { id: "entry-json" }, JSON.stringify(proof.entry, null, 2))),
      el(
        "div",
        {},
        el("h3", {}, "Inclusion proof, verified in this browser"),
        el("div", { id: "proof-result" }, "Verifying…"),
        el("ul", { id: "checks" }),
        el("p", { id: "latest-link", class: "muted" }, "Checking against the newest header…"),
      ),
    ),
    el("h3", {}, "Try to break it"),
    el("p", { class: "muted" }, "Each button changes one thing in a copy of the proof and verifies it again; the text below can be edited too."),
    el(
      "div",
      { class: "tamper" },
      tamperButtons,
      el("button", { type: "button", id: "verify-text", onclick: verifyText }, "Verify the text"),
      el(
        "button",
        {
          type: "button",
          class: "secondary",
          id: "reset-proof",
          onclick: () => {
            textarea.value = original;
            verifyAndShow(JSON.parse(original)).catch(report);
          },
        },
        "Original proof",
      ),
    ),
    textarea,
    el("p", { class: "muted" }, "Canonical entry bytes (RFC 8785): ", el("code", { id: "entry-canonical" }, canonicalJson(proof.entry))),
  );
  await verifyAndShow(JSON.parse(original));
  await showLatestLink(proof.header, program.key);
}

/** Whether the proof's header is a prefix of the newest signed header (a consistency
 * proof from the node, verified here with both signatures), so the entry is still in
 * the log the program signs today. */
async function showLatestLink(header, key) {
  const line = $("#latest-link");
  try {
    const latest = await ledger("/v1/ledger/headers/latest");
    const doc = await ledger(`/v1/ledger/consistency?first=${header.height}&second=${latest.header.height}`);
    if (canonicalJson(doc.first) !== canonicalJson(header)) throw new Error("the node's header at this height is not the proof's");
    if (canonicalJson(doc.second) !== canonicalJson(latest.header)) throw new Error("the consistency proof ends at another header than the newest");
    await verifyHeaderSignature(doc.first, doc.first_signature, keyInForce(key, doc.first).key);
    await verifyHeaderSignature(doc.second, doc.second_signature, keyInForce(key, doc.second).key);
    if (doc.first.log_size < doc.second.log_size) {
      await verifyConsistency(doc.first.log_size, doc.second.log_size, doc.path.map(hexToBytes),
        hexToBytes(doc.first.log_root), hexToBytes(doc.second.log_root));
    } else if (canonicalJson(doc.first) !== canonicalJson(doc.second)) {
      throw new Error("two different headers at the newest height");
    }
    line.className = "ok";
    line.textContent = `✓ Consistent with the newest signed header (block #${latest.header.height}, log size ${latest.header.log_size}): the entry is still in the log.`;
  } catch (err) {
    line.className = "bad";
    line.textContent = `✗ Not shown consistent with the newest header: ${err.message}`;
  }
}

// ---------------------------------------------------------------------- member

async function viewMember(render) {
  const { memberId, member } = keys();
  if (!memberId) {
    render(el("h2", {}, "Member"), el("p", {}, "Enter a member id and that member's API key above."));
    return;
  }
  const base = `/v1/members/${encodeURIComponent(memberId)}`;
  const [balance, history] = await Promise.all([
    api(`${base}/balance`, member),
    api(`${base}/history?limit=${HISTORY_LIMIT}`, member),
  ]);
  const card = (label, value, id) => el("div", { class: "card" }, label, el("b", { id }, value));
  const rows = history.map(({ entry, log_index }) =>
    el(
      "tr",
      { "data-entry": entry.id },
      el("td", {}, entry.at),
      el("td", {}, entry.kind),
      el("td", { class: "num" }, entryAmount(entry)),
      el("td", { class: "num" }, log_index ?? "unsealed"),
      el("td", { class: "mono" }, log_index === null ? entry.id : el("a", { href: `#/entry/${entry.id}` }, entry.id)),
    ),
  );
  render(
    el("h2", {}, `Member ${memberId}`),
    el("p", { class: "muted" }, "Account ", el("span", { class: "mono" }, balance.account), " (the pseudonym on the ledger)."),
    el(
      "div",
      { class: "cards", id: "balance" },
      card("Spendable", balance.spendable, "balance-spendable"),
      card("Pending (holding period)", balance.pending, "balance-pending"),
      card("Total", balance.held, "balance-held"),
      card("Tier", balance.tier, "balance-tier"),
      card("Qualifying", balance.qualifying, "balance-qualifying"),
    ),
    el("h3", {}, `History (newest first, up to ${HISTORY_LIMIT})`),
    table(["At", "Kind", { label: "Amount", num: true }, { label: "Log index", num: true }, "Entry"], rows, { id: "history-table" }),
  );
}

// ----------------------------------------------------------------------- flows

function pairKey(flow) {
  return `${flow.kind}:${flow.from}→${flow.to}`;
}

/** Sankey-like paths (width ∝ value) from sources on the left to targets on the right,
 * then bars per time bucket stacked by direction. */
function flowChart(flows, colorOf) {
  const width = 1180;
  const totals = new Map();
  for (const f of flows) {
    const key = pairKey(f);
    const t = totals.get(key) ?? { kind: f.kind, from: f.from, to: f.to, value: 0, count: 0 };
    t.value += f.value_minor;
    t.count += f.count;
    totals.set(key, t);
  }
  const pairs = [...totals.entries()].filter(([, t]) => t.value > 0);
  const sources = [...new Set(pairs.map(([, t]) => t.from))].sort();
  const targets = [...new Set(pairs.map(([, t]) => t.to))].sort();
  const maxValue = Math.max(1, ...pairs.map(([, t]) => t.value));
  const rowH = 46;
  const top = 30;
  const sankeyH = top + Math.max(sources.length, targets.length, 1) * rowH + 10;
  const buckets = [...new Set(flows.map((f) => f.bucket))].sort();
  const barsTop = sankeyH + 40;
  const barsH = 170;
  const height = barsTop + barsH + 50;
  const chart = svg("svg", { class: "chart", id: "flows-chart", width, height, viewBox: `0 0 ${width} ${height}`, role: "img" });
  chart.append(svg("text", { x: 20, y: 18, "font-weight": "bold" }, "Value between brands (minor units), this chain"));
  const left = 170;
  const right = width - 190;
  const yOf = (list, name) => top + list.indexOf(name) * rowH + rowH / 2;
  for (const name of sources) {
    chart.append(svg("rect", { x: left - 10, y: yOf(sources, name) - 14, width: 10, height: 28, fill: "#5b6475" }));
    chart.append(svg("text", { x: left - 16, y: yOf(sources, name) + 4, "text-anchor": "end" }, name));
  }
  for (const name of targets) {
    chart.append(svg("rect", { x: right, y: yOf(targets, name) - 14, width: 10, height: 28, fill: "#5b6475" }));
    chart.append(svg("text", { x: right + 16, y: yOf(targets, name) + 4 }, name));
  }
  for (const [key, t] of pairs) {
    const y1 = yOf(sources, t.from);
    const y2 = yOf(targets, t.to);
    const mid = (left + right) / 2;
    const strokeWidth = Math.max(2, (24 * t.value) / maxValue);
    const path = svg("path", {
      class: "flow-path",
      "data-from": t.from,
      "data-to": t.to,
      "data-kind": t.kind,
      d: `M ${left} ${y1} C ${mid} ${y1}, ${mid} ${y2}, ${right} ${y2}`,
      fill: "none",
      stroke: colorOf(key),
      "stroke-width": strokeWidth.toFixed(1),
      "stroke-opacity": 0.7,
      "stroke-dasharray": t.kind === "redemption" ? "8 4" : null,
    });
    path.append(svg("title", {}, `${t.kind} ${t.from} → ${t.to}: ${t.value} (${t.count})`));
    chart.append(path);
  }
  chart.append(svg("text", { x: 20, y: barsTop - 14, "font-weight": "bold" }, "Per time bucket"));
  chart.append(svg("line", { class: "axis", x1: 60, x2: width - 20, y1: barsTop + barsH, y2: barsTop + barsH }));
  const stacks = buckets.map((b) => flows.filter((f) => f.bucket === b && f.value_minor > 0));
  const maxStack = Math.max(1, ...stacks.map((s) => s.reduce((n, f) => n + f.value_minor, 0)));
  const slot = (width - 100) / Math.max(buckets.length, 1);
  const barW = Math.min(60, slot * 0.6);
  buckets.forEach((bucket, i) => {
    let y = barsTop + barsH;
    const x = 70 + i * slot + (slot - barW) / 2;
    for (const f of stacks[i]) {
      const h = (barsH * f.value_minor) / maxStack;
      y -= h;
      const bar = svg("rect", {
        class: "flow-bar",
        "data-from": f.from,
        "data-to": f.to,
        "data-kind": f.kind,
        "data-bucket": f.bucket,
        x: x.toFixed(1),
        y: y.toFixed(1),
        width: barW.toFixed(1),
        height: Math.max(1, h).toFixed(1),
        fill: colorOf(pairKey(f)),
      });
      bar.append(svg("title", {}, `${f.bucket} ${f.kind} ${f.from} → ${f.to}: ${f.value_minor}`));
      chart.append(bar);
    }
    chart.append(svg("text", { x: (x + barW / 2).toFixed(1), y: barsTop + barsH + 16, "text-anchor": "middle" }, bucket.slice(0, 16).replace("T", " ")));
  });
  return chart;
}

async function viewFlows(render) {
  const params = new URLSearchParams(location.hash.split("?")[1] ?? "");
  const bucket = Number(params.get("bucket_s") ?? 3600);
  const before = params.get("before");
  const page = new URLSearchParams({ bucket_s: String(bucket), limit: String(FLOW_BUCKETS) });
  if (before) page.set("before", before);
  const data = await ledger(`/v1/explorer/flows?${page}`);
  const keysInOrder = [...new Set(data.flows.map(pairKey))].sort();
  const colorOf = (key) => PALETTE[keysInOrder.indexOf(key) % PALETTE.length];
  const select = el(
    "select",
    { id: "bucket", onchange: (e) => (location.hash = `#/flows?bucket_s=${e.target.value}`) },
    [
      [60, "minute"],
      [3600, "hour"],
      [86400, "day"],
    ].map(([s, label]) => el("option", { value: s, selected: s === bucket }, label)),
  );
  const legend = el(
    "div",
    { class: "legend" },
    keysInOrder.map((key) => {
      const flows = data.flows.filter((f) => pairKey(f) === key);
      const value = flows.reduce((n, f) => n + f.value_minor, 0);
      const count = flows.reduce((n, f) => n + f.count, 0);
      const item = el("span", { "data-flow": key }, `${key.replace(":", " ")}: ${value} (${count})`);
      item.style.setProperty("--swatch", colorOf(key));
      return item;
    }),
  );
  const rows = data.flows.map((f) =>
    el(
      "tr",
      {},
      el("td", {}, f.bucket),
      el("td", {}, f.kind),
      el("td", {}, `${f.from} → ${f.to}`),
      el("td", { class: "num" }, f.count),
      el("td", { class: "num" }, f.points_out || ""),
      el("td", { class: "num" }, f.points_in || ""),
      el("td", { class: "num" }, `${f.value_minor} ${f.currency}`),
      el("td", { class: "num" }, f.refunded || ""),
    ),
  );
  render(
    el("h2", {}, `Conversions and redemptions seen by ${data.program}`),
    el(
      "div",
      { class: "toolbar" },
      el("label", {}, "Bucket ", select),
      el("span", { class: "muted" }, "From this node's own signed entries: convert-out/in, refunds, hold captures, redemption receipts."),
      before ? el("a", { id: "flows-newest", href: `#/flows?bucket_s=${bucket}` }, "newest") : null,
      data.next_before
        ? el("a", { id: "flows-older", href: `#/flows?bucket_s=${bucket}&before=${encodeURIComponent(data.next_before)}` }, `older buckets (before ${data.next_before.slice(0, 16).replace("T", " ")}) →`)
        : null,
    ),
    data.flows.length ? legend : el("p", {}, "No conversion or redemption on this chain yet."),
    data.flows.length ? flowChart(data.flows, colorOf) : null,
    table(
      ["Bucket", "Kind", "Direction", { label: "Count", num: true }, { label: "Points out", num: true }, { label: "Points in", num: true }, { label: "Value (minor)", num: true }, { label: "Refunded", num: true }],
      rows,
      { id: "flows-table" },
    ),
  );
}

// ------------------------------------------------------------------ settlement

function owedCell(statement, direction) {
  const owed = statement.signed?.statement?.owed ?? {};
  return owed[direction] ?? 0;
}

async function viewSettlement(render) {
  const statements = await ledger("/v1/settlement/statements");
  const rows = statements.map((s) => {
    const [a, b] = s.parties;
    return el(
      "tr",
      { "data-statement": s.id },
      el("td", {}, `${s.start} – ${s.end}`),
      el("td", {}, `${a} ↔ ${b}`),
      el("td", { class: "num" }, `${a}→${b}: ${owedCell(s, `${a}->${b}`)}`),
      el("td", { class: "num" }, `${b}→${a}: ${owedCell(s, `${b}->${a}`)}`),
      el("td", {}, s.currency),
      el("td", { class: "mono" }, el("a", { href: `#/entry/${s.entry_id}` }, short(s.entry_id, 12))),
    );
  });
  const now = new Date().toISOString().replace(/\.(\d{3})Z$/, ".$1000Z");
  const start = statements.length ? statements.map((s) => s.start).sort()[0] : "2000-01-01T00:00:00.000000Z";
  const end = statements.length ? statements.map((s) => s.end).sort().at(-1) : now;
  const startInput = el("input", { id: "netting-start", value: start, size: 30 });
  const endInput = el("input", { id: "netting-end", value: end, size: 30 });
  const result = el("div", { id: "netting" });
  const runNetting = async () => {
    result.replaceChildren(el("p", {}, "Netting…"));
    const query = `start=${encodeURIComponent(startInput.value.trim())}&end=${encodeURIComponent(endInput.value.trim())}`;
    const netting = await ledger(`/v1/settlement/netting?${query}`);
    const positions = Object.entries(netting.positions).sort();
    const sum = positions.reduce((n, [, v]) => n + v, 0);
    result.replaceChildren(
      el("p", { id: "netting-summary" }, `${netting.statements.length} statements signed by both parties over ${netting.period.start} – ${netting.period.end} (${netting.currency ?? "no currency"}), gathered from every reachable partner.`),
      el("p", { class: "pending", hidden: !netting.unreachable.length }, `Partners that did not answer: ${netting.unreachable.join(", ")}`),
      el("div", { class: "columns" },
        el("div", {},
          el("h3", {}, "Net positions"),
          table(
            ["Program", { label: "Position (minor)", num: true }],
            positions.map(([p, v]) => el("tr", { "data-program": p }, el("td", {}, p), el("td", { class: `num ${v < 0 ? "bad" : v > 0 ? "ok" : ""}` }, v))),
            { id: "positions-table" },
          ),
          el("p", { id: "positions-sum", class: sum === 0 ? "ok" : "bad" }, sum === 0 ? "Positions sum to 0 ✓" : `Positions sum to ${sum} ✗`),
        ),
        el("div", {},
          el("h3", {}, "Payments that settle them"),
          netting.payments.length
            ? el("ul", { id: "payments" }, netting.payments.map((p) => el("li", {}, `${p.payer} pays ${p.payee} ${p.amount}`)))
            : el("p", { id: "payments" }, "No payment needed."),
        ),
      ),
    );
  };
  render(
    el("h2", {}, "Settlement statements recorded on this chain"),
    statements.length
      ? table(["Period", "Parties", { label: "Owed", num: true }, { label: "Owed", num: true }, "Currency", "Entry"], rows, { id: "statements-table" })
      : el("p", {}, "No statement recorded yet."),
    el("h2", {}, "Netting over the coalition"),
    el(
      "div",
      { class: "toolbar" },
      el("label", {}, "From ", startInput),
      el("label", {}, "to ", endInput),
      el("button", { type: "button", id: "run-netting", onclick: () => runNetting().catch(report) }, "Net"),
    ),
    result,
  );
  await runNetting();
}

// ---------------------------------------------------------------------- router

function report(err) {
  showError(err instanceof Error ? err.message : String(err));
}

const ROUTES = [
  [/^#\/block\/(\d+)$/, (m, render) => viewBlock(Number(m[1]), render), "blocks"],
  [/^#\/entry\/([0-9a-zA-Z]+)$/, (m, render) => viewEntry(m[1], render), "blocks"],
  [/^#\/member$/, (m, render) => viewMember(render), "member"],
  [/^#\/flows(\?.*)?$/, (m, render) => viewFlows(render), "flows"],
  [/^#\/settlement$/, (m, render) => viewSettlement(render), "settlement"],
  [/^(#\/blocks)?$/, (m, render) => viewBlocks(render), "blocks"],
];

let navigation = 0;

async function route() {
  const mine = ++navigation;
  const current = () => mine === navigation;
  const render = (...nodes) => {
    if (!current()) throw new Error("navigated away");
    show(...nodes);
  };
  showError("");
  const hash = location.hash || "#/blocks";
  const [pattern, view, tab] = ROUTES.find(([p]) => p.test(hash)) ?? ROUTES.at(-1);
  for (const link of document.querySelectorAll("nav a")) link.classList.toggle("active", link.dataset.view === tab);
  show(el("p", { class: "muted" }, "Loading…"));
  if (!globalThis.crypto?.subtle) {
    report("This page needs WebCrypto (crypto.subtle): open it over https, or http on localhost / 127.0.0.1.");
    return;
  }
  try {
    await view(hash.match(pattern) ?? [], render);
  } catch (err) {
    if (!current()) return;
    show(el("p", { class: "muted" }, "Nothing to show."));
    report(err);
  }
}

function start() {
  const k = keys();
  $("#ledger-key").value = k.ledger;
  $("#member-id").value = k.memberId;
  $("#member-key").value = k.member;
  $("#keys").addEventListener("submit", saveKeys);
  $("#forget-keys").addEventListener("click", forgetKeys);
  window.addEventListener("hashchange", route);
  route();
}

start();
