// Quarry console: builds a SearchRequest / RecommendRequest (protobuf JSON) from the form, posts it to the
// console's bridge (which calls the retriever's public gRPC API with debug on) and draws every stage of
// the answer: each branch's own list, the fused list, the ranked hits with their score parts, the map.
"use strict";

const PALETTE = { inverted: "#4f8cff", ann: "#9c5cf0", geo: "#1e9e6a", behavior: "#e0861a", popular: "#d3447a" };
// Per mode: the collection's branches as the last unfiltered answer listed them ({name, status, detail}).
const state = { mode: "search", branches: { search: [], recommend: [] }, map: null, layers: null, world: null };

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k === "style") e.style.cssText = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c instanceof Node ? c : String(c));
  return e;
}

function color(branch) { return PALETTE[branch] || "#6b7280"; }

function fmt(v) {
  if (v === undefined || v === null) return "";
  const n = Number(v);
  if (!Number.isFinite(n)) return String(v);
  if (Number.isInteger(n) && Math.abs(n) >= 10000) return n.toLocaleString("en");  // not years
  if (Number.isInteger(n)) return String(n);
  if (Math.abs(n) >= 100) return n.toFixed(1);
  return n.toPrecision(4).replace(/\.?0+$/, "");
}

// Geo scores are negated metres (closer is higher): show them as a distance.
function branchScore(branch, score) {
  if (branch === "geo") { const m = -Number(score || 0); return m >= 1000 ? `${fmt(m / 1000)} km` : `${fmt(m)} m`; }
  return fmt(score || 0);
}

function badge(s) {
  return el("span", { class: "badge", style: `background:${color(s.branch)}`, title: `${s.branch} rank ${s.rank}, score ${s.score}` },
    `${s.branch} #${s.rank}`);
}

function listCsv(v) { return v.split(",").map((s) => s.trim()).filter(Boolean); }

function numberOrNull(id) {
  const v = $(id).value.trim();
  if (v === "") return null;
  const n = Number(v);
  if (!Number.isFinite(n)) throw new Error(`${id}: ${JSON.stringify(v)} is not a number`);
  return n;
}

function buildRequest() {
  const req = { collection: $("collection").value.trim() };
  if (state.mode === "search") req.query = $("q").value;
  const user = $("user").value.trim(); if (user) req.user_id = user;
  const topk = numberOrNull("topk"); if (topk !== null) req.top_k = topk;
  const lat = numberOrNull("lat"), lon = numberOrNull("lon");
  if ((lat === null) !== (lon === null)) throw new Error("give both lat and lon, or neither");
  if (lat !== null) req.location = { lat, lon };
  const radius = numberOrNull("radius"); if (radius) req.radius_m = radius;
  const filters = {};
  const cats = listCsv($("categories").value); if (cats.length) filters.categories = cats;
  const tags = listCsv($("tags").value); if (tags.length) filters.tags = tags;
  const range = $("range").value.trim();
  if (range) {
    const [field, min, max] = range.split(":");
    const r = { field };
    if (min) r.min = Number(min);
    if (max) r.max = Number(max);
    filters.ranges = [r];
  }
  if (Object.keys(filters).length) req.filters = filters;
  const fusion = $("fusion").value; if (fusion) req.fusion = fusion;
  const boxes = [...document.querySelectorAll("#branches input[data-branch]")];
  const on = boxes.filter((b) => b.checked).map((b) => b.dataset.branch);
  const usable = state.branches[state.mode].filter((b) => b.status !== "disabled").map((b) => b.name);
  // Every usable branch on: send none, so the collection's own set runs (and disabled ones say why).
  if (boxes.length && !(usable.every((n) => on.includes(n)) && on.length === usable.length)) req.branches = on;
  return req;
}

