"""The ETL page: plain HTML, JavaScript and inline SVG (no CDN: it works offline), served by the
plugin's app at /sndw/ui.

It reads the plugin's /overview route (one request, whatever the number of sources) with the Airflow
UI's session cookie; every value from the warehouse is inserted as text, never as HTML. Times show
relative ("3 min ago") with the exact UTC time on hover; durations in s or min.
"""

PAGE_HTML = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ETL - sndw</title>
<style>
 body{font:14px system-ui,sans-serif;margin:16px;color:#1f2933;background:#fff}
 h1{font-size:20px;margin:0 0 8px} h2{font-size:16px;margin:20px 0 4px;border-bottom:1px solid #d9e2ec;padding-bottom:2px}
 table{border-collapse:collapse;margin:4px 0;width:100%;table-layout:fixed} td,th{border:1px solid #d9e2ec;padding:3px 6px;text-align:left;vertical-align:top;overflow-wrap:anywhere}
 th{background:#f0f4f8;font-weight:600;font-size:12px} td.n{text-align:right;font-variant-numeric:tabular-nums}
 .badge{display:inline-block;padding:1px 8px;border-radius:9px;color:#fff;font-size:12px;margin-left:6px}
 .fresh,.success,.pass{background:#2f9e44} .stale,.warn,.quarantined{background:#e67700}
 .never,.failing,.failure,.fail,.error{background:#c92a2a} .unscheduled{background:#868e96}
 .err{color:#c92a2a;font-family:monospace;font-size:12px;word-break:break-word} .muted{color:#627d98}
 .old{color:#627d98;text-decoration:line-through} .bad{color:#c92a2a;font-weight:600}
 #filters{margin:8px 0;display:flex;gap:12px;align-items:center;flex-wrap:wrap} #filters input,#filters select{font:inherit;padding:2px 4px}
 section.hidden{display:none} a{color:#1c7ed6} svg.chart{display:block}
</style></head>
<body>
<h1>ETL <span id="overall-status" class="badge"></span></h1>
<div id="summary" class="muted">Loading...</div>
<div id="filters">
 <label>Source <input id="filter-source" type="search" placeholder="name contains"></label>
 <label>Tag <select id="filter-tag"><option value="">all</option></select></label>
 <label>State <select id="filter-state"><option value="">all</option><option>failing</option><option>stale</option>
  <option>never</option><option>fresh</option><option>unscheduled</option></select></label>
 <span id="shown" class="muted"></span>
</div>
<div id="sources"></div>
<script>
"use strict";
const API = location.pathname.replace(/\/ui\/?$/, "");          // the plugin's prefix, e.g. /sndw
const BASE = API.replace(/\/sndw$/, "");                          // Airflow's base URL path
const SVG = "http://www.w3.org/2000/svg";
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) if (v != null) e.setAttribute(k, v);
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(c == null ? "" : String(c)));
  return e;
}
function svg(tag, attrs) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  return e;
}
function badge(text) { return el("span", {class: "badge " + text}, text); }
function link(text, href, title) { return el("a", {href: href, target: "_top", title: title}, text); }
function dagUrl(dag) { return BASE + "/dags/" + encodeURIComponent(dag); }
function runUrl(dag, run) { return dagUrl(dag) + "/runs/" + encodeURIComponent(run); }
function logUrl(e) {  // the task instance's log in Airflow 3's UI, as TaskInstance.log_url builds it
  return runUrl(e.dag_id, e.run_id) + "/tasks/" + encodeURIComponent(e.task_id) +
    (e.try_number > 0 ? "?try_number=" + e.try_number : "");
}
function fmt(n) { return n == null ? "" : Number(n).toLocaleString("en-US"); }
// ------------------------------------------------------------------ times as people read them
function exact(iso) { return new Date(iso).toISOString().slice(0, 19).replace("T", " ") + " UTC"; }
function relative(iso) {
  const s = (Date.now() - new Date(iso).getTime()) / 1000, a = Math.abs(s), sfx = s >= 0 ? " ago" : "";
  const pre = s >= 0 ? "" : "in ";
  if (a < 45) return s >= 0 ? "just now" : "in " + Math.round(a) + " s";
  if (a < 3600) return pre + Math.max(1, Math.round(a / 60)) + " min" + sfx;
  if (a < 48 * 3600) return pre + Math.round(a / 3600) + " h" + sfx;
  return pre + Math.round(a / 86400) + " days" + sfx;
}
function when(iso) {  // "3 min ago", the exact UTC time on hover
  if (!iso) return el("span", {class: "muted"}, "never");
  return el("time", {datetime: iso, title: exact(iso)}, relative(iso));
}
function duration(sec) {
  if (sec == null) return "";
  if (sec < 10) return sec.toFixed(1) + " s";
  if (sec < 60) return Math.round(sec) + " s";
  return (sec / 60).toFixed(sec < 600 ? 1 : 0) + " min";
}
setInterval(() => document.querySelectorAll("time[datetime]").forEach(t => {
  t.textContent = relative(t.getAttribute("datetime")); }), 30000);
// ------------------------------------------------------------------ a table's last loads
function chart(loads) {
  // bars: rows loaded (failed loads red); line: seconds each load took
  const w = 190, h = 34, n = 30, bw = w / n;
  const s = svg("svg", {width: w, height: h + 2, class: "chart", viewBox: "0 0 " + w + " " + (h + 2)});
  const maxRows = Math.max(1, ...loads.map(l => l.rows || 0)), maxSec = Math.max(0.001, ...loads.map(l => l.seconds || 0));
  const offset = n - loads.length, pts = [];
  loads.forEach((l, i) => {
    const failed = l.status === "failure", x = (offset + i) * bw;  // a failed load: a full-height red bar
    const bh = failed ? h - 2 : Math.max(1, Math.round((h - 2) * (l.rows || 0) / maxRows));
    const r = svg("rect", {x: x + 0.5, y: h - bh, width: Math.max(1, bw - 1.5), height: bh,
                           fill: failed ? "#fa5252" : "#74c0fc", "fill-opacity": failed ? 0.6 : 1});
    const t = svg("title");
    t.textContent = (l.finished_at ? exact(l.finished_at) : "") + (l.partition ? " | partition " + l.partition : "") +
      " | " + (l.status === "failure" ? "failed" : fmt(l.rows) + " rows") + " | " + duration(l.seconds);
    r.append(t); s.append(r);
    if (l.seconds != null) pts.push((x + bw / 2).toFixed(1) + "," + (h - (h - 4) * l.seconds / maxSec).toFixed(1));
  });
  if (pts.length > 1) s.append(svg("polyline", {points: pts.join(" "), fill: "none", stroke: "#e8590c", "stroke-width": 1.2}));
  const last = loads[loads.length - 1];
  const cap = el("div", {class: "muted", style: "font-size:11px"},
    loads.length ? "max " + fmt(maxRows) + " rows, " + duration(maxSec) + (last ? " | last " + duration(last.seconds) : "") : "no loads");
  return el("div", {}, s, cap);
}
function gapsCell(g) {
  if (!g) return el("span", {class: "muted"}, "");
  if (!g.missing.length) return el("span", {class: "muted", title: g.from + " to " + g.to}, "none");
  const what = g.kind === "dates" ? " missing date" : " missed run";
  const shown = (g.missing.length > 5 ? "..., " : "") + g.missing.slice(-5).join(", ");  // the latest five
  return el("span", {class: "bad", title: g.missing.join(", ")}, g.missing.length + what + (g.missing.length > 1 ? "s" : ""),
            el("div", {class: "muted", style: "font-weight:normal"}, shown));
}
function qualityCell(q) {
  if (!q) return "";
  const parts = ["pass", "warn", "quarantined", "fail", "error"].filter(k => q.counts[k]).map(k => q.counts[k] + " " + k);
  const box = el("div", {class: "quality"}, parts.join(" | "));
  if (q.failing.length) box.append(el("div", {class: "bad"}, q.failing.join(", ")));
  box.title = q.checks.map(c => c.name + ": " + c.status + (c.failing_rows ? " (" + c.failing_rows + " rows)" : "") +
                           (c.checked_at ? " at " + exact(c.checked_at) : "")).join("\n");
  return box;
}
function errorCell(e) {
  if (!e) return "";
  const box = el("div", {class: e.current ? "err" : "err old", title: e.current ? "" : "a later load succeeded"}, e.message || "");
  const where = el("div", {class: "muted"}, e.step + " ", when(e.finished_at), e.partition ? " (" + e.partition + ")" : "");
  if (e.dag_id && e.run_id && e.task_id) where.append(" ", link("log", logUrl(e), "the task's log in Airflow"));
  return el("div", {}, box, where);
}
function stateCell(st) {
  if (!st) return "";
  return el("div", {}, el("code", {}, st.cursor + " = " + (st.value == null ? "null" : st.value)),
            el("div", {class: "muted"}, "updated ", when(st.updated_at)));
}
const HEAD = [["table", "15%"], ["state", "6%"], ["last 30 loads", "204px"], ["last success", "8%"], ["gaps", "12%"],
              ["quality", "11%"], ["last error", ""], ["state (watermark / CDC)", "15%"]];
function showSource(src) {
  const box = el("section", {id: "source-" + src.name, class: "source", "data-name": src.name, "data-state": src.state,
                             "data-tags": JSON.stringify(src.tags)});
  const last = src.last_load;
  box.append(el("h2", {}, link(src.name, dagUrl(src.dag_id)), badge(src.state),
    el("span", {class: "muted", style: "font-weight:normal;font-size:13px"}, "  " + src.kind + " | schedule " +
       (src.schedule || "manual") + (src.tags.length ? " | tags " + src.tags.join(", ") : "") + " | last load "),
    last ? when(last.finished_at) : el("span", {class: "muted"}, "never"),
    last && last.run_id ? el("span", {style: "font-weight:normal;font-size:13px"}, " ", link("run", runUrl(last.dag_id || src.dag_id, last.run_id))) : ""));
  const t = el("table", {}, el("tr", {}, ...HEAD.map(([h, w]) => el("th", {style: w ? "width:" + w : null}, h))));
  for (const tb of src.tables) {
    const fr = tb.freshness;
    t.append(el("tr", {"data-table": tb.target},
      el("td", {}, tb.target, el("div", {class: "muted"}, tb.write_mode)),
      el("td", {}, badge(tb.state)),
      el("td", {}, chart(tb.loads)),
      el("td", {title: fr.due_since ? "due: a load after " + exact(fr.due_since) : ""}, when(tb.last_success)),
      el("td", {}, gapsCell(tb.gaps)),
      el("td", {}, qualityCell(tb.quality)),
      el("td", {}, errorCell(tb.last_error)),
      el("td", {}, stateCell(tb.state_row))));
  }
  box.append(t);
  return box;
}
// ------------------------------------------------------------------ filters
function applyFilters() {
  const name = document.getElementById("filter-source").value.trim().toLowerCase();
  const tag = document.getElementById("filter-tag").value, state = document.getElementById("filter-state").value;
  let shown = 0, all = 0;
  for (const s of document.querySelectorAll("section.source")) {
    const ok = (!name || s.dataset.name.toLowerCase().includes(name)) && (!state || s.dataset.state === state) &&
               (!tag || JSON.parse(s.dataset.tags).includes(tag));
    s.classList.toggle("hidden", !ok); all++; if (ok) shown++;
  }
  document.getElementById("shown").textContent = shown + " of " + all + " sources shown";
  const q = new URLSearchParams();
  if (name) q.set("source", name); if (tag) q.set("tag", tag); if (state) q.set("state", state);
  history.replaceState(null, "", location.pathname + (q.toString() ? "?" + q : ""));
}
async function main() {
  const r = await fetch(API + "/overview", {credentials: "same-origin"});
  const body = await r.json().catch(() => ({}));
  const o = document.getElementById("overall-status"), s = document.getElementById("summary");
  if (!r.ok) {
    o.textContent = "unhealthy"; o.className = "badge failing"; s.className = "err";
    s.textContent = "HTTP " + r.status + ": " + (body.detail || ""); document.body.setAttribute("data-ready", "1"); return;
  }
  const counts = {};
  body.sources.forEach(x => counts[x.state] = (counts[x.state] || 0) + 1);
  const status = counts.failing ? "failing" : (counts.stale || counts.never) ? "stale" : "fresh";
  o.textContent = status; o.className = "badge " + status;
  s.textContent = "";
  s.append(body.sources.length + " sources, " + body.sources.reduce((n, x) => n + x.tables.length, 0) + " tables | " +
    ["failing", "stale", "never", "fresh", "unscheduled"].filter(k => counts[k]).map(k => counts[k] + " " + k).join(", ") +
    " | warehouse " + body.warehouse.latency_ms + " ms | as of ", when(body.generated_at));
  const tags = [...new Set(body.sources.flatMap(x => x.tags))].sort();
  const sel = document.getElementById("filter-tag");
  tags.forEach(t => sel.append(el("option", {value: t}, t)));
  const frag = document.createDocumentFragment();
  body.sources.forEach(x => frag.append(showSource(x)));
  document.getElementById("sources").append(frag);
  const q = new URLSearchParams(location.search);
  document.getElementById("filter-source").value = q.get("source") || "";
  if (tags.includes(q.get("tag"))) sel.value = q.get("tag");
  document.getElementById("filter-state").value = q.get("state") || "";
  for (const id of ["filter-source", "filter-tag", "filter-state"])
    document.getElementById(id).addEventListener("input", applyFilters);
  applyFilters();
  document.body.setAttribute("data-ready", "1");
}
main().catch(e => { const s = document.getElementById("summary"); s.className = "err"; s.textContent = String(e);
  document.body.setAttribute("data-ready", "error"); });
</script>
</body></html>
"""
