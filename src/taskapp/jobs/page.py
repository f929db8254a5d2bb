# ruff: noqa: E501 - one HTML/JS document, kept readable as written
"""The backend's web page at ``/``: one self-contained HTML document (no external assets).

The job list (status, scores, progress) and, per job, the score curve, the candidates and
the best prompt beside the seed prompt as a line diff, refreshed every second while the job
runs. The page asks for the backend key once and keeps it in the tab's ``sessionStorage``
(``/#key=...`` also works: a URL fragment is never sent to the server).
"""

from __future__ import annotations

__all__ = ["PAGE_HTML"]

PAGE_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>taskapp jobs</title>
<style>
body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.3em}h2{font-size:1.1em;margin-top:1.4em}
table{border-collapse:collapse}td,th{padding:3px 9px;border-bottom:1px solid #ddd;text-align:left}
tr.job{cursor:pointer}tr.job:hover{background:#f3f6ff}tr.selected{background:#e4ecff}
.bar{display:inline-block;width:120px;height:9px;background:#eee;vertical-align:middle}
.bar span{display:block;height:9px;background:#4a7}
.status-succeeded{color:#174}.status-failed{color:#b22}.status-cancelled{color:#777}
.status-running{color:#15a}.diff{font:12px ui-monospace,monospace;white-space:pre-wrap}
.del{background:#fdd}.add{background:#dfd}#error{color:#b22}
pre{white-space:pre-wrap;background:#f7f7f7;padding:6px}
</style></head><body>
<h1>taskapp jobs</h1>
<form id="login" hidden><label>Backend key <input id="key" type="password"></label>
<button>Show jobs</button></form>
<p id="error"></p>
<table id="jobs"><thead><tr><th>job</th><th>status</th><th>baseline</th><th>best</th>
<th>progress</th><th>created</th></tr></thead><tbody></tbody></table>
<section id="detail" hidden>
<h2>Job <span id="d-id"></span>: <span id="d-status"></span></h2>
<p id="d-summary"></p>
<svg id="curve" width="520" height="220" role="img" aria-label="score curve"></svg>
<h2>Candidates</h2>
<table id="candidates"><thead><tr><th>#</th><th>parents</th><th>val score</th>
<th>found at rollout</th></tr></thead><tbody></tbody></table>
<h2>Best prompt vs seed prompt</h2><div id="diff" class="diff"></div>
<h2>Events</h2><pre id="events"></pre>
</section>
<script>
"use strict";
let key = sessionStorage.getItem("taskapp-key") || "";
const m = location.hash.match(/key=([^&]+)/);
if (m) { key = decodeURIComponent(m[1]); sessionStorage.setItem("taskapp-key", key);
  history.replaceState(null, "", location.pathname); }
let selected = null, timer = null;
const $ = (id) => document.getElementById(id);
const fmt = (x) => (x === null || x === undefined) ? "–" : Number(x).toFixed(3);
function esc(s) { return String(s).replace(/[&<>"]/g, c => ({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;"}[c])); }
async function api(path) {
  const r = await fetch(path, {headers: {"Authorization": "Bearer " + key}});
  if (r.status === 401) { $("login").hidden = false; throw new Error("the backend key is missing or wrong"); }
  if (!r.ok) throw new Error(path + ": HTTP " + r.status);
  return r.json();
}
$("login").addEventListener("submit", (e) => { e.preventDefault(); key = $("key").value;
  sessionStorage.setItem("taskapp-key", key); $("login").hidden = true; refresh(); });
async function refresh() {
  try {
    const data = await api("/api/jobs?limit=100");
    $("error").textContent = "";
    const rows = data.jobs.map(j => {
      const pct = j.budget ? Math.min(100, Math.round(100 * j.metric_calls / j.budget)) : 0;
      return `<tr class="job${j.id === selected ? " selected" : ""}" data-id="${esc(j.id)}">` +
        `<td>${esc(j.id)}</td><td class="status status-${esc(j.status)}">${esc(j.status)}</td>` +
        `<td class="baseline">${fmt(j.baseline_score)}</td><td class="best">${fmt(j.best_score)}</td>` +
        `<td><span class="bar"><span style="width:${pct}%"></span></span> ${j.metric_calls}/${j.budget ?? "?"}</td>` +
        `<td>${new Date(j.created_at * 1000).toLocaleTimeString()}</td></tr>`; });
    $("jobs").tBodies[0].innerHTML = rows.join("");
    for (const tr of $("jobs").tBodies[0].rows) tr.onclick = () => { selected = tr.dataset.id; refresh(); };
    if (!selected && data.jobs.length) selected = data.jobs[0].id;
    if (selected) await detail(selected);
  } catch (e) { $("error").textContent = String(e.message || e); }
}
async function detail(id) {
  const [res, ev] = await Promise.all([api(`/api/jobs/${id}/result`), api(`/api/jobs/${id}/events?limit=5000`)]);
  const job = res.job, result = res.result;
  $("detail").hidden = false; $("d-id").textContent = job.id;
  $("d-status").textContent = job.status; $("d-status").className = "status-" + job.status;
  $("d-summary").textContent = `baseline ${fmt(job.baseline_score)} → best ${fmt(job.best_score)}; ` +
    `${job.metric_calls}/${job.budget} rollouts` + (job.error ? `; error: ${job.error}` : "");
  drawCurve(ev.events);
  const cands = result ? result.candidates : [];
  $("candidates").tBodies[0].innerHTML = cands.map(c =>
    `<tr class="candidate"><td>${c.idx}</td><td>${esc(c.parents.join(", "))}</td>` +
    `<td>${fmt(c.val_score)}</td><td>${c.discovered_at_calls ?? ""}</td></tr>`).join("");
  if (result) {
    const keyName = Object.keys(result.best_candidate)[0];
    $("diff").innerHTML = diff(result.seed_candidate[keyName] || "", result.best_candidate[keyName] || "");
  } else { $("diff").textContent = "(when the job has a result)"; }
  $("events").textContent = ev.events.slice(-15).map(e =>
    `#${e.seq} ${e.kind} ` + JSON.stringify(e.data).slice(0, 160)).join("\\n");
}
function drawCurve(events) {
  const pts = [], base = [];
  for (const e of events) {
    const d = e.data;
    if (["baseline", "iteration", "stopped"].includes(e.kind) && d.best_score !== undefined && d.best_score !== null)
      pts.push([d.metric_calls || 0, d.best_score]);
    if (e.kind === "baseline") base.push(d.score);
  }
  const W = 520, H = 220, L = 40, B = 30; let s = "";
  const maxX = Math.max(1, ...pts.map(p => p[0]));
  const x = v => L + (W - L - 10) * v / maxX, y = v => H - B - (H - B - 10) * v;
  s += `<line x1="${L}" y1="${H-B}" x2="${W-10}" y2="${H-B}" stroke="#888"/><line x1="${L}" y1="10" x2="${L}" y2="${H-B}" stroke="#888"/>`;
  s += `<text x="4" y="14" font-size="10">1.0</text><text x="4" y="${H-B}" font-size="10">0.0</text>`;
  s += `<text x="${W/2}" y="${H-6}" font-size="11" text-anchor="middle">rollouts used</text>`;
  if (base.length) s += `<line class="baseline" x1="${L}" x2="${W-10}" y1="${y(base[0])}" y2="${y(base[0])}" stroke="#c60" stroke-dasharray="4 3"/>` +
    `<text x="${W-12}" y="${y(base[0]) - 4}" font-size="10" text-anchor="end" fill="#c60">baseline</text>`;
  if (pts.length) s += `<polyline class="best" fill="none" stroke="#15a" stroke-width="2" points="${pts.map(p => x(p[0]) + "," + y(p[1])).join(" ")}"/>` +
    pts.map(p => `<circle class="point" cx="${x(p[0])}" cy="${y(p[1])}" r="2.5" fill="#15a"/>`).join("");
  $("curve").innerHTML = s;
}
function diff(a, b) {
  const x = a.split("\\n"), y = b.split("\\n"), n = x.length, m = y.length;
  const t = Array.from({length: n + 1}, () => new Array(m + 1).fill(0));
  for (let i = n - 1; i >= 0; i--) for (let j = m - 1; j >= 0; j--)
    t[i][j] = x[i] === y[j] ? t[i+1][j+1] + 1 : Math.max(t[i+1][j], t[i][j+1]);
  const out = []; let i = 0, j = 0;
  while (i < n || j < m) {
    if (i < n && j < m && x[i] === y[j]) { out.push(`<div class="same">  ${esc(x[i])}</div>`); i++; j++; }
    else if (j < m && (i >= n || t[i][j+1] >= t[i+1][j])) { out.push(`<div class="add">+ ${esc(y[j])}</div>`); j++; }
    else { out.push(`<div class="del">- ${esc(x[i])}</div>`); i++; }
  }
  return out.join("");
}
if (!key) $("login").hidden = false;
refresh(); timer = setInterval(refresh, 1000);
</script></body></html>
"""