function renderBranchToggles() {
  const box = $("branches");
  const previous = {};
  for (const b of box.querySelectorAll("input[data-branch]")) previous[b.dataset.branch] = b.checked;
  box.replaceChildren(el("span", { class: "muted" }, "Branches:"));
  const known = state.branches[state.mode];
  if (!known.length) box.append(el("span", { class: "muted" }, "all (the first answer lists them)"));
  for (const b of known) {
    const cb = el("input", { type: "checkbox", "data-branch": b.name, id: `branch-${b.name}` });
    const off = b.status === "disabled";  // the generation cannot feed it: shown, unchecked, with why
    cb.checked = !off && previous[b.name] !== false;
    const label = el("label", { class: "branch-toggle" + (off ? " off" : ""), style: `border-left:4px solid ${color(b.name)}`,
      title: b.detail || b.status }, cb, b.name);
    box.append(label);
  }
}

function showError(code, message) {
  const box = $("error");
  box.hidden = false;
  box.textContent = `${code}: ${message}`;
}

function clearResults() {
  $("error").hidden = true;
  $("columns").replaceChildren();
  $("summary").textContent = "";
  $("user-panel").hidden = true;
  $("map-wrap").hidden = true;
}

function candidateList(cands, hitIds, scoreOf) {
  const ol = el("ol");
  for (const c of cands) {
    const li = el("li", { class: "cand" + (hitIds.has(c.id) ? " in-hits" : ""), "data-id": c.id },
      el("span", { class: "rank" }, c.rank),
      el("span", { class: "title", title: `${c.title} (${c.id})` }, c.title || c.id, " ", el("span", { class: "id" }, c.id)),
      el("span", { class: "score" }, scoreOf(c)));
    if (c.sources) li.append(el("span", { class: "srcs" }, ...c.sources.map(badge)));
    ol.append(li);
  }
  return ol;
}

function branchColumn(stat, cands, hitIds) {
  const status = (stat.status || "").replace("BRANCH_STATUS_", "").toLowerCase();
  const col = el("div", { class: "col branch-col", "data-branch": stat.branch },
    el("h3", { style: `border-top:3px solid ${color(stat.branch)}` }, stat.branch,
      el("span", { class: `status-${status}` }, status),
      el("span", { class: "stat" }, `${stat.candidates || 0} cand · ${fmt(stat.latency_ms || 0)} ms`)));
  if (stat.detail) col.append(el("div", { class: "detail" }, stat.detail));
  if (cands && cands.length) col.append(candidateList(cands, hitIds, (c) => branchScore(stat.branch, c.score)));
  return col;
}

function hitRow(h, i, featureNames, ranker) {
  const dbg = h.debug || {};
  const parts = [`fused #${dbg.fused_rank || "?"} (${fmt(dbg.fused_score || 0)})`];
  if (h.distance_m !== undefined) parts.push(h.distance_m >= 1000 ? `${fmt(h.distance_m / 1000)} km away` : `${fmt(h.distance_m)} m away`);
  if (h.category) parts.push(h.category);
  const attrs = Object.entries(h.attributes || {}).map(([k, v]) => `${k} ${fmt(v)}`);
  const row = el("div", { class: "hit", "data-id": h.id },
    el("div", { class: "line" }, el("span", { class: "rank muted" }, `${i + 1}.`),
      el("span", { class: "title" }, h.title || h.id), el("span", { class: "id muted" }, h.id),
      el("span", { class: "score", title: ranker === "fused" ? "fused score" : `model score (${ranker})` }, fmt(h.score))),
    el("div", { class: "parts" }, ...(h.sources || []).map(badge), " ", parts.join(" · "), attrs.length ? ` · ${attrs.join(", ")}` : ""));
  const feats = dbg.features || {};
  const names = featureNames.length ? featureNames : Object.keys(feats);
  if (names.length) {
    const table = el("table", { class: "features" });
    for (const n of names) {
      const v = feats[n] || 0;
      table.append(el("tr", {}, el("td", {}, n), el("td", { class: v === 0 ? "zero" : "" }, fmt(v))));
    }
    row.append(el("details", {}, el("summary", { title: "after the schema's defaults and transforms" },
      `model inputs (${names.length})`), table));
  }
  return row;
}

