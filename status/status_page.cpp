// The live page and the run report (status_page.hpp): one template, its data embedded as JSON.
#include "status/status_page.hpp"

#include "common/error.hpp"
#include "common/util/fs.hpp"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <sstream>

namespace ptrain {
namespace {

// The page. `__MODE__` is "live" or "report"; `__STATUS__` and `__LOG__` are JSON (the status
// object, the train.jsonl text as a JSON string) with "</" escaped so they cannot end the script.
constexpr const char* kPage = R"PAGE(<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>ptrain</title>
<style>
body{font-family:system-ui,sans-serif;margin:0;background:#f6f7f9;color:#222}
header{background:#23395d;color:#fff;padding:14px 24px;display:flex;align-items:baseline;gap:18px;flex-wrap:wrap}
header h1{font-size:20px;margin:0} header .state{font-size:13px;padding:2px 8px;border-radius:9px;background:#4a6fa5}
header .state.done{background:#2e7d32} main{padding:16px 24px}
.progress{background:#dde3ea;border-radius:6px;height:18px;overflow:hidden;margin:6px 0 4px}
.progress div{background:#3b82f6;height:100%;transition:width .5s}
.muted{color:#667;font-size:13px}
.cards{display:flex;gap:10px;flex-wrap:wrap;margin:12px 0}
.card{background:#fff;border-radius:8px;padding:8px 14px;box-shadow:0 1px 2px #0002;min-width:110px}
.card .k{font-size:12px;color:#667} .card .v{font-size:20px;font-weight:600}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(460px,1fr));gap:12px}
.chart{background:#fff;border-radius:8px;padding:8px;box-shadow:0 1px 2px #0002}
.chart h3{margin:2px 6px;font-size:14px} svg text{font-size:11px;fill:#555}
table{border-collapse:collapse;background:#fff;box-shadow:0 1px 2px #0002;border-radius:8px;font-size:13px}
td,th{padding:4px 10px;text-align:right;border-bottom:1px solid #eee} th{background:#eef1f5}
.cols{display:grid;grid-template-columns:1fr 1fr;gap:12px;margin-top:12px}
ul{background:#fff;margin:0;padding:8px 8px 8px 28px;font-size:13px;border-radius:8px;box-shadow:0 1px 2px #0002;max-height:260px;overflow:auto}
h2{font-size:16px;margin:16px 0 6px}
</style></head>
<body data-mode="__MODE__">
<header><h1 id="run-name">ptrain</h1><span id="run-state" class="state">starting</span>
<span class="muted" id="run-dir" style="color:#cfd8e3"></span></header>
<main>
<div id="progress-text"></div>
<div class="progress"><div id="progress" style="width:0%"></div></div>
<div class="muted" id="times"></div>
<div class="cards" id="cards"></div>
<div class="charts">
<div class="chart"><h3>loss (train: points and smoothed; validation: dots)</h3><svg id="chart-loss" width="100%" viewBox="0 0 560 240"></svg></div>
<div class="chart"><h3>learning rate</h3><svg id="chart-lr" width="100%" viewBox="0 0 560 240"></svg></div>
<div class="chart"><h3>gradient norm (before clipping)</h3><svg id="chart-grad-norm" width="100%" viewBox="0 0 560 240"></svg></div>
<div class="chart" id="chart-accuracy-box" hidden><h3>masked-token accuracy (train)</h3><svg id="chart-accuracy" width="100%" viewBox="0 0 560 240"></svg></div>
<div class="chart"><h3>tokens / s</h3><svg id="chart-tokens" width="100%" viewBox="0 0 560 240"></svg></div>
</div>
<h2>members</h2>
<table id="members"><thead><tr><th>role</th><th>id</th><th>host</th><th>step</th><th>tokens/s</th><th>heartbeat age s</th><th>MB pushed</th><th>MB pulled</th></tr></thead><tbody></tbody></table>
<div class="cols"><div><h2>checkpoints</h2><ul id="checkpoints"></ul></div><div><h2>recent events</h2><ul id="events"></ul></div></div>
<p class="muted"><a href="/metrics">/metrics</a> &middot; <a href="/status">/status</a> &middot; <a href="/train.jsonl">train.jsonl</a></p>
</main>
<script type="application/json" id="initial-status">__STATUS__</script>
<script type="application/json" id="initial-log">__LOG__</script>
<script>
"use strict";
const NS = "http://www.w3.org/2000/svg";
const mode = document.body.dataset.mode;
function el(tag, attrs, text) {
  const e = document.createElementNS(NS, tag);
  for (const k in attrs) e.setAttribute(k, attrs[k]);
  if (text !== undefined) e.textContent = text;
  return e;
}
function fmtNum(x, digits) {
  if (x === null || x === undefined || !isFinite(x)) return "\u2013";
  const a = Math.abs(x);
  if (a !== 0 && (a < 1e-3 || a >= 1e6)) return x.toExponential(2);
  return x.toFixed(digits === undefined ? 4 : digits);
}
function fmtDur(s) {
  if (!isFinite(s) || s < 0) return "?";
  if (s < 60) return s.toFixed(1) + " s";
  const h = Math.floor(s / 3600), m = Math.floor(s / 60) % 60, r = Math.round(s % 60);
  return (h ? h + " h " : "") + m + " min " + r + " s";
}
function tickFmt(v) {
  const a = Math.abs(v);
  if (a === 0) return "0";
  if (a >= 1e4) return (v / 1000).toFixed(a >= 1e5 ? 0 : 1) + "k";
  if (a >= 100) return v.toFixed(0);
  if (a < 1e-3) return v.toExponential(1);
  return String(Number(v.toPrecision(3)));
}
function niceTicks(lo, hi, n) {
  if (!(hi > lo)) { hi = lo + 1; }
  const raw = (hi - lo) / n, mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 5, 10].map(f => f * mag).find(s => s >= raw);
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(v);
  return out;
}
// One chart: series [{points: [[x,y]...], color, kind: "line"|"dots"|"faint"}], axes with ticks.
function drawChart(svg, series, opts) {
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const W = 560, H = 240, L = 56, R = 12, T = 10, B = 30;
  const all = series.flatMap(s => s.points).filter(p => isFinite(p[1]));
  if (all.length === 0) { svg.appendChild(el("text", {x: W / 2 - 60, y: H / 2}, "no data yet")); return; }
  let x0 = Math.min(...all.map(p => p[0])), x1 = Math.max(...all.map(p => p[0]));
  let y0 = Math.min(...all.map(p => p[1])), y1 = Math.max(...all.map(p => p[1]));
  if (x1 === x0) x1 = x0 + 1;
  if (y1 === y0) { y0 -= Math.abs(y0) * 0.1 + 1e-12; y1 += Math.abs(y1) * 0.1 + 1e-12; }
  const pad = (y1 - y0) * 0.05; y0 -= pad; y1 += pad;
  if (opts && opts.zero && y0 > 0 && y0 < (y1 - y0)) y0 = 0;
  const X = x => L + (W - L - R) * (x - x0) / (x1 - x0), Y = y => H - B - (H - T - B) * (y - y0) / (y1 - y0);
  svg.appendChild(el("rect", {x: L, y: T, width: W - L - R, height: H - T - B, fill: "none", stroke: "#ccc"}));
  for (const v of niceTicks(y0, y1, 5)) {
    svg.appendChild(el("line", {x1: L, x2: W - R, y1: Y(v), y2: Y(v), stroke: "#eee"}));
    svg.appendChild(el("text", {x: L - 4, y: Y(v) + 4, "text-anchor": "end", class: "ytick"}, tickFmt(v)));
  }
  for (const v of niceTicks(x0, x1, 6)) {
    svg.appendChild(el("line", {x1: X(v), x2: X(v), y1: H - B, y2: H - B + 4, stroke: "#999"}));
    svg.appendChild(el("text", {x: X(v), y: H - B + 16, "text-anchor": "middle", class: "xtick"}, String(Math.round(v))));
  }
  svg.appendChild(el("text", {x: W - R, y: H - 2, "text-anchor": "end"}, "step"));
  for (const s of series) {
    const pts = s.points.filter(p => isFinite(p[1]));
    if (s.kind === "dots") {
      for (const p of pts) svg.appendChild(el("circle", {cx: X(p[0]), cy: Y(p[1]), r: 4, fill: s.color, class: s.cls || ""}));
    } else if (pts.length) {
      svg.appendChild(el("polyline", {fill: "none", stroke: s.color, "stroke-width": s.kind === "faint" ? 1 : 2,
        "stroke-opacity": s.kind === "faint" ? 0.35 : 1, class: s.cls || "",
        points: pts.map(p => X(p[0]).toFixed(1) + "," + Y(p[1]).toFixed(1)).join(" ")}));
    }
  }
}
function smooth(points, alpha) {  // exponential moving average, bias-corrected
  let m = 0, w = 0;
  return points.map(p => { m = alpha * m + (1 - alpha) * p[1]; w = alpha * w + (1 - alpha); return [p[0], m / w]; });
}
function parseLog(text) {
  const rows = [];
  for (const line of (text || "").split("\n")) {
    if (!line.trim()) continue;
    try { rows.push(JSON.parse(line)); } catch (e) { /* a line being written */ }
  }
  return rows;
}
function render(status, log) {
  const train = log.filter(r => r.loss !== undefined), val = log.filter(r => r.val_loss !== undefined);
  const name = status.run_name || "ptrain";
  document.getElementById("run-name").textContent = name;
  document.title = "ptrain \u00b7 " + name + " \u00b7 step " + status.step;
  document.getElementById("run-dir").textContent = status.run_dir || "";
  const state = document.getElementById("run-state");
  state.textContent = status.finished ? "finished" : (mode === "report" ? "report" : "running");
  state.className = "state" + (status.finished ? " done" : "");
  const target = status.target_steps || 0, pct = target ? Math.min(100, 100 * status.step / target) : 0;
  document.getElementById("progress").style.width = pct.toFixed(1) + "%";
  document.getElementById("progress-text").textContent = "step " + status.step + " of " + target + " (" + pct.toFixed(1) + "%)";
  const last = train.length ? train[train.length - 1] : null;
  const elapsed = status.elapsed_s || (last ? last.elapsed_s : 0);
  const eta = last && last.step_s && !status.finished ? last.step_s * Math.max(0, target - status.step) : 0;
  document.getElementById("times").textContent = "elapsed " + fmtDur(elapsed) + (status.finished ? "" : " \u00b7 ETA " + fmtDur(eta)) +
      (last && last.time ? " \u00b7 last log " + last.time : "");
  const lastVal = val.length ? val[val.length - 1] : null;
  const cards = [["loss", status.loss], ["val loss", lastVal ? lastVal.val_loss : status.val_loss],
    ["val perplexity", lastVal ? lastVal.val_ppl : Math.exp(status.val_loss)], ["learning rate", status.lr],
    ["grad norm", status.grad_norm], ["tokens/s", last ? last.tokens_per_s : status.tokens_per_second],
    ["tokens", status.tokens_total], ["bytes/token", last ? last.bytes_per_token : NaN]];
  // Masked-LM (BERT) runs report the masked-token accuracy; GPT runs have none.
  const accPts = train.filter(r => r.accuracy !== undefined).map(r => [r.step, r.accuracy]);
  const accNow = status.accuracy !== undefined && status.accuracy !== null ? status.accuracy
               : (accPts.length ? accPts[accPts.length - 1][1] : undefined);
  if (accNow !== undefined) cards.splice(1, 0, ["masked accuracy", accNow]);
  const box = document.getElementById("cards");
  box.innerHTML = "";
  for (const [k, v] of cards) {
    const d = document.createElement("div"); d.className = "card";
    d.innerHTML = '<div class="k"></div><div class="v"></div>';
    d.firstChild.textContent = k;
    d.lastChild.textContent = (k === "tokens" || k === "tokens/s") ? (isFinite(v) ? Math.round(v).toLocaleString("en") : "\u2013") : fmtNum(v);
    box.appendChild(d);
  }
  const lossPts = train.map(r => [r.step, r.loss]);
  drawChart(document.getElementById("chart-loss"), [
    {points: lossPts, color: "#3b82f6", kind: "faint", cls: "train-loss"},
    {points: smooth(lossPts, lossPts.length < 50 ? 0.5 : 0.85), color: "#1d4ed8", kind: "line", cls: "train-loss-smooth"},
    {points: val.map(r => [r.step, r.val_loss]), color: "#dc2626", kind: "dots", cls: "val-loss"}]);
  drawChart(document.getElementById("chart-lr"), [{points: train.map(r => [r.step, r.lr]), color: "#059669", kind: "line"}], {zero: true});
  drawChart(document.getElementById("chart-grad-norm"), [{points: train.filter(r => r.grad_norm !== undefined).map(r => [r.step, r.grad_norm]), color: "#d97706", kind: "line"}], {zero: true});
  document.getElementById("chart-accuracy-box").hidden = accPts.length === 0;
  if (accPts.length) drawChart(document.getElementById("chart-accuracy"), [{points: accPts, color: "#0891b2", kind: "line", cls: "train-accuracy"}], {zero: true});
  drawChart(document.getElementById("chart-tokens"), [{points: train.slice(1).map(r => [r.step, r.tokens_per_s]), color: "#7c3aed", kind: "line"}], {zero: true});
  const tbody = document.querySelector("#members tbody");
  tbody.innerHTML = "";
  for (const m of status.members || []) {
    const tr = document.createElement("tr");
    for (const v of [m.role, m.id, m.host, m.step, Math.round(m.tokens_per_second || 0), (m.heartbeat_age_s || 0).toFixed(1),
                     (m.bytes_pushed / 1e6).toFixed(1), (m.bytes_pulled / 1e6).toFixed(1)]) {
      const td = document.createElement("td"); td.textContent = String(v); tr.appendChild(td);
    }
    tbody.appendChild(tr);
  }
  const fill = (id, items, empty) => {
    const ul = document.getElementById(id); ul.innerHTML = "";
    for (const t of items.length ? items : [empty]) { const li = document.createElement("li"); li.textContent = t; ul.appendChild(li); }
  };
  fill("checkpoints", (status.checkpoints || []).map(s => "step " + s + (status.run_dir ? "  \u2192  " + status.run_dir + "/checkpoints/step-" + String(s).padStart(8, "0") : "")), "none yet");
  fill("events", (status.events || []).slice().reverse(), "none yet");
  document.body.dataset.ready = "1";
  document.body.dataset.points = String(lossPts.length);
}
let status = JSON.parse(document.getElementById("initial-status").textContent);
let logText = JSON.parse(document.getElementById("initial-log").textContent);
render(status, parseLog(logText));
async function poll() {
  try {
    const [s, l] = await Promise.all([fetch("/status", {cache: "no-store"}), fetch("/train.jsonl", {cache: "no-store"})]);
    if (s.ok) status = await s.json();
    if (l.ok) logText = await l.text();
    render(status, parseLog(logText));
  } catch (e) { /* the run may have ended: keep the last picture */ }
  if (!status.finished) setTimeout(poll, 2000);
}
if (mode === "live") poll();
</script>
</body></html>
)PAGE";

std::string script_json(std::string text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '<' && i + 1 < text.size() && text[i + 1] == '/') {
      out += "<\\/";
      ++i;
    } else {
      out.push_back(text[i]);
    }
  }
  return out;
}

std::string fill(const std::string& mode, const JobStatus& s, const std::string& train_jsonl) {
  std::string page = kPage;
  auto put = [&page](const std::string& key, const std::string& value) {
    const auto at = page.find(key);
    if (at != std::string::npos) page.replace(at, key.size(), value);
  };
  put("__MODE__", mode);
  JobStatus light = s;
  light.loss_history.clear();  // the page draws train.jsonl, the whole run's history
  put("__STATUS__", script_json(render_status_json(light)));
  put("__LOG__", script_json(nlohmann::json(train_jsonl).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)));
  return page;
}

}  // namespace

std::string render_live_page(const JobStatus& s) { return fill("live", s, ""); }

std::string render_report_page(const JobStatus& s, const std::string& train_jsonl) {
  return fill("report", s, train_jsonl);
}

std::string write_run_status(const std::string& run_dir, const JobStatus& s) {
  const std::string path = run_dir + "/status.json";
  write_file_atomic(path, render_status_json(s));
  return path;
}

std::string write_run_report(const std::string& run_dir) {
  const std::string log = read_file(run_dir + "/train.jsonl");
  JobStatus s;
  const std::string status_file = run_dir + "/status.json";
  if (std::filesystem::exists(status_file)) {
    s = parse_status_json(read_file(status_file));
  } else {
    // A run that never finished: what train.jsonl says is all there is.
    s.loss = std::nan("");
    std::istringstream in(log);
    for (std::string line; std::getline(in, line);) {
      const auto j = nlohmann::json::parse(line, nullptr, false);
      if (!j.is_object() || !j.contains("loss") || !j.contains("step")) continue;
      s.step = j.value("step", int64_t{0});
      s.loss = j.value("loss", std::nan(""));
      s.lr = j.value("lr", std::nan(""));
      s.grad_norm = j.value("grad_norm", std::nan(""));
      s.accuracy = j.value("accuracy", std::nan(""));
      s.tokens_total = j.value("tokens", int64_t{0});
      s.elapsed_s = j.value("elapsed_s", 0.0);
    }
    s.target_steps = s.step;
  }
  s.run_dir = std::filesystem::absolute(run_dir).lexically_normal().string();
  const std::string path = run_dir + "/report.html";
  write_file_atomic(path, render_report_page(s, log));
  return path;
}

}  // namespace ptrain
