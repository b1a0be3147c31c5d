// edgecap dashboard, Live: the captions as they happen (server-sent events from /api/events; a reconnect
// resumes where it left off), each row updated in place when its final replaces its draft.
"use strict";

const STATS_MS = 5000;
const LIMIT = 200;

const tbody = document.getElementById("captions");
const empty = document.getElementById("empty");
const live = document.getElementById("live");
const agentFilter = document.getElementById("agent-filter");
const siteFilter = document.getElementById("site-filter");
const rows = new Map(); // "agent_id/segment_id" -> { tr, cells, key }: ids are unique per device only
const agents = new Set();
let loaded = false; // after the first render, new and changed rows flash
let generation = 0; // bumped when the filter changes: answers to older requests are dropped
let source = null; // the EventSource of the live feed
let current = new Map(); // "agent_id/segment_id" -> the newest state of each segment seen

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function clock(seconds) {
  return new Date(seconds * 1000).toLocaleTimeString([], { hour12: false });
}

// Words of `text` that are not in the longest common word sequence with `draft` are marked.
function wordsWithChanges(text, draft) {
  const norm = (w) => w.toLowerCase().replace(/[^\p{L}\p{N}']/gu, "");
  const a = text.split(/\s+/).filter(Boolean);
  const b = (draft || "").split(/\s+/).filter(Boolean).map(norm);
  const lcs = Array.from({ length: a.length + 1 }, () => new Array(b.length + 1).fill(0));
  for (let i = a.length - 1; i >= 0; i--) {
    for (let j = b.length - 1; j >= 0; j--) {
      lcs[i][j] = norm(a[i]) === b[j] ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
    }
  }
  const out = document.createDocumentFragment();
  let i = 0, j = 0;
  while (i < a.length) {
    if (j < b.length && norm(a[i]) === b[j]) { out.append(a[i]); i++; j++; }
    else if (j < b.length && lcs[i][j + 1] >= lcs[i + 1][j]) { j++; continue; }
    else { out.append(draft ? el("mark", "", a[i]) : a[i]); i++; }
    if (i < a.length) out.append(" ");
  }
  return out;
}

function createRow(seg) {
  const tr = el("tr");
  tr.dataset.agentId = seg.agent_id;
  tr.dataset.segmentId = seg.segment_id;
  const cells = {};
  for (const name of ["time", "agent", "draft", "final", "state"]) {
    cells[name] = el("td", name);
    tr.append(cells[name]);
  }
  cells.time.append(el("span", "time", clock(seg.started_at)),
                    el("span", "sub", `${(seg.ended_at - seg.started_at).toFixed(1)} s`));
  const link = el("a", "agent", seg.agent_id);
  link.href = `/segments/${encodeURIComponent(seg.agent_id)}/${encodeURIComponent(seg.segment_id)}`;
  cells.agent.append(el("span", "sub", seg.site || "–"), link, el("span", "sub", `#${seg.seq}`));
  return { tr, cells, key: "" };
}

function updateRow(entry, seg) {
  const key = JSON.stringify([seg.draft, seg.final]);
  if (key === entry.key) return;
  entry.key = key;
  const { tr, cells } = entry;
  const final = seg.final;

  cells.draft.replaceChildren();
  if (seg.draft) {
    cells.draft.append(el("span", "draft-text", seg.draft.text || "(silence)"),
                       el("span", "sub", seg.draft.model_id));
  } else {
    cells.draft.append(el("span", "pending", "no draft received"));
  }

  cells.final.replaceChildren();
  cells.state.replaceChildren();
  if (final) {
    const text = el("span", "final-text");
    if (final.text) text.append(wordsWithChanges(final.text, seg.draft && seg.draft.text));
    else text.textContent = "(silence)";
    const lag = final.stored_at - seg.ended_at; // how long after the speech ended the final was stored
    const sub = el("span", "sub", `${final.model_id} · v${final.version} · `);
    sub.append(el("span", "latency", `+${lag.toFixed(1)} s`));
    cells.final.append(text, sub);
    cells.state.append(el("span", `badge final ${final.source}`, `final · ${final.source}`));
  } else {
    cells.final.append(el("span", "pending", "waiting for the cloud…"));
    cells.state.append(el("span", "badge draft", "draft"));
  }
  tr.className = final ? (final.source === "edge" ? "is-final from-edge" : "is-final") : "is-draft";
  tr.dataset.state = final ? "final" : "draft";
  if (loaded) tr.classList.add("fresh");
}

function render(segments) {
  const seen = new Set();
  let previous = null;
  for (const seg of segments) {
    const id = `${seg.agent_id}/${seg.segment_id}`;
    seen.add(id);
    let entry = rows.get(id);
    if (!entry) {
      entry = createRow(seg);
      rows.set(id, entry);
    }
    updateRow(entry, seg);
    const wanted = previous ? previous.nextSibling : tbody.firstChild;
    if (wanted !== entry.tr) tbody.insertBefore(entry.tr, wanted);
    previous = entry.tr;
    if (!agents.has(seg.agent_id)) {
      agents.add(seg.agent_id);
      agentFilter.append(el("option", "", seg.agent_id));
      agentFilter.lastChild.value = seg.agent_id;
    }
  }
  for (const [id, entry] of rows) {
    if (!seen.has(id)) {
      entry.tr.remove();
      rows.delete(id);
    }
  }
  empty.hidden = rows.size > 0;
  loaded = true;
}

function renderStats(stats) {
  for (const name of ["segments", "drafts", "finals"]) {
    document.getElementById(`stat-${name}`).textContent = stats[name];
  }
}

async function fetchJSON(url) {
  const response = await fetch(url, { cache: "no-store" });
  if (response.status === 401) location.assign("/login"); // the session ended
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return response.json();
}

function version(seg) {
  return seg.final ? seg.final.version : 1;
}

function keep(seg) {
  const id = `${seg.agent_id}/${seg.segment_id}`;
  const known = current.get(id);
  if (!known || version(seg) >= version(known)) current.set(id, seg);
}

function show() {
  const newest = [...current.values()].sort((a, b) => b.started_at - a.started_at || b.seq - a.seq);
  render(newest.slice(0, LIMIT));
}

function filterParams() {
  const params = new URLSearchParams();
  if (siteFilter.value) params.set("site", siteFilter.value);
  if (agentFilter.value) params.set("agent_id", agentFilter.value);
  return params;
}

async function load(asked) {
  const params = filterParams();
  params.set("limit", String(LIMIT));
  const segments = await fetchJSON(`/api/segments?${params}`);
  if (asked !== generation) return;
  for (const seg of segments) keep(seg);
  show();
}

function connect() {
  const asked = ++generation;
  if (source) source.close();
  current = new Map();
  // the feed first, then the list: a change in between comes in both, and applying it twice is harmless
  source = new EventSource(`/api/events?${filterParams()}`);
  source.addEventListener("segment", (event) => {
    if (asked !== generation) return;
    keep(JSON.parse(event.data));
    show();
  });
  source.onopen = () => {
    live.textContent = "live";
    live.className = "live ok";
    load(asked).catch((error) => console.warn(error));
  };
  source.onerror = () => {
    live.textContent = "reconnecting…"; // the browser retries and resumes from the last event id
    live.className = "live down";
  };
}

async function pollStats() {
  try {
    renderStats(await fetchJSON("/api/stats"));
  } catch (error) {
    console.warn(error);
  }
}

function refilter() {
  for (const entry of rows.values()) entry.tr.remove();
  rows.clear();
  loaded = false;
  const query = filterParams().toString();
  history.replaceState(null, "", query ? `/?${query}` : "/"); // the filters live in the URL
  connect();
}
agentFilter.addEventListener("change", refilter);
siteFilter.addEventListener("change", refilter);
for (const option of agentFilter.options) if (option.value) agents.add(option.value);

connect();
pollStats();
setInterval(pollStats, STATS_MS);