function render(req, res) {
  const d = res.debug || {};
  const hits = res.hits || [];
  const hitIds = new Set(hits.map((h) => h.id));
  const stats = res.branch_stats || [];
  const lists = Object.fromEntries((d.branches || []).map((b) => [b.branch, b.candidates || []]));
  // Learn the collection's branches for this mode (an unfiltered answer lists every configured one).
  if (!req.branches) {
    state.branches[state.mode] = stats.map((s) => ({
      name: s.branch, status: (s.status || "").replace("BRANCH_STATUS_", "").toLowerCase(), detail: s.detail || "" }));
    renderBranchToggles();
  }
  $("summary").textContent = `${hits.length} of ${(d.fused || []).length} fused candidates · ${fmt(res.took_ms || 0)} ms · ` +
    `fusion ${d.fusion || "?"} · ranker ${d.ranker || "?"} · ${res.snapshot_version || ""}` + (res.degraded ? " · DEGRADED" : "");
  const cols = $("columns");
  for (const s of stats) cols.append(branchColumn(s, lists[s.branch], hitIds));
  const fused = el("div", { class: "col fused-col", id: "fused" },
    el("h3", {}, "fused", el("span", { class: "stat" }, `${(d.fused || []).length} after filters`)));
  fused.append(candidateList(d.fused || [], hitIds, (c) => fmt(c.score)));
  cols.append(fused);
  const ranked = el("div", { class: "col ranked", id: "ranked" },
    el("h3", {}, "ranked", el("span", { class: "stat" }, d.ranker === "fused" ? "no model: fused order" : d.ranker || "")));
  if (!hits.length) ranked.append(el("div", { class: "detail" }, "no hits"));
  hits.forEach((h, i) => ranked.append(hitRow(h, i, d.feature_names || [], d.ranker || "")));
  cols.append(ranked);
  renderUser(d.user);
  renderMap(req, res);
}

function renderUser(u) {
  if (!u) return;
  $("user-panel").hidden = false;
  $("user-name").textContent = u.user_id;
  if (!u.available) { $("user-counters").textContent = "the user store did not answer (degraded)"; return; }
  const last = u.last_ts ? new Date(u.last_ts * 1000).toISOString().replace("T", " ").slice(0, 19) : "never";
  $("user-counters").textContent = `real-time store: ${fmt(u.events_total || 0)} events · ${fmt(u.distinct_items || 0)} distinct items · ` +
    `weight ${fmt(u.weight_sum || 0)} · last ${last}`;
  const body = $("recent").querySelector("tbody");
  body.replaceChildren(...(u.recent || []).map((e) => el("tr", {},
    el("td", {}, new Date((e.ts || 0) * 1000).toISOString().replace("T", " ").slice(0, 19)),
    el("td", {}, e.type), el("td", {}, fmt(e.weight || 0)), el("td", {}, e.title ? `${e.title} (${e.item_id})` : e.item_id))));
  if (!(u.recent || []).length) body.append(el("tr", {}, el("td", { colspan: "4", class: "muted" }, "no recent events")));
}

function ensureMap() {
  if (state.map) return state.map;
  state.map = L.map("map", { worldCopyJump: true, preferCanvas: false }).setView([20, 0], 2);
  if (state.world) {
    L.geoJSON(topojson.feature(state.world, state.world.objects.countries), {
      style: { color: "#8fa3b8", weight: 0.6, fillColor: "#f2efe6", fillOpacity: 1 }, interactive: false,
    }).addTo(state.map);
  }
  state.layers = L.layerGroup().addTo(state.map);
  return state.map;
}

