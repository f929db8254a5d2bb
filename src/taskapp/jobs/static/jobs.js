// taskapp jobs page. Served as a file by `taskapp backend serve`; no inline code, no other host.
// Views (each a URL): /jobs?status=&q=&sort=&page= (the list), /jobs/ID (one job),
// /compare?a=ID&b=ID (two jobs). Live: one server-sent event stream of job changes
// (/api/stream) and, for an open running job, its event stream. The backend key is kept in
// sessionStorage and sent as a header, never in a URL.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
  const PAGE_SIZE = 100;
  const LIST_PAGE = 500; // jobs per /api/jobs request
  const served = new Set((document.body.dataset.actions || "").split(/\s+/).filter(Boolean));
  const ACTIONS = [
    // name, label, statuses it applies to, confirmation (destructive) or null
    ["pause", "Pause", ["queued", "running"], null],
    ["resume", "Resume", ["paused"], null],
    ["stop", "Stop", ["running"], "Stop this job now and keep the best prompt found so far as its result?"],
    ["cancel", "Cancel", ["queued", "running", "paused"], "Cancel this job? It ends without finishing its budget."],
    ["retry", "Retry", ["failed", "cancelled"], null],
    ["delete", "Delete", ["succeeded", "failed", "cancelled"], "Delete this job, its events and its result? This cannot be undone."],
  ];

  // -- the key -------------------------------------------------------------------------
  let key = sessionStorage.getItem("taskapp-key") || "";
  const fragment = location.hash.match(/key=([^&]+)/);
  if (fragment) {
    key = decodeURIComponent(fragment[1]);
    sessionStorage.setItem("taskapp-key", key);
    history.replaceState(null, "", location.pathname + location.search);
  }
  const auth = () => ({ Authorization: "Bearer " + key });

  // -- helpers -------------------------------------------------------------------------
  const fmt = (x, d = 3) => (x === null || x === undefined || Number.isNaN(x)) ? "–" : Number(x).toFixed(d);
  const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  const time = (t) => t ? new Date(t * 1000).toLocaleTimeString([], { hour12: false }) : "";
  const dateTime = (t) => {
    if (!t) return "";
    const d = new Date(t * 1000), now = new Date();
    return d.toDateString() === now.toDateString() ? time(t) : d.toLocaleDateString() + " " + time(t);
  };
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const setText = (el, text) => { if (el.textContent !== text) el.textContent = text; };
  const jobPath = (id) => "/api/jobs/" + encodeURIComponent(id);

  class ApiError extends Error {
    constructor(status, code, message) { super(message); this.status = status; this.code = code; }
  }
  function errorOf(body, fallback) {
    // both envelopes: {"error": {type, message}} and {"detail": {"error": {code, message}}}
    const e = (body && (body.error || (body.detail && body.detail.error))) || {};
    const detail = body && typeof body.detail === "string" ? body.detail : "";
    return { code: e.code || e.type || "", message: e.message || detail || fallback };
  }
  async function api(path, opts = {}) {
    const r = await fetch(path, { ...opts, headers: { ...auth(), ...(opts.headers || {}) } });
    if (r.status === 401) { showLogin(); throw new ApiError(401, "unauthorized", "the backend key is missing or wrong: enter it above"); }
    let body = null;
    try { body = await r.json(); } catch (_) { body = null; }
    if (!r.ok) { const e = errorOf(body, `${opts.method || "GET"} ${path}: HTTP ${r.status}`); throw new ApiError(r.status, e.code, e.message); }
    return body;
  }
  function showError(e) { setText($("error"), e ? String(e.message || e) : ""); }

  // Server-sent events over fetch (EventSource cannot send the key as a header).
  // `path` is a function so a reconnect resumes from the latest position.
  function stream(path, onEvent, status) {
    const ctl = new AbortController();
    let stopped = false;
    (async () => {
      let delay = 400;
      while (!stopped) {
        try {
          const r = await fetch(path(), { headers: { ...auth(), Accept: "text/event-stream" }, signal: ctl.signal });
          if (r.status === 401) { showLogin(); return; }
          if (r.status === 404) { onEvent("gone", {}); return; }
          if (!r.ok || !r.body) throw new Error("HTTP " + r.status);
          status && status(true); delay = 400;
          const reader = r.body.getReader(), dec = new TextDecoder();
          let buf = "";
          for (;;) {
            const { value, done } = await reader.read();
            if (done) break;
            buf += dec.decode(value, { stream: true });
            let i;
            while ((i = buf.indexOf("\n\n")) >= 0) {
              const chunk = buf.slice(0, i); buf = buf.slice(i + 2);
              let kind = "message"; const data = [];
              for (const line of chunk.split("\n")) {
                if (line.startsWith("event:")) kind = line.slice(6).trim();
                else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
              }
              if (!data.length) continue;
              let parsed; try { parsed = JSON.parse(data.join("\n")); } catch (_) { continue; }
              if (onEvent(kind, parsed) === false) { stopped = true; ctl.abort(); return; }
            }
          }
        } catch (_) { if (stopped) return; }
        if (stopped) return;
        status && status(false);
        await sleep(delay); delay = Math.min(delay * 2, 5000);
      }
    })();
    return () => { stopped = true; ctl.abort(); };
  }

  // -- login ---------------------------------------------------------------------------
  function showLogin() { $("login").hidden = false; $("key").focus(); }
  $("login").addEventListener("submit", (e) => {
    e.preventDefault(); key = $("key").value.trim();
    sessionStorage.setItem("taskapp-key", key); $("login").hidden = true; showError(null); start();
  });

  // -- the job list: every job, kept current by /api/stream ------------------------------
  const jobs = new Map(); // id -> job row
  let stopChanges = null, since = 0, listReady = false;
  const listeners = new Set(); // called with a changed job

  function upsert(job) {
    jobs.set(job.id, job);
    since = Math.max(since, job.updated_at || 0);
    for (const fn of listeners) fn(job);
    scheduleList();
  }
  let listTotal = 0, listLoading = true;
  async function loadAll() {
    // the first page small (it is what the list shows first), then the rest in big pages
    let offset = 0, cursor = null, limit = PAGE_SIZE;
    for (;;) {
      const where = cursor ? "cursor=" + encodeURIComponent(cursor) : "offset=" + offset;
      const data = await api(`/api/jobs?limit=${limit}&${where}`);
      for (const job of data.jobs) { jobs.set(job.id, job); since = Math.max(since, job.updated_at || 0); }
      if (typeof data.total === "number") listTotal = data.total;
      listReady = true;
      const last = data.next_cursor ? false : cursor !== null || data.jobs.length < limit;
      if (last) listLoading = false;
      scheduleList();
      if (last) return;
      if (data.next_cursor) cursor = data.next_cursor;
      else offset += data.jobs.length;
      limit = LIST_PAGE;
    }
  }
  function followChanges() {
    if (stopChanges) stopChanges();
    stopChanges = stream(() => "/api/stream?since=" + since, (kind, job) => {
      if (kind === "job") upsert(job);
    }, (up) => { const c = $("conn"); c.className = up ? "live" : "down"; setText(c, up ? "live" : "reconnecting…"); });
  }

  const listState = { q: "", status: "", sort: "newest", page: 0 };
  const picked = new Set();
  function readListQuery() {
    const p = new URLSearchParams(location.search);
    listState.q = p.get("q") || ""; listState.status = p.get("status") || "";
    listState.sort = p.get("sort") || "newest"; listState.page = Math.max(0, (parseInt(p.get("page") || "1", 10) || 1) - 1);
    $("q").value = listState.q; $("status-filter").value = listState.status; $("sort").value = listState.sort;
  }
  function listQuery() {
    const p = new URLSearchParams();
    if (listState.q) p.set("q", listState.q);
    if (listState.status) p.set("status", listState.status);
    if (listState.sort !== "newest") p.set("sort", listState.sort);
    if (listState.page) p.set("page", String(listState.page + 1));
    const s = p.toString();
    return s ? "?" + s : "";
  }
  const progress = (j) => j.budget ? Math.min(1, (j.metric_calls || 0) / j.budget) : 0;
  const gain = (j) => (j.best_score ?? -Infinity) - (j.baseline_score ?? 0);
  const STATUS_ORDER = ["running", "paused", "queued", "failed", "cancelled", "succeeded"];
  const SORTS = {
    newest: (a, b) => b.created_at - a.created_at || (a.id < b.id ? -1 : 1),
    oldest: (a, b) => a.created_at - b.created_at || (a.id < b.id ? -1 : 1),
    best: (a, b) => (b.best_score ?? -1) - (a.best_score ?? -1) || b.created_at - a.created_at,
    gain: (a, b) => gain(b) - gain(a) || b.created_at - a.created_at,
    progress: (a, b) => progress(b) - progress(a) || b.created_at - a.created_at,
    status: (a, b) => STATUS_ORDER.indexOf(a.status) - STATUS_ORDER.indexOf(b.status) || b.created_at - a.created_at,
  };
  function searchText(j) {
    const l = j.labels || {};
    return [j.id, j.status, l.task, l.config_name, l.model, l.reflection_model, j.task_app_url, j.error].join(" ").toLowerCase();
  }
  function visibleJobs() {
    const words = listState.q.toLowerCase().split(/\s+/).filter(Boolean);
    const rows = [...jobs.values()].filter((j) =>
      (!listState.status || j.status === listState.status) && words.every((w) => searchText(j).includes(w)));
    rows.sort(SORTS[listState.sort] || SORTS.newest);
    return rows;
  }
  const rowOf = new Map(); // id -> tr
  function makeRow(id) {
    const tr = document.createElement("tr");
    tr.className = "job"; tr.dataset.id = id;
    tr.innerHTML = `<td><input type="checkbox" class="pick" aria-label="select ${esc(id)} to compare"></td>` +
      `<td class="id"><a href="/jobs/${encodeURIComponent(id)}">${esc(id)}</a></td><td class="status"></td>` +
      `<td class="task opt"></td><td class="config opt"></td><td class="model opt"></td>` +
      `<td class="baseline num opt2"></td><td class="best num"></td>` +
      `<td class="prog"><progress max="1" value="0"></progress><span class="prog-text"></span></td><td class="created opt"></td>`;
    tr.querySelector(".pick").addEventListener("change", (e) => {
      if (e.target.checked) picked.add(id); else picked.delete(id);
      updateCompareButton();
    });
    tr.addEventListener("click", (e) => {
      if (e.target.closest("input, a")) return;
      navigate("/jobs/" + encodeURIComponent(id) + listQuery());
    });
    rowOf.set(id, tr);
    return tr;
  }
  function fillRow(tr, j) {
    const l = j.labels || {};
    const status = tr.children[2];
    if (status.textContent !== j.status) { status.textContent = j.status; status.className = "status status-" + j.status; }
    setText(tr.children[3], l.task || ""); tr.children[3].title = l.task || "";
    setText(tr.children[4], l.config_name || ""); tr.children[4].title = l.config_name || "";
    const model = [l.model, l.reflection_model && "reflection: " + l.reflection_model].filter(Boolean).join(", ");
    setText(tr.children[5], l.model || l.reflection_model || ""); tr.children[5].title = model;
    setText(tr.children[6], fmt(j.baseline_score));
    setText(tr.children[7], fmt(j.best_score));
    const bar = tr.children[8].firstChild;
    const value = progress(j);
    if (Number(bar.value) !== value) bar.value = value;
    setText(tr.children[8].lastChild, `${j.metric_calls || 0}/${j.budget ?? "?"}`);
    setText(tr.children[9], dateTime(j.created_at));
    tr.querySelector(".pick").checked = picked.has(j.id);
    const link = tr.children[1].firstChild, href = "/jobs/" + encodeURIComponent(j.id) + listQuery();
    if (link.getAttribute("href") !== href) link.setAttribute("href", href); // back keeps the filter
  }
  let listScheduled = false;
  function scheduleList() {
    if (listScheduled) return;
    listScheduled = true;
    requestAnimationFrame(() => { listScheduled = false; if (!$("list-view").hidden) renderList(); });
  }
  function renderList() {
    const rows = visibleJobs();
    const unfiltered = !listState.q && !listState.status;
    const expected = listLoading && unfiltered ? Math.max(rows.length, listTotal) : rows.length;
    const pages = Math.max(1, Math.ceil(expected / PAGE_SIZE));
    if (listState.page >= pages) listState.page = pages - 1;
    const first = listState.page * PAGE_SIZE;
    const shown = rows.slice(first, first + PAGE_SIZE);
    const body = $("jobs").tBodies[0];
    const keep = new Set(shown.map((j) => j.id));
    for (const tr of [...body.rows]) if (!keep.has(tr.dataset.id)) tr.remove();
    shown.forEach((j, i) => {
      const tr = rowOf.get(j.id) || makeRow(j.id);
      fillRow(tr, j);
      if (body.children[i] !== tr) body.insertBefore(tr, body.children[i] || null);
    });
    const total = listLoading ? Math.max(jobs.size, listTotal) : jobs.size;
    const filtered = rows.length === jobs.size ? "" : ` (${rows.length} match)`;
    const more = listLoading && listReady ? ` (loading ${Math.max(0, listTotal - jobs.size)} more…)` : "";
    setText($("list-summary"), (listReady
      ? (total ? `${total} job${total === 1 ? "" : "s"}${filtered}` + (rows.length ? `; showing ${first + 1}–${first + shown.length}` : "; none match the filter") : "no jobs yet: submit one with PromptLearningJob or taskapp jobs")
      : "loading…") + more);
    setText($("page-info"), `page ${listState.page + 1} of ${pages}`);
    $("prev").disabled = listState.page === 0;
    $("next").disabled = listState.page >= pages - 1;
  }
  function updateCompareButton() {
    const b = $("compare-btn");
    b.disabled = picked.size !== 2;
    setText(b, picked.size === 2 ? "Compare the 2 selected" : `Compare 2 selected (${picked.size} now)`);
  }
  function listChanged() {
    history.replaceState(null, "", "/jobs" + listQuery());
    renderList();
  }
  $("q").addEventListener("input", () => { listState.q = $("q").value.trim(); listState.page = 0; listChanged(); });
  $("status-filter").addEventListener("change", () => { listState.status = $("status-filter").value; listState.page = 0; listChanged(); });
  $("sort").addEventListener("change", () => { listState.sort = $("sort").value; listState.page = 0; listChanged(); });
  $("filters").addEventListener("submit", (e) => e.preventDefault());
  $("prev").addEventListener("click", () => { listState.page--; listChanged(); });
  $("next").addEventListener("click", () => { listState.page++; listChanged(); });
  $("compare-btn").addEventListener("click", () => {
    const [a, b] = [...picked];
    navigate(`/compare?a=${encodeURIComponent(a)}&b=${encodeURIComponent(b)}`);
  });

  // -- one job's data: job row, events, result, seed matrix; follows its event stream ----
  class JobData {
    constructor(id, onChange) { this.id = id; this.onChange = onChange; this.events = []; this.result = null; this.seeds = null; this.stop = null; this.job = null; }
    async load() {
      const [job, result] = await Promise.all([api(jobPath(this.id)), api(jobPath(this.id) + "/result")]);
      this.job = job; this.result = result.result;
      await this.moreEvents();
      await this.loadSeeds();
      if (!TERMINAL.has(job.status)) this.follow();
    }
    get lastSeq() { return this.events.length ? this.events[this.events.length - 1].seq : 0; }
    async moreEvents() {
      for (;;) {
        const page = await api(`${jobPath(this.id)}/events?after=${this.lastSeq}&limit=5000`);
        this.events.push(...page.events);
        if (page.events.length < 5000) return;
      }
    }
    async loadSeeds() {
      try { this.seeds = await api(jobPath(this.id) + "/seeds"); } catch (_) { this.seeds = null; }
    }
    follow() {
      if (this.stop) return;
      let seedsTimer = null;
      this.stop = stream(() => `${jobPath(this.id)}/events/stream?after=${this.lastSeq}`, (kind, ev) => {
        if (kind === "end" || kind === "gone") { this.stop = null; this.finished(); return false; }
        if (ev.seq <= this.lastSeq) return true;
        this.events.push(ev);
        if ((ev.kind === "candidate" || ev.kind === "baseline") && !seedsTimer) {
          seedsTimer = setTimeout(async () => { seedsTimer = null; await this.loadSeeds(); this.onChange("seeds"); }, 300);
        }
        this.onChange("event", ev);
        return true;
      });
    }
    async finished() {
      try {
        const [job, result] = await Promise.all([api(jobPath(this.id)), api(jobPath(this.id) + "/result")]);
        this.job = job; this.result = result.result;
        await this.moreEvents(); await this.loadSeeds();
      } catch (_) { /* shown by the next load */ }
      this.onChange("done");
    }
    close() { if (this.stop) { this.stop(); this.stop = null; } }
    // the current best texts: the result's, else the newest best candidate's, else the seed's
    best() {
      if (this.result && this.result.best_candidate) return { texts: this.result.best_candidate, idx: this.result.best_idx, final: true };
      let found = null, seed = null;
      for (const e of this.events) {
        if (e.kind === "baseline" && e.data.texts) seed = e.data.texts;
        if (e.kind === "candidate" && e.data.is_best && e.data.texts) found = { texts: e.data.texts, idx: e.data.candidate, score: e.data.score };
      }
      if (found) return found;
      return seed ? { texts: seed, idx: 0, seedOnly: true } : null;
    }
    seed() {
      if (this.result && this.result.seed_candidate) return this.result.seed_candidate;
      const e = this.events.find((x) => x.kind === "baseline" && x.data.texts);
      return e ? e.data.texts : null;
    }
    curve() {
      const pts = [], cands = []; let baseline = null;
      for (const e of this.events) {
        const d = e.data || {};
        if (["baseline", "iteration", "stopped"].includes(e.kind) && d.best_score !== undefined && d.best_score !== null) pts.push([d.metric_calls || 0, d.best_score]);
        if (e.kind === "baseline") { baseline = d.score; cands.push([d.metric_calls || 0, d.score]); }
        if (e.kind === "candidate") cands.push([d.metric_calls || 0, d.score]);
      }
      if (baseline === null && this.job) baseline = this.job.baseline_score;
      return { pts, cands, baseline, budget: this.job ? this.job.budget : null };
    }
  }

  // -- the chart -----------------------------------------------------------------------
  function niceStep(span, count) {
    const raw = span / count, mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const n = raw / mag;
    return (n <= 1 ? 1 : n <= 2 ? 2 : n <= 5 ? 5 : 10) * mag;
  }
  // series: [{name, color, pts, cands, baseline}], budget: a number or null
  function drawChart(svg, series, budget) {
    const W = 640, H = 280, L = 46, R = 22, T = 30, B = 40;
    let dataMax = 0, lo = 0, hi = 1;
    for (const s of series) for (const [x, y] of [...s.pts, ...s.cands]) {
      dataMax = Math.max(dataMax, x); lo = Math.min(lo, y); hi = Math.max(hi, y);
    }
    // the budget line when it fits the scale; far beyond the data (a long run just
    // started) it would squeeze the curve into the left edge: then a note instead
    const budgetOnScale = budget && (!dataMax || budget <= 3 * dataMax);
    const maxX = Math.max(1, budgetOnScale ? Math.max(budget, dataMax) : dataMax * 1.1);
    const X = (v) => L + (W - L - R) * v / maxX, Y = (v) => H - B - (H - B - T) * (v - lo) / (hi - lo);
    let s = "";
    const xs = niceStep(maxX, 6), ys = niceStep(hi - lo, 5);
    for (let v = 0; v <= maxX + 1e-9; v += xs) {
      s += `<g class="tick x"><line x1="${X(v)}" x2="${X(v)}" y1="${T}" y2="${H - B}"/><text x="${X(v)}" y="${H - B + 14}" text-anchor="middle">${Math.round(v)}</text></g>`;
    }
    for (let v = Math.ceil(lo / ys) * ys; v <= hi + 1e-9; v += ys) {
      s += `<g class="tick y"><line x1="${L}" x2="${W - R}" y1="${Y(v)}" y2="${Y(v)}"/><text x="${L - 6}" y="${Y(v) + 4}" text-anchor="end">${v.toFixed(1)}</text></g>`;
    }
    s += `<line x1="${L}" y1="${H - B}" x2="${W - R}" y2="${H - B}" stroke="#7b8794"/><line x1="${L}" y1="${T}" x2="${L}" y2="${H - B}" stroke="#7b8794"/>`;
    s += `<text x="${(L + W - R) / 2}" y="${H - 8}" text-anchor="middle">rollouts used</text>`;
    s += `<text x="12" y="${(T + H - B) / 2}" text-anchor="middle" transform="rotate(-90 12 ${(T + H - B) / 2})">val score</text>`;
    if (budgetOnScale) {
      s += `<line class="budget" x1="${X(budget)}" x2="${X(budget)}" y1="${T}" y2="${H - B}" stroke="#6b4fbb" stroke-dasharray="2 3"/>`;
    } else if (budget) {
      s += `<text class="budget-note" x="${W - R}" y="${T + 12}" text-anchor="end" fill="#6b4fbb">budget ${budget} →</text>`;
    }
    series.forEach((ser) => {
      if (ser.baseline !== null && ser.baseline !== undefined) {
        s += `<line class="baseline" x1="${L}" x2="${W - R}" y1="${Y(ser.baseline)}" y2="${Y(ser.baseline)}" stroke="${ser.color}" stroke-opacity=".7" stroke-dasharray="5 4"/>`;
      }
      s += ser.cands.map(([x, y]) => `<circle class="cand" cx="${X(x)}" cy="${Y(y)}" r="2.6" fill="none" stroke="${ser.color}" stroke-opacity=".55"/>`).join("");
      if (ser.pts.length) {
        const path = []; let prev = null;
        for (const [x, y] of ser.pts) { if (prev !== null) path.push(`${X(x)},${Y(prev)}`); path.push(`${X(x)},${Y(y)}`); prev = y; }
        s += `<polyline class="best" fill="none" stroke="${ser.color}" stroke-width="2" points="${path.join(" ")}"/>`;
      }
    });
    // legend: one entry per job (its colour), then what the marks mean
    const ink = series.length > 1 ? "#3b4650" : series[0].color;
    const legend = series.length > 1 ? series.map((ser) => [ser.name, ser.color, "line"]) : [];
    legend.push(["best so far", ink, "line"], ["candidates", ink, "dot"], ["baseline", ink, "dash"]);
    if (budget) legend.push(["budget", "#6b4fbb", "dots"]);
    let lx = L;
    s += `<g class="legend">` + legend.map(([name, color, kind]) => {
      const dash = kind === "dash" ? ' stroke-dasharray="4 3"' : kind === "dots" ? ' stroke-dasharray="2 3"' : "";
      const mark = kind === "dot" ? `<circle cx="${lx + 8}" cy="14" r="3" fill="none" stroke="${color}"/>`
        : `<line x1="${lx}" x2="${lx + 16}" y1="14" y2="14" stroke="${color}" stroke-width="${kind === "line" ? 2 : 1.5}"${dash}/>`;
      const out = `${mark}<text x="${lx + 20}" y="18">${esc(name)}</text>`;
      lx += 28 + name.length * 5.8;
      return out;
    }).join("") + `</g>`;
    svg.innerHTML = s;
  }

  // -- text diff -----------------------------------------------------------------------
  function diffLines(a, b) {
    const x = a.split("\n"), y = b.split("\n"), n = x.length, m = y.length;
    if (n * m > 4e6) return `<div class="del">${esc(a)}</div><div class="add">${esc(b)}</div>`;
    const t = Array.from({ length: n + 1 }, () => new Uint32Array(m + 1));
    for (let i = n - 1; i >= 0; i--) for (let j = m - 1; j >= 0; j--) t[i][j] = x[i] === y[j] ? t[i + 1][j + 1] + 1 : Math.max(t[i + 1][j], t[i][j + 1]);
    const out = []; let i = 0, j = 0;
    while (i < n || j < m) {
      if (i < n && j < m && x[i] === y[j]) { out.push(`<div class="same">  ${esc(x[i])}</div>`); i++; j++; }
      else if (j < m && (i >= n || t[i][j + 1] >= t[i + 1][j])) { out.push(`<div class="add">+ ${esc(y[j])}</div>`); j++; }
      else { out.push(`<div class="del">- ${esc(x[i])}</div>`); i++; }
    }
    return out.join("");
  }
  function diffTexts(a, b) {
    const names = [...new Set([...Object.keys(a || {}), ...Object.keys(b || {})])];
    return names.map((k) => (names.length > 1 ? `<div class="comp-name">${esc(k)}</div>` : "") + diffLines((a || {})[k] || "", (b || {})[k] || "")).join("");
  }
  function showTexts(texts) {
    const names = Object.keys(texts || {});
    return names.map((k) => (names.length > 1 ? `<div class="comp-name">${esc(k)}</div>` : "") + esc(texts[k])).join("\n");
  }

  // -- events, as sentences ------------------------------------------------------------
  function describe(e) {
    const d = e.data || {};
    switch (e.kind) {
      case "submitted": return "submitted" + (d.config_name ? ` from ${d.config_name}` : "") + (d.task_app_url ? ` for ${d.task_app_url}` : "");
      case "started": return d.task ? `started on task “${d.task}”` : "started";
      case "warning": return d.message || "";
      case "baseline": return `seed prompt scored ${fmt(d.score)} on ${Object.keys(d.val_scores || {}).length || "?"} validation seeds (${d.metric_calls} rollouts)`;
      case "candidate": return `candidate #${d.candidate}` + (d.parents && d.parents.length ? ` (from #${d.parents.join(", #")})` : "") + ` scored ${fmt(d.score)}` + (d.is_best ? " — new best" : "");
      case "iteration": {
        const outcome = d.accepted ? "proposal accepted" : d.skipped ? `skipped (${d.skipped})` : d.rejected ? "proposal rejected" : "no proposal";
        return `iteration ${d.iteration}: ${outcome}; best ${fmt(d.best_score)}; ${d.metric_calls}/${d.budget ?? "?"} rollouts`;
      }
      case "stopped": return `stopped (${d.reason || "?"}) after ${d.metric_calls} rollouts; best ${fmt(d.best_score)}`;
      case "status": return `status: ${d.status}` + (d.reason ? ` (${d.reason})` : "") + (d.error ? ` — ${d.error}` : "");
      case "cancel_requested": return "cancel requested; the job stops after its current step";
      default: {
        const parts = Object.entries(d).map(([k, v]) => `${k}: ${typeof v === "object" ? JSON.stringify(v) : v}`);
        return parts.join("; ");
      }
    }
  }
  function eventItem(e) {
    const li = document.createElement("li");
    const best = e.kind === "candidate" && e.data && e.data.is_best ? " k-candidate-best" : "";
    const failed = e.kind === "status" && e.data && e.data.status === "failed" ? " k-status-failed" : "";
    li.className = "k-" + e.kind + best + failed;
    li.innerHTML = `<time>${time(e.ts)}</time><span class="kind">${esc(e.kind)}</span> ${esc(describe(e))}`;
    return li;
  }

  // -- the job view ----------------------------------------------------------------------
  let current = null; // JobData of the open job
  let bestTab = "best";
  function openJob(id) {
    if (current && current.id === id) return;
    if (current) current.close();
    const data = new JobData(id, (what, ev) => jobChanged(data, what, ev));
    current = data;
    $("d-id").textContent = id;
    setText($("d-status"), ""); $("events").innerHTML = ""; $("seeds").innerHTML = ""; setText($("seeds-summary"), "");
    $("candidates").tBodies[0].innerHTML = ""; $("best-prompt").textContent = ""; $("diff").innerHTML = "";
    setText($("best-note"), "");
    document.title = `${id} — taskapp jobs`;
    data.load().then(() => { if (current === data) renderJob(data, true); })
      .catch((e) => { if (current === data) { showError(e); setText($("d-status"), e.status === 404 ? "not found" : "error"); } });
  }
  function jobChanged(data, what, ev) {
    if (current !== data) return;
    if (what === "event") {
      const box = $("events"), atEnd = box.scrollHeight - box.scrollTop - box.clientHeight < 30;
      box.appendChild(eventItem(ev));
      if (atEnd) box.scrollTop = box.scrollHeight;
    }
    renderJob(data, what !== "event");
  }
  function renderSummary(data) {
    const j = data.job, r = data.result;
    const status = $("d-status");
    setText(status, j.status); status.className = "badge status-" + j.status;
    const l = j.labels || {};
    const labels = [["task", l.task], ["config", l.config_name], ["model", l.model], ["reflection model", l.reflection_model]]
      .filter(([, v]) => v).map(([k, v]) => `${k} <b>${esc(v)}</b>`).join(" · ");
    $("d-labels").innerHTML = labels || "&nbsp;";
    const items = [
      ["baseline (val)", fmt(j.baseline_score)], ["best (val)", fmt(j.best_score)],
      ["rollouts", `${j.metric_calls || 0} of ${j.budget ?? "?"}`],
    ];
    const test = r && r.test_scores;
    items.push(["test: baseline → best", test ? `${fmt(test.baseline)} → ${fmt(test.best)}` : (r ? "no test seeds" : "after the run")]);
    items.push(["attempts", String(j.attempts ?? 0)], ["created", dateTime(j.created_at)]);
    if (j.finished_at) items.push(["finished", dateTime(j.finished_at)]);
    else if (j.started_at) items.push(["running for", Math.round(Date.now() / 1000 - j.started_at) + " s"]);
    let html = items.map(([k, v]) => `<div><dt>${esc(k)}</dt><dd>${esc(v)}</dd></div>`).join("");
    if (j.error) html += `<div class="wide"><dt>error</dt><dd class="error">${esc(j.error)}</dd></div>`;
    const dl = $("d-summary");
    if (dl.innerHTML !== html) dl.innerHTML = html;
    renderActions(j);
  }
  function renderActions(j) {
    const box = $("actions");
    const html = ACTIONS.filter(([, , statuses]) => statuses.includes(j.status)).map(([name, label]) => {
      const ok = served.has(name);
      return `<button type="button" data-action="${name}"${name === "delete" || name === "cancel" || name === "stop" ? ' class="danger"' : ""}${ok ? "" : ' disabled title="this backend does not serve this action yet"'}>${label}</button>`;
    }).join("");
    if (box.dataset.html !== html) { box.innerHTML = html; box.dataset.html = html; }
  }
  $("actions").addEventListener("click", async (e) => {
    const button = e.target.closest("button[data-action]");
    if (!button || !current) return;
    const name = button.dataset.action, spec = ACTIONS.find((a) => a[0] === name);
    const id = current.id;
    if (spec[3] && !(await confirmDialog(spec[3], spec[1]))) return;
    button.disabled = true;
    try {
      if (name === "delete") {
        await api(jobPath(id), { method: "DELETE" });
        jobs.delete(id);
        navigate("/jobs" + listQuery());
        return;
      }
      const job = await api(`${jobPath(id)}/${name}`, { method: "POST", headers: { "Content-Type": "application/json" }, body: "{}" });
      showError(null);
      if (job && job.id) upsert(job);
      if (current && current.id === id && !TERMINAL.has((job && job.status) || "")) current.follow();
    } catch (err) { showError(err); button.disabled = false; }
  });
  function confirmDialog(text, label) {
    const dlg = $("confirm");
    setText($("confirm-text"), text); setText($("confirm-yes"), label);
    return new Promise((resolve) => {
      dlg.addEventListener("close", () => resolve(dlg.returnValue === "ok"), { once: true });
      dlg.returnValue = "";
      dlg.showModal(); $("confirm-no").focus();
    });
  }
  function renderBest(data) {
    const best = data.best(), seed = data.seed();
    if (!best) {
      setText($("best-note"), data.job && data.job.status === "failed" ? "(the job failed before its baseline was scored)" : "(after the baseline is scored)");
      $("best-prompt").textContent = ""; $("diff").innerHTML = "";
      return;
    }
    const status = data.job ? data.job.status : "";
    const ended = TERMINAL.has(status) ? `, the best before it ${status === "failed" ? "failed" : "was " + status}` : ", so far";
    const note = best.final ? `(candidate #${best.idx}, the result)` : best.seedOnly ? `(no improvement${TERMINAL.has(status) ? "" : " yet"}: the seed prompt)` : `(candidate #${best.idx}, ${fmt(best.score)}${ended})`;
    setText($("best-note"), note);
    const text = showTexts(best.texts);
    const pane = $("best-prompt");
    if (pane.dataset.text !== text) { pane.innerHTML = text; pane.dataset.text = text; }
    const diffHtml = seed ? diffTexts(seed, best.texts) : "";
    if ($("diff").dataset.text !== diffHtml) { $("diff").innerHTML = diffHtml; $("diff").dataset.text = diffHtml; }
  }
  function setTab(which) {
    bestTab = which;
    $("tab-best").setAttribute("aria-selected", String(which === "best"));
    $("tab-diff").setAttribute("aria-selected", String(which === "diff"));
    $("best-prompt").hidden = which !== "best"; $("diff").hidden = which !== "diff";
  }
  $("tab-best").addEventListener("click", () => setTab("best"));
  $("tab-diff").addEventListener("click", () => setTab("diff"));
  document.querySelector(".tabs").addEventListener("keydown", (e) => {
    if (e.key === "ArrowRight" || e.key === "ArrowLeft") { const next = bestTab === "best" ? "diff" : "best"; setTab(next); $("tab-" + next).focus(); }
  });
  function bucket(v) { return v === null || v === undefined ? "sn" : "s" + Math.max(0, Math.min(4, Math.floor(v * 4.999))); }
  function renderSeeds(data) {
    const m = data.seeds;
    if (!m || !m.seeds.length) { setText($("seeds-summary"), "per-seed scores appear once the baseline is scored"); $("seeds").innerHTML = ""; return; }
    const fixed = new Set(m.fixed.map(String)), broke = new Set(m.broke.map(String));
    const head = "<tr><th class='row'>candidate \\ seed</th>" + m.seeds.map((s) => `<th scope="col" class="${fixed.has(String(s)) ? "fixed" : broke.has(String(s)) ? "broke" : ""}" title="seed ${esc(s)}">${esc(String(s).slice(-3))}</th>`).join("") + "</tr>";
    const body = m.candidates.map((c) => `<tr class="${c.idx === m.best_idx ? "best" : ""}"><th scope="row" class="row">#${c.idx}${c.idx === 0 ? " seed" : ""}${c.idx === m.best_idx ? " best" : ""} ${fmt(c.score, 2)}</th>` +
      c.scores.map((v, i) => `<td class="${bucket(v)}" title="candidate #${c.idx}, seed ${esc(m.seeds[i])}: ${fmt(v, 2)}"></td>`).join("") + "</tr>").join("");
    const html = `<table class="matrix">${head}${body}</table>`;
    if ($("seeds").dataset.html !== html) { $("seeds").innerHTML = html; $("seeds").dataset.html = html; }
    const list = (xs) => xs.length ? xs.slice(0, 30).join(", ") + (xs.length > 30 ? ", …" : "") : "none";
    $("seeds-summary").innerHTML = m.best_idx === 0 || m.best_idx === null ? "the best is still the seed prompt"
      : `best #${m.best_idx} against the seed prompt: <span class="fixed-list">fixed ${m.fixed.length} seed(s) (${esc(list(m.fixed))})</span>, ` +
        `<span class="broke-list">broke ${m.broke.length} (${esc(list(m.broke))})</span> of ${m.seeds.length}`;
    renderPareto(m);
  }
  function renderPareto(m) {
    const rows = (m.candidates || []).filter((c) => c.objectives && Object.keys(c.objectives).length >= 2);
    $("pareto-box").hidden = rows.length === 0;
    if (!rows.length) return;
    const [ox, oy] = Object.keys(rows[0].objectives);
    const pts = rows.map((c) => [c.objectives[ox], c.objectives[oy], c.idx]);
    const front = pts.filter((p) => !pts.some((q) => q !== p && q[0] >= p[0] && q[1] >= p[1] && (q[0] > p[0] || q[1] > p[1])));
    const W = 420, H = 300, L = 46, B = 40, T = 14, R = 14;
    const lo = (i) => Math.min(0, ...pts.map((p) => p[i])), hi = (i) => Math.max(1, ...pts.map((p) => p[i]));
    const X = (v) => L + (W - L - R) * (v - lo(0)) / (hi(0) - lo(0)), Y = (v) => H - B - (H - B - T) * (v - lo(1)) / (hi(1) - lo(1));
    let s = `<line x1="${L}" y1="${H - B}" x2="${W - R}" y2="${H - B}" stroke="#7b8794"/><line x1="${L}" y1="${T}" x2="${L}" y2="${H - B}" stroke="#7b8794"/>`;
    for (const f of [0, 0.25, 0.5, 0.75, 1]) {
      const vx = lo(0) + f * (hi(0) - lo(0)), vy = lo(1) + f * (hi(1) - lo(1));
      s += `<g class="tick x"><line x1="${X(vx)}" x2="${X(vx)}" y1="${T}" y2="${H - B}"/><text x="${X(vx)}" y="${H - B + 14}" text-anchor="middle">${vx.toFixed(2)}</text></g>`;
      s += `<g class="tick y"><line x1="${L}" x2="${W - R}" y1="${Y(vy)}" y2="${Y(vy)}"/><text x="${L - 4}" y="${Y(vy) + 4}" text-anchor="end">${vy.toFixed(2)}</text></g>`;
    }
    s += `<text x="${(L + W) / 2}" y="${H - 8}" text-anchor="middle">${esc(ox)}</text><text x="12" y="${H / 2}" transform="rotate(-90 12 ${H / 2})" text-anchor="middle">${esc(oy)}</text>`;
    const sorted = [...front].sort((a, b) => a[0] - b[0]);
    s += `<polyline class="front" fill="none" stroke="#17703a" stroke-width="1.5" points="${sorted.map((p) => X(p[0]) + "," + Y(p[1])).join(" ")}"/>`;
    s += pts.map((p) => `<circle cx="${X(p[0])}" cy="${Y(p[1])}" r="4" fill="${front.includes(p) ? "#17703a" : "#fff"}" stroke="#17703a"><title>#${p[2]}: ${esc(ox)} ${fmt(p[0])}, ${esc(oy)} ${fmt(p[1])}</title></circle>` +
      `<text x="${X(p[0]) + 6}" y="${Y(p[1]) - 5}">#${p[2]}</text>`).join("");
    $("pareto").innerHTML = s;
  }
  function renderCandidates(data) {
    const r = data.result;
    let rows;
    if (r && r.candidates) rows = r.candidates.map((c) => [c.idx, c.parents.join(", "), c.val_score, c.discovered_at_calls]);
    else rows = data.events.filter((e) => e.kind === "baseline" || e.kind === "candidate").map((e) => [e.data.candidate || 0, (e.data.parents || []).join(", "), e.data.score, e.data.metric_calls]);
    const html = rows.map(([i, p, s, at]) => `<tr class="candidate"><td>${i}</td><td>${esc(p)}</td><td class="num">${fmt(s)}</td><td class="num">${at ?? ""}</td></tr>`).join("");
    const body = $("candidates").tBodies[0];
    if (body.dataset.html !== html) { body.innerHTML = html; body.dataset.html = html; }
  }
  function renderJob(data, full) {
    if (!data.job) return;
    const fresh = jobs.get(data.id);
    if (fresh && (fresh.updated_at || 0) >= (data.job.updated_at || 0)) data.job = fresh;
    renderSummary(data);
    const c = data.curve();
    drawChart($("curve"), [{ name: "", color: "#1760b8", ...c }], c.budget);
    setText($("curve-caption"), c.pts.length ? `best ${fmt(c.pts[c.pts.length - 1][1])} after ${c.pts[c.pts.length - 1][0]} rollouts; baseline ${fmt(c.baseline)}; budget ${c.budget ?? "?"}` : "the curve starts once the baseline is scored");
    renderBest(data);
    renderCandidates(data);
    renderSeeds(data);
    if (full) {
      const box = $("events");
      box.replaceChildren(...data.events.map(eventItem));
      box.scrollTop = box.scrollHeight;
    }
  }
  listeners.add((job) => {
    if (current && current.id === job.id && !$("job-view").hidden) {
      current.job = job;
      renderSummary(current);
      if (!TERMINAL.has(job.status) && !current.stop) current.follow();
    }
  });

  // -- the comparison ------------------------------------------------------------------
  let pair = null;
  function flatten(obj, prefix = "", out = {}) {
    for (const [k, v] of Object.entries(obj || {})) {
      const name = prefix ? prefix + "." + k : k;
      if (v && typeof v === "object" && !Array.isArray(v)) flatten(v, name, out);
      else out[name] = Array.isArray(v) && v.length > 12 && v.every((x) => Number.isInteger(x)) ? `${v.length} seeds ${v[0]}…${v[v.length - 1]}` : JSON.stringify(v);
    }
    return out;
  }
  function openCompare(a, b) {
    if (pair) pair.forEach((d) => d.close());
    const datas = [a, b].map((id) => new JobData(id, () => renderCompare(datas)));
    pair = datas;
    setText($("c-a"), a); setText($("c-b"), b);
    document.title = `compare ${a} and ${b} — taskapp jobs`;
    Promise.all(datas.map((d) => d.load())).then(() => renderCompare(datas)).catch(showError);
  }
  let compareScheduled = false;
  function renderCompare(datas) {
    if (pair !== datas || datas.some((d) => !d.job) || compareScheduled) return;
    compareScheduled = true;
    requestAnimationFrame(() => { compareScheduled = false; drawCompare(datas); });
  }
  function drawCompare([A, B]) {
    const rows = [
      ["status", (d) => d.job.status], ["task", (d) => (d.job.labels || {}).task || ""],
      ["config", (d) => (d.job.labels || {}).config_name || ""], ["model", (d) => (d.job.labels || {}).model || ""],
      ["baseline (val)", (d) => fmt(d.job.baseline_score)], ["best (val)", (d) => fmt(d.job.best_score)],
      ["test best", (d) => d.result && d.result.test_scores ? fmt(d.result.test_scores.best) : "–"],
      ["rollouts", (d) => `${d.job.metric_calls || 0} of ${d.job.budget ?? "?"}`],
    ];
    $("c-summary").innerHTML = `<tr><th></th><th class="sa"><a href="/jobs/${encodeURIComponent(A.id)}">${esc(A.id)}</a></th><th class="sb"><a href="/jobs/${encodeURIComponent(B.id)}">${esc(B.id)}</a></th></tr>` +
      rows.map(([k, f]) => { const x = f(A), y = f(B); return `<tr class="${x !== y ? "differs" : ""}"><th>${esc(k)}</th><td>${esc(x)}</td><td>${esc(y)}</td></tr>`; }).join("");
    const ca = A.curve(), cb = B.curve();
    drawChart($("c-curve"), [{ name: "first: " + A.id, color: "#1760b8", ...ca }, { name: "second: " + B.id, color: "#c2570c", ...cb }], Math.max(ca.budget || 0, cb.budget || 0) || null);
    const fa = flatten(A.job.config), fb = flatten(B.job.config);
    const all = $("c-all").checked;
    const names = [...new Set([...Object.keys(fa), ...Object.keys(fb)])].sort();
    const diffRows = names.filter((k) => all || fa[k] !== fb[k]);
    $("c-config").innerHTML = diffRows.length
      ? "<tr><th>setting</th><th class='sa'>first</th><th class='sb'>second</th></tr>" + diffRows.map((k) => `<tr class="${fa[k] !== fb[k] ? "differs" : ""}"><th>${esc(k)}</th><td>${esc(fa[k] ?? "(unset)")}</td><td>${esc(fb[k] ?? "(unset)")}</td></tr>`).join("")
      : "<tr><td>the two configs are the same</td></tr>";
    const ba = A.best(), bb = B.best();
    $("c-diff").innerHTML = ba && bb ? diffTexts(ba.texts, bb.texts) : "(each job's best prompt appears after its baseline)";
    const sa = A.seeds, sb = B.seeds;
    if (sa && sb && sa.best_idx !== null && sb.best_idx !== null) {
      const row = (m) => { const c = m.candidates.find((x) => x.idx === m.best_idx); const out = {}; m.seeds.forEach((s, i) => { out[s] = c.scores[i]; }); return out; };
      const ra = row(sa), rb = row(sb), win = [], lose = [];
      for (const s of Object.keys(ra)) if (s in rb && ra[s] !== null && rb[s] !== null) { if (ra[s] > rb[s]) win.push(s); else if (rb[s] > ra[s]) lose.push(s); }
      $("c-seeds").innerHTML = `<span class="sa">first better on ${win.length} seed(s)</span>${win.length ? " (" + esc(win.slice(0, 30).join(", ")) + ")" : ""}; ` +
        `<span class="sb">second better on ${lose.length}</span>${lose.length ? " (" + esc(lose.slice(0, 30).join(", ")) + ")" : ""}`;
    } else setText($("c-seeds"), "per-seed scores appear once both baselines are scored");
  }
  $("c-all").addEventListener("change", () => pair && renderCompare(pair));

  // -- routing and keys ------------------------------------------------------------------
  function navigate(url) { history.pushState(null, "", url); route(); }
  function route() {
    const path = location.pathname;
    const m = path.match(/^\/jobs\/([^/]+)\/?$/);
    const view = m ? "job" : path === "/compare" ? "compare" : "list";
    $("list-view").hidden = view !== "list"; $("job-view").hidden = view !== "job"; $("compare-view").hidden = view !== "compare";
    if (view !== "job" && current) { current.close(); current = null; }
    if (view !== "compare" && pair) { pair.forEach((d) => d.close()); pair = null; }
    if (view === "list") { document.title = "taskapp jobs"; readListQuery(); renderList(); }
    else if (view === "job") { openJob(decodeURIComponent(m[1])); $("back").href = "/jobs" + location.search; }
    else {
      const p = new URLSearchParams(location.search);
      if (p.get("a") && p.get("b")) openCompare(p.get("a"), p.get("b"));
      else showError("a comparison needs two jobs: /compare?a=ID&b=ID");
    }
  }
  window.addEventListener("popstate", route);
  document.addEventListener("click", (e) => {
    const a = e.target.closest("a[href^='/']");
    if (!a || e.ctrlKey || e.metaKey || e.shiftKey || e.button !== 0) return;
    e.preventDefault(); navigate(a.getAttribute("href"));
  });
  document.addEventListener("keydown", (e) => {
    if (e.target.closest("input, select, textarea, dialog") || e.ctrlKey || e.metaKey || e.altKey) {
      if (e.key === "Escape" && e.target.id === "q") { e.target.blur(); }
      return;
    }
    if (e.key === "/" && !$("list-view").hidden) { e.preventDefault(); $("q").focus(); return; }
    if (e.key === "Escape" && $("list-view").hidden) { navigate("/jobs" + (current ? location.search : listQuery())); return; }
    if (!$("list-view").hidden && ["j", "k", "ArrowDown", "ArrowUp"].includes(e.key)) {
      const links = [...$("jobs").tBodies[0].querySelectorAll("td.id a")];
      if (!links.length) return;
      e.preventDefault();
      const at = links.indexOf(document.activeElement);
      const step = e.key === "j" || e.key === "ArrowDown" ? 1 : -1;
      links[Math.max(0, Math.min(links.length - 1, at < 0 ? 0 : at + step))].focus();
    }
  });

  // -- start ---------------------------------------------------------------------------
  async function start() {
    if (!key) { showLogin(); return; }
    route();
    try { await loadAll(); followChanges(); }
    catch (e) { showError(e); }
  }
  updateCompareButton();
  start();
})();
