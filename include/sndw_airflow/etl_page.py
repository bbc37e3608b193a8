"""The ETL page: plain HTML, JavaScript and inline SVG (no CDN), served by the plugin's app at /sndw/ui.

It reads the plugin's own JSON routes with the Airflow UI's session cookie; every value from the
warehouse is inserted as text, never as HTML.
"""

PAGE_HTML = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ETL - sndw</title>
<style>
 body{font:14px system-ui,sans-serif;margin:16px;color:#1f2933;background:#fff}
 h1{font-size:20px;margin:0 0 8px} h2{font-size:17px;margin:24px 0 6px;border-bottom:1px solid #d9e2ec}
 h3{font-size:14px;margin:12px 0 4px} table{border-collapse:collapse;margin:4px 0}
 td,th{border:1px solid #d9e2ec;padding:3px 8px;text-align:left} th{background:#f0f4f8}
 td.n{text-align:right;font-variant-numeric:tabular-nums}
 .badge{display:inline-block;padding:1px 8px;border-radius:9px;color:#fff;font-size:12px;margin-left:6px}
 .fresh,.success,.loaded,.healthy{background:#2f9e44} .stale,.degraded,.extracted{background:#e67700}
 .never,.failure,.failed,.missing,.unhealthy{background:#c92a2a} .unscheduled{background:#868e96}
 .err{color:#c92a2a;white-space:pre-wrap;font-family:monospace;font-size:12px} .muted{color:#627d98}
 a{color:#1c7ed6}
</style></head>
<body>
<h1>ETL <span id="overall-status" class="badge"></span></h1>
<div id="summary" class="muted">Loading...</div>
<div id="sources"></div>
<script>
"use strict";
const API = location.pathname.replace(/\/ui\/?$/, "");          // the plugin's prefix, e.g. /sndw
const BASE = API.replace(/\/sndw$/, "");                          // Airflow's base URL path
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(c == null ? "" : String(c)));
  return e;
}
function badge(text) { return el("span", {class: "badge " + text}, text); }
function link(text, href) { return el("a", {href: href, target: "_top"}, text); }
function dagUrl(dag) { return BASE + "/dags/" + encodeURIComponent(dag); }
function runUrl(dag, run) { return dagUrl(dag) + "/runs/" + encodeURIComponent(run); }
async function get(path) {
  const r = await fetch(API + path, {credentials: "same-origin"});
  const body = await r.json().catch(() => ({}));
  if (!r.ok && r.status !== 503) throw new Error(path + ": HTTP " + r.status + " " + (body.detail || ""));
  return body;
}
function fmt(n) { return n == null ? "" : Number(n).toLocaleString("en-US"); }
function chart(points) {
  // rows loaded per partition date: one bar per date, failed dates in red
  const w = 620, h = 120, pad = 24, n = points.length;
  const max = Math.max(1, ...points.map(p => p.rows_loaded || 0));
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", w); svg.setAttribute("height", h + 30); svg.setAttribute("class", "chart");
  const bw = Math.min(40, Math.max(2, (w - pad) / Math.max(n, 1) - 2));
  points.forEach((p, i) => {
    const v = p.rows_loaded || 0, bh = Math.round((h - 10) * v / max);
    const r = document.createElementNS(ns, "rect");
    r.setAttribute("x", pad + i * (bw + 2)); r.setAttribute("y", h - bh);
    r.setAttribute("width", bw); r.setAttribute("height", Math.max(bh, 1));
    r.setAttribute("fill", p.status === "failure" ? "#c92a2a" : "#1c7ed6");
    const t = document.createElementNS(ns, "title");
    t.textContent = p.date + ": " + fmt(p.rows_loaded) + " rows" + (p.last_error ? " - " + p.last_error : "");
    r.append(t); svg.append(r);
    if (i === 0 || i === n - 1) {
      const lab = document.createElementNS(ns, "text");
      lab.setAttribute("x", pad + i * (bw + 2)); lab.setAttribute("y", h + 14);
      lab.setAttribute("font-size", "10"); lab.textContent = p.date; svg.append(lab);
    }
  });
  const top = document.createElementNS(ns, "text");
  top.setAttribute("x", 0); top.setAttribute("y", 10); top.setAttribute("font-size", "10");
  top.textContent = fmt(max); svg.append(top);
  return svg;
}
async function showSource(name, health, st) {
  const box = el("section", {id: "source-" + name});
  document.getElementById("sources").append(box);
  const [src, gaps] = await Promise.all([get("/sources/" + encodeURIComponent(name)), null]);
  const fr = health.freshness, run = health.last_run;
  box.append(el("h2", {}, link(name, dagUrl(src.dag_id)), badge(fr.status),
                el("span", {class: "muted"}, " " + src.kind + ", schedule " + (src.schedule || "manual"))));
  box.append(el("div", {}, "Last run: ", run ? link(run.run_id, runUrl(run.dag_id || src.dag_id, run.run_id)) : "none",
                run ? badge(run.status) : "", run ? " finished " + (run.finished_at || "") : "",
                " | last success " + (fr.last_success || "never"), fr.due_since ? " | due since " + fr.due_since : ""));
  const t = el("table", {}, el("tr", {}, ...["table", "records loaded", "last load", "last failure", "reason", "runs", "seconds"].map(h => el("th", {}, h))));
  const tables = (st && st.tables) || {};
  for (const tb of src.tables) {
    // loads count under the warehouse table, extracts under the lake partition: one row for both
    const w = tables[tb.target] || {}, l = tables[tb.lake] || {};
    const lastFail = [w, l].filter(x => x.last_failure).sort((a, b) => a.last_failure < b.last_failure ? 1 : -1)[0] || {};
    const s = {total_records_processed: w.total_records_processed, last_success: w.last_success,
               last_failure: lastFail.last_failure, last_failure_reason: lastFail.last_failure_reason,
               run_count: Math.max(w.run_count || 0, l.run_count || 0),
               total_duration_seconds: (w.total_duration_seconds || 0) + (l.total_duration_seconds || 0)};
    t.append(el("tr", {"data-table": tb.target}, el("td", {}, tb.target + " (" + tb.write_mode + ")"),
      el("td", {class: "n"}, fmt(s.total_records_processed || 0)), el("td", {}, s.last_success || ""),
      el("td", {}, s.last_failure || ""), el("td", {class: "err"}, s.last_failure_reason || ""),
      el("td", {class: "n"}, fmt(s.run_count || 0)), el("td", {class: "n"}, (s.total_duration_seconds || 0).toFixed(1))));
  }
  box.append(t);
  const dates = [];
  for (const [target, points] of Object.entries(src.rows_per_partition)) {
    box.append(el("h3", {}, "Rows per partition date: " + target + " (last " + points.length + ")"), chart(points));
    points.forEach(p => dates.push(p.date));
  }
  const today = new Date(), from = new Date(today.getTime() - 30 * 86400000);
  let first = from.toISOString().slice(0, 10);
  if (dates.length) { dates.sort(); if (dates[0] < first) first = dates[0]; }
  const rep = await get("/partitions/" + encodeURIComponent(name) + "?date_from=" + first);
  const holes = rep.partitions.filter(p => p.status === "missing" || p.status === "failed");
  box.append(el("h3", {}, "Gaps since " + first),
    el("div", {class: "gaps"}, Object.entries(rep.summary).map(([k, v]) => k + ": " + v).join(", ") || "no partitions"),
    el("div", {class: "muted"}, holes.slice(-10).map(p => p.table + " " + p.partition + " " + p.status).join("; ")));
  if (src.failures.length) {
    const f = el("table", {}, el("tr", {}, ...["when", "table", "step", "partition", "run", "message"].map(h => el("th", {}, h))));
    for (const x of src.failures) f.append(el("tr", {}, el("td", {}, x.finished_at), el("td", {}, x.table),
      el("td", {}, x.step), el("td", {}, x.partition_date || ""),
      el("td", {}, x.run_id ? link(x.run_id, runUrl(x.dag_id || src.dag_id, x.run_id)) : ""),
      el("td", {class: "err"}, x.error)));
    box.append(el("h3", {}, "Failures"), f);
  }
}
async function main() {
  const [health, st] = await Promise.all([get("/health"), get("/stats")]);
  const status = health.status || "unhealthy";
  const o = document.getElementById("overall-status"); o.textContent = status; o.className = "badge " + status;
  const s = document.getElementById("summary"); s.textContent = "";
  if (!health.warehouse || !health.warehouse.reachable) { s.append(el("div", {class: "err"}, health.detail)); return; }
  const ov = st.overall;
  s.append("Warehouse latency " + health.warehouse.latency_ms + " ms | records loaded " + fmt(ov.total_records_processed) +
    " | runs " + fmt(ov.run_count) + " | last success " + (ov.last_success || "never") +
    " | last failure " + (ov.last_failure || "none"));
  for (const name of Object.keys(health.sources).sort())
    await showSource(name, health.sources[name], st.sources[name]);
  document.body.setAttribute("data-ready", "1");
}
main().catch(e => { const s = document.getElementById("summary"); s.className = "err"; s.textContent = String(e);
  document.body.setAttribute("data-ready", "error"); });
</script>
</body></html>
"""