function renderMap(req, res) {
  const d = res.debug || {};
  const hits = (res.hits || []).filter((h) => h.location);
  const others = (d.fused || []).filter((c) => c.location && !hits.some((h) => h.id === c.id));
  if (!hits.length && !req.location) return;
  $("map-wrap").hidden = false;
  const map = ensureMap();
  map.invalidateSize();
  state.layers.clearLayers();
  const points = [];
  for (const c of others.slice(0, 300)) {
    L.circleMarker([c.location.lat, c.location.lon], { radius: 3, color: "#9aa3b2", weight: 1, fillOpacity: 0.6, className: "cand-marker" })
      .bindTooltip(`${c.title} (fused #${c.rank})`).addTo(state.layers);
  }
  hits.forEach((h, i) => {
    const branch = (h.sources && h.sources[0] && h.sources[0].branch) || "";
    L.circleMarker([h.location.lat, h.location.lon], { radius: 7, color: "#fff", weight: 1.5, fillColor: color(branch), fillOpacity: 0.95, className: "hit-marker" })
      .bindTooltip(`${i + 1}. ${h.title}`, { permanent: i < 5, direction: "right" }).addTo(state.layers);
    points.push([h.location.lat, h.location.lon]);
  });
  if (req.location) {
    const q = [req.location.lat, req.location.lon];
    L.circleMarker(q, { radius: 6, color: "#b3261e", weight: 2, fillColor: "#fff", fillOpacity: 1, className: "query-marker" })
      .bindTooltip("query location").addTo(state.layers);
    if (req.radius_m) L.circle(q, { radius: req.radius_m, color: "#b3261e", weight: 1, fill: false, dashArray: "4 4" }).addTo(state.layers);
    points.push(q);
  }
  $("map-note").textContent = `${hits.length} hits, ${Math.min(others.length, 300)} other candidates` + (req.location ? ", query point" : "");
  if (points.length === 1) map.setView(points[0], 8);
  else map.fitBounds(L.latLngBounds(points).pad(0.15), { maxZoom: 10 });
}

async function submit(ev) {
  if (ev) ev.preventDefault();
  clearResults();
  let req;
  try { req = buildRequest(); } catch (e) { showError("INVALID_ARGUMENT", e.message); return; }
  $("go").disabled = true;
  try {
    const resp = await fetch(`/api/${state.mode}`, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(req) });
    const body = await resp.json();
    if (!resp.ok || body.error) { const e = body.error || {}; showError(e.code || resp.status, e.message || resp.statusText); return; }
    render(req, body);
    document.body.dataset.answered = String(Date.now());
  } catch (e) {
    showError("UNAVAILABLE", `the console server did not answer: ${e.message}`);
  } finally {
    $("go").disabled = false;
  }
}

function setMode(mode) {
  state.mode = mode;
  for (const t of document.querySelectorAll(".tab")) t.classList.toggle("active", t.dataset.mode === mode);
  for (const e of document.querySelectorAll(".search-only")) e.hidden = mode !== "search";
  $("go").textContent = mode === "search" ? "Search" : "Recommend";
  renderBranchToggles();
  clearResults();
}

async function init() {
  for (const t of document.querySelectorAll(".tab")) t.addEventListener("click", () => setMode(t.dataset.mode));
  $("form").addEventListener("submit", submit);
  try {
    state.world = await (await fetch("/vendor/countries-110m.json")).json();
  } catch (e) { state.world = null; }
  try {
    const info = await (await fetch("/api/info")).json();
    $("target").textContent = `retriever ${info.target}` + (info.status_error ? ` (status: ${info.status_error})` : "");
    const dl = $("collections");
    for (const c of info.collections) dl.append(el("option", { value: c.name }, c.items ? `${c.name} (${fmt(c.items)} items)` : c.name));
    if (info.collections.length && !$("collection").value) $("collection").value = info.collections[0].name;
  } catch (e) { showError("UNAVAILABLE", `console info: ${e.message}`); }
  const params = new URLSearchParams(location.search);
  for (const [k, v] of params) if ($(k) && k !== "mode") $(k).value = v;
  setMode(params.get("mode") === "recommend" ? "recommend" : "search");
  document.body.dataset.ready = "1";
  if (params.get("run")) submit();
}

init();
