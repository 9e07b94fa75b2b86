// Refinery fleet console: polls /api/fleet and draws the tiles and the two charts.
// Every text from the fleet (robot ids, tasks, operators) is set with textContent, never parsed as HTML.
"use strict";

const POLL_MS = 2000;
const STALE_AFTER_MS = 8000;
let view = null;
let receivedAt = 0;

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

function clock(seconds) {
  if (seconds === null || seconds === undefined) return "";
  const s = Math.max(0, Math.floor(seconds));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  const mm = String(m).padStart(2, "0"), ss = String(r).padStart(2, "0");
  return h ? `${h}:${mm}:${ss}` : `${mm}:${ss}`;
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  if (n >= 1e9) return (n / 1e9).toFixed(1) + " GB";
  if (n >= 1e6) return (n / 1e6).toFixed(1) + " MB";
  if (n >= 1e3) return (n / 1e3).toFixed(0) + " kB";
  return n + " B";
}

function num(x, digits) { return x.toLocaleString(undefined, { maximumFractionDigits: digits, minimumFractionDigits: digits }); }

function worst(alerts) {
  if (alerts.some(a => a.level === "critical")) return "critical";
  return alerts.length ? "warning" : "";
}

function tile(r) {
  // Five lines, so 64 tiles fit on a 1366x768 screen: who and link; episode; rates (or what is wrong); link health; today.
  const t = el("article", "robot " + worst(r.alerts));
  t.dataset.robot = r.robot_id;
  t.dataset.link = r.link;
  t.title = [r.robot_id + " (" + (r.model || "?") + ")", r.episode ? "episode " + r.episode : "no episode",
             r.task ? "task: " + r.task : "", ...r.alerts.map(a => a.level + ": " + a.text)].filter(Boolean).join("\n");

  const head = el("div", "row");
  const left = el("span", "who");
  left.append(el("span", "id", r.robot_id));
  if (r.episode) {
    const rec = el("span", "rec", "● " + clock(r.episode_s));
    rec.dataset.started = String((view.time - (r.episode_s || 0)) * 1000);
    left.append(rec);
  }
  head.append(left, el("span", "link", r.link === "up" ? "up" : "down"));
  t.append(head);

  const ep = el("div", "row");
  ep.append(r.episode ? el("span", "task", r.task || "(no task)") : el("span", "idle", "idle · " + (r.model || "")),
            el("span", "op muted", r.operator || ""));
  t.append(ep);

  if (r.alerts.length) {
    t.append(el("div", "row why", r.alerts[0].text));
  } else {
    t.append(el("div", "row num", `${num(r.mb_per_s, 1)} MB/s · ${num(r.frames_per_s, 0)} fps · ${num(r.msg_per_s, 0)} msg/s`));
  }

  const link = el("div", "row num");
  const lag = r.ack_lag_s === null ? "lag –" : `lag ${num(r.ack_lag_s * 1000, 0)} ms`;
  link.append(el("span", "", lag), el("span", "", "spool " + bytes(r.spool_bytes)));
  t.append(link);

  const day = el("div", "row");
  day.append(el("span", "num", `${r.today_episodes} ep · ${num(r.today_hours, 1)} h`));
  const grades = el("span", "grades");
  for (const g of r.grades) grades.append(el("span", "grade " + g, g));
  day.append(grades);
  t.append(day);
  return t;
}

function chart(svg, points, key, limit) {
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const ns = "http://www.w3.org/2000/svg";
  const now = view.time, W = 360, H = 48;
  const values = points.map(p => p[key]);
  const top = Math.max(limit || 0, ...values, 1e-9) * 1.1;
  const xy = points.map(p => [W - (now - p.t) * W / 3600, H - (p[key] / top) * H]);  // the last hour
  if (limit) {
    const line = document.createElementNS(ns, "line");
    const y = H - (limit / top) * H;
    line.setAttribute("x1", 0); line.setAttribute("x2", W); line.setAttribute("y1", y); line.setAttribute("y2", y);
    line.setAttribute("class", "limit");
    svg.append(line);
  }
  if (xy.length < 2) return;
  const d = xy.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(" ");
  const area = document.createElementNS(ns, "polygon");
  area.setAttribute("points", `${xy[0][0].toFixed(1)},${H} ${d} ${xy[xy.length - 1][0].toFixed(1)},${H}`);
  area.setAttribute("class", "area");
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", d);
  line.setAttribute("class", "line");
  svg.append(area, line);
}

function render() {
  const t = view.totals;
  const summary = document.getElementById("summary");
  summary.textContent = "";
  const reachable = view.ingests.filter(i => i.reachable).length;
  summary.append(el("b", "", `${t.up}/${t.robots}`), " robots up · ", el("b", "", String(t.recording)), " recording · ",
                 el("b", "", `${num(t.mb_per_s, 1)} MB/s`), ` · ingests ${reachable}/${view.ingests.length}`);

  const alerts = document.getElementById("alerts");
  alerts.textContent = "";
  const sorted = [...view.alerts].sort((a, b) => (a.level === "critical" ? 0 : 1) - (b.level === "critical" ? 0 : 1));
  for (const a of sorted.slice(0, 40)) {
    alerts.append(el("span", "alert " + a.level, (a.robot_id ? a.robot_id + ": " : "") + a.text));
  }
  if (sorted.length > 40) alerts.append(el("span", "alert warning", `+${sorted.length - 40} more`));

  const robots = document.getElementById("robots");
  robots.replaceChildren(...view.robots.map(tile));

  chart(document.getElementById("chart-throughput"), view.chart, "mb_per_s");
  chart(document.getElementById("chart-disk"), view.chart, "data_free_pct", 10);
  document.getElementById("now-throughput").textContent = `${num(t.mb_per_s, 1)} MB/s`;
  const disk = view.ingests.filter(i => i.reachable).map(i => i.data_free_fraction);
  document.getElementById("now-disk").textContent =
    disk.length ? `${num(100 * Math.min(...disk), 1)} % (${bytes(Math.min(...view.ingests.filter(i => i.reachable).map(i => i.data_free_bytes)))})` : "";
}

function tick() {
  const updated = document.getElementById("updated");
  if (!receivedAt) return;
  const age = Date.now() - receivedAt;
  updated.textContent = `updated ${Math.round(age / 1000)} s ago · link down after ${view.link_down_after_s} s of silence`;
  updated.classList.toggle("stale", age > STALE_AFTER_MS);
  for (const rec of document.querySelectorAll(".rec")) {
    rec.textContent = "● " + clock((Date.now() - Number(rec.dataset.started) - (receivedAt - view.time * 1000)) / 1000);
  }
}

async function poll() {
  try {
    const response = await fetch("/api/fleet", { credentials: "same-origin", cache: "no-store" });
    if (!response.ok) throw new Error("HTTP " + response.status);
    view = await response.json();
    receivedAt = Date.now();
    render();
    document.body.dataset.loaded = "yes";
  } catch (err) {
    document.getElementById("updated").textContent = "console unreachable: " + err.message;
  }
  tick();
}

poll();
setInterval(poll, POLL_MS);
setInterval(tick, 1000);
