"""The status page served at `/`: the graph drawn as SVG, live rates and queue fill from `/api/stats`."""

from __future__ import annotations

import html
from typing import Any

from engine.compile.render import to_svg

__all__ = ["status_page"]

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>streamdag: {name}</title>
<style>
 body {{ font-family: Helvetica, Arial, sans-serif; margin: 16px; color: #111827; }}
 h1 {{ font-size: 18px; margin: 0 0 8px; }}
 #status {{ color: #4b5563; margin-bottom: 8px; }}
 #status.draining {{ color: #b45309; }}
 #status.mismatch {{ color: #dc2626; font-weight: bold; }}
 table {{ border-collapse: collapse; margin-top: 12px; font-size: 13px; }}
 th, td {{ border-bottom: 1px solid #e5e7eb; padding: 3px 10px; text-align: right; }}
 th:first-child, td:first-child {{ text-align: left; }}
 .bar {{ display: inline-block; width: 60px; height: 8px; background: #e5e7eb; margin-right: 4px; }}
 .bar > span {{ display: block; height: 8px; background: #2563eb; }}
 .live {{ font-size: 11px; fill: #1d4ed8; }}
</style></head>
<body>
<h1>streamdag &middot; {name}</h1>
<div id="status">connecting&hellip;</div>
<div id="graph">{svg}</div>
<table id="nodes"><thead><tr><th>node</th><th>type</th><th>in/s</th><th>out/s</th><th>queue</th>
<th>p99 batch</th><th>errors</th><th>filtered</th><th>dead-lettered</th><th>stalled</th></tr></thead><tbody></tbody></table>
<table id="sources"><thead><tr><th>source</th><th>in</th><th>delivered</th><th>filtered</th><th>dead-lettered</th>
<th>failed</th><th>in flight</th><th>stalled</th><th>lag</th><th>integrity</th></tr></thead><tbody></tbody></table>
<table id="workers"><thead><tr><th>worker</th><th>slot</th><th>pid</th><th>version</th><th>in</th><th>delivered</th>
<th>filtered</th><th>dead-lettered</th><th>in flight</th><th>metrics</th></tr></thead><tbody></tbody></table>
<script>
"use strict";
let prev = null;
const fmt = (x) => x >= 1e6 ? (x / 1e6).toFixed(1) + "M" : x >= 1e3 ? (x / 1e3).toFixed(1) + "k" : x.toFixed(0);
const ms = (s) => s === null ? "-" : (s * 1000).toFixed(s < 0.01 ? 2 : 0) + " ms";
function label(g, cls, text, dy) {{
  let t = g.querySelector("text." + cls);
  if (!t) {{
    const r = g.querySelector("rect");
    t = document.createElementNS("http://www.w3.org/2000/svg", "text");
    t.setAttribute("class", "live " + cls);
    t.setAttribute("x", +r.getAttribute("x") + +r.getAttribute("width") / 2);
    t.setAttribute("y", +r.getAttribute("y") + +r.getAttribute("height") + dy);
    t.setAttribute("text-anchor", "middle");
    g.appendChild(t);
  }}
  t.textContent = text;
}}
function row(cells) {{ return "<tr>" + cells.map((c) => "<td>" + c + "</td>").join("") + "</tr>"; }}
function esc(s) {{ return String(s).replace(/[&<>"]/g, (c) => ({{"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}})[c]); }}
// each edge of the drawing names its target (data-to): colour it by the target's queue fill
let edgeTargets = null;
function findEdgeTargets() {{
  const out = [];
  for (const line of document.querySelectorAll("#graph polyline.edge")) {{
    out.push([line, line.getAttribute("data-to"), line.getAttribute("stroke")]);
  }}
  return out;
}}
function colorEdges(cur) {{
  edgeTargets = edgeTargets || findEdgeTargets();
  for (const [line, target, base] of edgeTargets) {{
    const q = cur.nodes[target] && cur.nodes[target].queue;
    const fill = q ? q.depth / Math.max(1, q.capacity) : 0;
    line.setAttribute("stroke", fill > 0.8 ? "#dc2626" : fill > 0.5 ? "#d97706" : base);
    line.setAttribute("stroke-width", String(1 + Math.round(fill * 4)));
    line.setAttribute("data-fill", fill.toFixed(2));
  }}
}}
function update(cur) {{
  colorEdges(cur);
  const dt = prev ? Math.max(1e-3, cur.time - prev.time) : null;
  const rows = [];
  for (const [id, n] of Object.entries(cur.nodes)) {{
    const p = prev && prev.nodes[id];
    const outKey = n.kind === "sink" ? "committed" : "out";  // a sink's output is what it commits
    const rin = p ? (n.in - p.in) / dt : 0, rout = p ? (n[outKey] - p[outKey]) / dt : 0;
    const rate = n.kind === "source" ? rout : rin;
    const q = n.queue, fill = q ? q.depth / Math.max(1, q.capacity) : 0;
    const g = document.getElementById("node-" + id);
    if (g) {{
      label(g, "rate", fmt(rate) + " msg/s" + (q ? "  q " + Math.round(fill * 100) + "%" : ""), 13);
      g.querySelector("rect").setAttribute("stroke", fill > 0.8 ? "#dc2626" : fill > 0.5 ? "#d97706" : "#374151");
      g.querySelector("rect").setAttribute("stroke-width", fill > 0.5 ? "3" : "1");
    }}
    const bar = q ? '<span class="bar"><span style="width:' + Math.round(fill * 100) + '%"></span></span>' +
      q.depth + "/" + q.capacity : "-";
    rows.push(row([esc(id), esc(n.type), fmt(rin), fmt(rout), bar, ms(n.p99_batch_seconds), n.errors, n.filtered,
      n.dead_lettered, n.stall ? n.stalled_seconds.toFixed(0) + " s (" + esc(n.stall.class) + ": " +
      esc(n.stall.reason) + ")" : "-"]));
  }}
  document.querySelector("#nodes tbody").innerHTML = rows.join("");
  const srows = [];
  let mismatch = false;
  for (const [id, s] of Object.entries(cur.sources)) {{
    mismatch = mismatch || !s.balanced;
    srows.push(row([esc(id), s.entered, s.delivered, s.filtered, s.dead_lettered, s.failed, s.in_flight,
      s.stalled_seconds ? s.stalled_seconds.toFixed(0) + " s" : "-", s.lag === null ? "-" : s.lag, s.balanced ? "ok" : "MISMATCH (" + s.unaccounted + ")"]));
  }}
  document.querySelector("#sources tbody").innerHTML = srows.join("");
  const wrows = [];  // every registered worker of the graph (run --workers, several hosts) and their sum
  if (cur.workers) {{
    for (const w of cur.workers.list) {{
      const t = w.totals;
      wrows.push(row([esc(w.worker) + (w.worker === cur.worker.id ? " (this one)" : ""), w.index + "/" + w.count,
        w.pid, esc(w.version), t.entered, t.delivered, t.filtered, t.dead_lettered, t.in_flight, esc(w.metrics || "-")]));
    }}
    const t = cur.workers.sum;
    wrows.push(row(["sum", "", "", "", t.entered, t.delivered, t.filtered, t.dead_lettered, t.in_flight, ""]));
  }}
  document.querySelector("#workers tbody").innerHTML = wrows.join("");
  const st = document.getElementById("status");
  const down = cur.connections.filter((c) => !c.up).map((c) => c.node + "/" + c.connection);
  st.className = mismatch ? "mismatch" : cur.draining ? "draining" : "";
  st.textContent = (mismatch ? "INTEGRITY MISMATCH  " : "") + (cur.draining ? "draining  " : "running  ") +
    (down.length ? "connections down: " + down.join(", ") + "  " : "") + "updated " + new Date(cur.time * 1000).toLocaleTimeString();
  prev = cur;
}}
async function poll() {{
  try {{
    const r = await fetch("api/stats", {{cache: "no-store"}});
    update(await r.json());
  }} catch (e) {{
    document.getElementById("status").textContent = "not reachable (run finished?)";
  }}
}}
poll();
setInterval(poll, {interval_ms});
</script>
</body></html>
"""


def status_page(graph: Any, interval_ms: int = 1000) -> str:
    """The page for `graph` (a checked `Graph`); it polls `api/stats` every `interval_ms`."""
    return _PAGE.format(name=html.escape(graph.spec.name), svg=to_svg(graph), interval_ms=int(interval_ms))
