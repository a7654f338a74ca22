// torchport dashboard: reads the management API (same origin, bearer token) every few
// seconds and draws the selected model's versions, live charts, comparison and audit log.
// Data from the server is only ever set as text, never parsed as HTML.
"use strict";

const REFRESH_MS = 2000;
const TOKEN_KEY = "torchport-token"; // sessionStorage: this tab only
const COLORS = ["#d4572a", "#2563eb", "#16a34a", "#9333ea", "#ca8a04", "#0891b2", "#db2777"];
const CHARTS = [
  { id: "rps", title: "Requests per second", fields: ["rps"], unit: "/s" },
  { id: "latency", title: "Latency p50 / p99 (ms)", fields: ["p50_ms", "p99_ms"], unit: " ms" },
  { id: "errors", title: "Error rate (%)", fields: ["error_rate"], unit: " %", scale: 100 },
  { id: "batch", title: "Mean batch size (rows)", fields: ["batch_size"], unit: "" },
  { id: "queue", title: "Queue depth (requests)", fields: ["queue_depth"], unit: "" },
];

const $ = (id) => document.getElementById(id);
const state = { model: null, models: [], detail: null, charts: {}, chartKey: "", busy: false };

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// -- the management API ---------------------------------------------------------------

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

async function api(path, options = {}) {
  const secret = token();
  if (!secret) throw new ApiError(401, "no management token: enter it first");
  const headers = { Authorization: `Bearer ${secret}`, ...(options.headers || {}) };
  let response;
  try {
    response = await fetch(path, { ...options, headers, cache: "no-store" });
  } catch (err) {
    throw new ApiError(0, `the server did not answer (${err.message})`);
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    throw new ApiError(response.status, body.error || `HTTP ${response.status}`);
  }
  return body;
}

// -- small DOM helpers ----------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "color") node.style.background = value; // CSSOM: allowed by the CSP
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) {
      node.append(child instanceof Node ? child : String(child));
    }
  }
  return node;
}

function toast(message, isError = false) {
  const item = el("div", { class: isError ? "error" : "", role: isError ? "alert" : "status" },
    message);
  $("toast").append(item);
  setTimeout(() => item.remove(), isError ? 8000 : 4000);
}

function confirmAction(text) {
  return new Promise((resolve) => {
    const dialog = $("confirm");
    $("confirm-text").textContent = text;
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.returnValue = "cancel";
    dialog.showModal();
  });
}

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function fmt(value, digits = 1) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  return Number(value).toFixed(digits);
}

function when(iso) {
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : date.toLocaleString();
}

// -- locking --------------------------------------------------------------------------

function showLocked(message) {
  $("app").hidden = true;
  $("locked").hidden = false;
  $("lock").hidden = true;
  $("token-form").hidden = false;
  $("token-error").textContent = message || "";
  $("status").className = "status";
  $("status").textContent = "locked";
}

async function unlock(secret) {
  sessionStorage.setItem(TOKEN_KEY, secret);
  try {
    await api("/models");
  } catch (err) {
    sessionStorage.removeItem(TOKEN_KEY);
    showLocked(err.status === 401 ? `The token was refused: ${err.message}` : err.message);
    return;
  }
  $("locked").hidden = true;
  $("app").hidden = false;
  $("lock").hidden = false;
  $("token-form").hidden = true;
  $("token").value = "";
  await refresh();
}

function lock(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  destroyCharts();
  showLocked(message);
}

// -- refreshing -----------------------------------------------------------------------

async function refresh() {
  if (state.busy || !token()) return;
  state.busy = true;
  try {
    const [list, overview] = await Promise.all([api("/models"), api("/stats")]);
    state.models = list.models;
    if (!state.models.some((m) => m.name === state.model)) {
      const wanted = decodeURIComponent(location.hash.replace(/^#model=/, ""));
      state.model = state.models.some((m) => m.name === wanted)
        ? wanted : (state.models[0] || {}).name || null;
    }
    renderModels(overview.versions);
    renderDevices(list.devices || []);
    if (state.model) {
      const model = encodeURIComponent(state.model);
      const [detail, stats, rollout] = await Promise.all([
        api(`/models/${model}`), api(`/models/${model}/stats`),
        api(`/models/${model}/rollout`),
      ]);
      state.detail = detail;
      renderModel(detail);
      renderCharts(stats);
      renderRollout(state.model, rollout);
    }
    $("status").className = "status live";
    $("status").textContent = `live · updated ${new Date().toLocaleTimeString()}`;
  } catch (err) {
    if (err.status === 401) {
      lock(`The token was refused: ${err.message}`);
    } else {
      $("status").className = "status stale";
      $("status").textContent = `not updating: ${err.message}`;
    }
  } finally {
    state.busy = false;
  }
}

function select(name) {
  state.model = name;
  location.hash = `model=${encodeURIComponent(name)}`;
  $("compare-result").replaceChildren();
  $("replay-result").replaceChildren();
  destroyCharts();
  refresh();
}

// -- the model list -------------------------------------------------------------------

function renderModels(latest) {
  const rps = {};
  for (const row of latest) {
    rps[row.model] = (rps[row.model] || 0) + row.rps;
  }
  const items = state.models.map((m) => {
    const ready = m.versions.filter((v) => v.state === "READY").length;
    return el("li", {
      class: m.name === state.model ? "selected" : "",
      "data-model": m.name,
      onclick: () => select(m.name),
    },
    m.name,
    el("small", {},
      `default v${m.default ?? "–"} · ${m.versions.length} version(s), ${ready} ready · ` +
      `${fmt(rps[m.name] || 0)} req/s`));
  });
  $("models").replaceChildren(...items);
}

// The server's GPUs (none on a machine without one): memory in use by every process, this
// server's share, and how busy NVML saw each.
function renderDevices(devices) {
  $("devices-title").hidden = devices.length === 0;
  $("devices").replaceChildren(...devices.map((d) => el("li", {},
    `cuda:${d.index} ${d.name}`,
    el("small", {},
      `${bytes(d.used_bytes)} of ${bytes(d.total_bytes)} used · this server ` +
      `${bytes(d.allocated_bytes)} allocated, ${bytes(d.reserved_bytes)} reserved` +
      (d.utilization == null ? "" : ` · ${Math.round(d.utilization * 100)}% busy`)))));
}

// -- one model ------------------------------------------------------------------------

function renderModel(detail) {
  $("model-name").textContent = detail.name;
  $("model-default").textContent = `default: v${detail.default ?? "–"}`;
  $("model-default").className = "badge default";
  const rollback = $("rollback");
  rollback.disabled = !detail.previous;
  rollback.title = detail.previous
    ? `make v${detail.previous} the default again` : "no earlier default to roll back to";
  rollback.onclick = () => rollbackModel(detail.name, detail.previous);

  const rows = detail.versions.map((v) => {
    const isDefault = v.version === detail.default;
    const w = v.workers || {};
    // Ray versions that autoscale also carry their replica range.
    const range = w.max && w.max > w.min ? ` (${w.min}–${w.max})` : "";
    // Where it runs, when that is not the CPU in float32.
    const placed = [w.device && w.device !== "cpu" ? w.device : null,
      w.precision && w.precision !== "fp32" ? w.precision : null].filter(Boolean).join(" ");
    const workers = w.count
      ? `${w.count} × ${w.kind}${range}${w.compiled ? ", compiled" : ""}` +
        (placed ? ` · ${placed}` : "") : "–";
    const config = v.config || {};
    const batching = [
      config.max_batch_size ? `≤ ${config.max_batch_size} rows` : null,
      config.max_batch_delay_ms !== undefined ? `${config.max_batch_delay_ms} ms` : null,
      config.target_p99_ms ? `p99 ≤ ${config.target_p99_ms} ms` : null,
    ].filter(Boolean).join(", ") || "package defaults";
    const action = isDefault
      ? el("span", { class: "badge default" }, "default")
      : el("button", {
        type: "button", class: "promote", "data-version": v.version,
        onclick: () => promote(detail.name, v.version),
      }, "Promote");
    return el("tr", { "data-version": v.version },
      el("td", {}, `v${v.version}`),
      el("td", { class: `state-${v.state}`, title: v.reason || "" }, v.state),
      el("td", {}, workers),
      el("td", {}, batching),
      el("td", {}, when(v.created_at)),
      el("td", {}, bytes(v.size)),
      el("td", {
        class: "resident",
        title: v.resident ? `${v.resident.policy}; last used ${when(v.resident.last_used)}` : "not in memory",
      }, v.resident ? `${bytes(v.resident.bytes)} · ${when(v.resident.last_used)}` : "–"),
      el("td", {}, el("code", {}, v.digest.slice(0, 12))),
      el("td", {}, action));
  });
  $("versions").tBodies[0].replaceChildren(...rows);

  renderCompareChoices(detail);
  renderReplayChoices(detail);
  const audit = (detail.audit || []).map((e) => el("tr", {},
    el("td", {}, when(e.at)), el("td", {}, e.actor), el("td", {}, e.action),
    el("td", {}, e.version === null ? "–" : `v${e.version}`),
    el("td", {}, el("code", {}, JSON.stringify(e.detail)))));
  $("audit").tBodies[0].replaceChildren(...audit);
}

async function promote(model, version) {
  const ok = await confirmAction(
    `Make version ${version} the default of ${model}? Requests that name no version go to it ` +
    "at once; roll back to undo.");
  if (!ok) return;
  try {
    await api(`/models/${encodeURIComponent(model)}/default`, {
      method: "PUT",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ version }),
    });
    toast(`${model}: version ${version} is now the default`);
  } catch (err) {
    toast(`Promote refused: ${err.message}`, true);
    if (err.status === 401) lock(`The token was refused: ${err.message}`);
  }
  await refresh();
}

async function rollbackModel(model, previous) {
  const ok = await confirmAction(
    `Roll ${model} back to version ${previous}? Requests that name no version go to it at once.`);
  if (!ok) return;
  try {
    const info = await api(`/models/${encodeURIComponent(model)}/rollback`, { method: "POST" });
    toast(`${model}: rolled back, version ${info.default} is the default`);
  } catch (err) {
    toast(`Rollback refused: ${err.message}`, true);
    if (err.status === 401) lock(`The token was refused: ${err.message}`);
  }
  await refresh();
}

// -- the model's rollout ----------------------------------------------------------------

function pct(value) {
  return value === null || value === undefined ? "–" : `${(value * 100).toFixed(2)} %`;
}

function renderRollout(model, found) {
  const box = $("rollout");
  if (!found || !found.rollout) {
    box.replaceChildren(el("p", { class: "muted" }, "No rollout yet."));
    return;
  }
  const r = found.rollout;
  const running = r.state === "running";
  const head = el("p", { id: "rollout-summary" },
    el("span", { class: `badge rollout-${r.state}`, id: "rollout-state" },
      r.state.replace("_", " ")),
    ` ${r.mode} of v${r.candidate} against v${r.baseline}, share ${pct(r.share)}` +
    (r.sticky_header ? `, sticky by ${r.sticky_header}` : "") +
    (Object.keys(r.rules || {}).length ? "" : " (report only)"));
  const parts = [head];
  if (r.decision && r.decision.why) {
    parts.push(el("p", { id: "rollout-decision" },
      `Decided by ${r.decision.by}: ${r.decision.why}`));
  }
  const figures = found.figures;
  if (figures) {
    const rows = Object.entries(figures.versions).map(([version, side]) => el("tr", {},
      el("td", {}, `v${version}`), el("td", {}, side.role),
      el("td", {}, side.total.requests), el("td", {}, pct(side.total.error_rate)),
      el("td", {}, fmt(side.window.p50_ms, 2)), el("td", {}, fmt(side.window.p99_ms, 2))));
    parts.push(el("table", { id: "rollout-versions" },
      el("thead", {}, el("tr", {}, ...["Version", "Role", "Requests", "Error rate",
        "p50 ms", "p99 ms"].map((h) => el("th", {}, h)))),
      el("tbody", {}, ...rows)));
    const outputs = Object.entries(figures.outputs).map(([name, o]) => el("tr", {},
      el("td", {}, name), el("td", {}, o.measure), el("td", {}, pct(o.agreement)),
      el("td", {}, o.rows), el("td", {}, fmt(o.max_abs_diff, 4))));
    parts.push(el("table", { id: "rollout-outputs" },
      el("thead", {}, el("tr", {}, ...["Output", "Measure", "Agreement", "Rows",
        "Max abs diff"].map((h) => el("th", {}, h)))),
      el("tbody", {}, ...outputs)));
  }
  if (running) {
    const action = (name, label, cls) => el("button", {
      type: "button", class: cls, "data-action": name,
      onclick: () => endRollout(model, name, label),
    }, label);
    parts.push(el("div", { class: "buttons" },
      action("promote", "Promote candidate", "promote"),
      action("rollback", "Roll back", "danger"),
      action("stop", "Stop", "")));
  }
  box.replaceChildren(...parts);
}

async function endRollout(model, action, label) {
  const ok = await confirmAction(`${label}: end the rollout of ${model}?`);
  if (!ok) return;
  try {
    await api(`/models/${encodeURIComponent(model)}/rollout/${action}`, { method: "POST" });
    toast(`${model}: rollout ended (${action})`);
  } catch (err) {
    toast(`Refused: ${err.message}`, true);
    if (err.status === 401) lock(`The token was refused: ${err.message}`);
  }
  await refresh();
}

// -- replaying recorded traffic ---------------------------------------------------------

function renderReplayChoices(detail) {
  const select = $("replay-version");
  const sameModel = $("replay-form").dataset.model === detail.name;
  const kept = sameModel ? select.value : null;
  $("replay-form").dataset.model = detail.name;
  select.replaceChildren(...detail.versions.map((v) => el("option", { value: v.version },
    `v${v.version}`)));
  if (kept && detail.versions.some((v) => String(v.version) === kept)) select.value = kept;
}

async function replayTraffic(event) {
  event.preventDefault();
  const model = $("replay-form").dataset.model;
  const version = Number($("replay-version").value);
  const out = $("replay-result");
  out.replaceChildren(el("p", { class: "muted" }, "replaying…"));
  try {
    const report = await api(`/models/${encodeURIComponent(model)}/replay`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ version }),
    });
    const rows = Object.entries(report.outputs).map(([name, o]) => el("tr", {},
      el("td", {}, name), el("td", {}, o.measure), el("td", {}, pct(o.agreement)),
      el("td", {}, o.rows), el("td", {}, fmt(o.max_abs_diff, 4))));
    out.replaceChildren(
      el("p", { id: "replay-summary" },
        `v${report.version}: ${report.replayed} of ${report.records} recorded requests, ` +
        `${report.errors} errors, p50 ${fmt(report.p50_ms, 2)} ms, ` +
        `p99 ${fmt(report.p99_ms, 2)} ms`),
      el("table", { id: "replay-outputs" },
        el("thead", {}, el("tr", {}, ...["Output", "Measure", "Agreement", "Rows",
          "Max abs diff"].map((h) => el("th", {}, h)))),
        el("tbody", {}, ...rows)));
  } catch (err) {
    out.replaceChildren(el("p", { class: "error", role: "alert" },
      `Replay refused: ${err.message}`));
    if (err.status === 401) lock(`The token was refused: ${err.message}`);
  }
}

// -- live charts ----------------------------------------------------------------------

function destroyCharts() {
  for (const chart of Object.values(state.charts)) chart.plot.destroy();
  state.charts = {};
  state.chartKey = "";
  $("charts").replaceChildren();
}

// uPlot wants one x array and y arrays aligned with it: versions seen at different times
// get null where they have no point.
function columns(stats, field, scale = 1) {
  const versions = Object.keys(stats.versions);
  const times = [...new Set(versions.flatMap((v) => stats.versions[v].t))].sort((a, b) => a - b);
  const index = new Map(times.map((t, i) => [t, i]));
  const ys = versions.map((v) => {
    const y = new Array(times.length).fill(null);
    const series = stats.versions[v];
    series.t.forEach((t, i) => {
      const value = series[field][i];
      y[index.get(t)] = value === null ? null : value * scale;
    });
    return y;
  });
  return [times, ys];
}

function renderCharts(stats) {
  const versions = Object.keys(stats.versions);
  const key = `${stats.model}:${versions.join(",")}`;
  if (key !== state.chartKey) {
    destroyCharts();
    state.chartKey = key;
    for (const spec of CHARTS) {
      const now = el("div", { class: "now" });
      const box = el("div", { class: "chart", "data-chart": spec.id }, el("h4", {}, spec.title),
        now);
      $("charts").append(box);
      const series = [{}];
      versions.forEach((v, i) => spec.fields.forEach((field, j) => series.push({
        label: `v${v} ${field}`,
        stroke: COLORS[i % COLORS.length],
        dash: j ? [4, 4] : undefined,
        width: 2,
        spanGaps: true,
        points: { show: false },
      })));
      const plot = new uPlot({
        width: Math.max(300, box.clientWidth - 16),
        height: 170,
        series,
        legend: { show: false },
        scales: { x: { time: true }, y: { range: (_u, lo, hi) => [0, Math.max(hi, 1)] } },
        axes: [{}, { size: 48 }],
      }, [[]].concat(series.slice(1).map(() => [])), box);
      state.charts[spec.id] = { plot, now, spec, data: null };
    }
  }
  $("window").textContent = `every ${stats.interval_s} s, last ${
    Math.round((stats.keep * stats.interval_s) / 60)} min`;
  for (const chart of Object.values(state.charts)) {
    const { spec } = chart;
    const ys = [];
    let times = [];
    for (const field of spec.fields) {
      const [t, perVersion] = columns(stats, field, spec.scale || 1);
      times = t;
      perVersion.forEach((y, i) => { ys[i * spec.fields.length + spec.fields.indexOf(field)] = y; });
    }
    chart.data = [times, ...ys];
    chart.plot.setData(chart.data);
    chart.now.replaceChildren(...versions.map((v, i) => {
      const last = stats.versions[v];
      const n = last.t.length - 1;
      const values = spec.fields.map((f) => {
        const value = n >= 0 ? last[f][n] : null;
        return fmt(value === null ? null : value * (spec.scale || 1));
      });
      return el("span", { "data-version": v },
        el("i", { color: COLORS[i % COLORS.length] }),
        `v${v}: ${values.join(" / ")}${spec.unit}`);
    }));
  }
}

// -- comparing two versions -----------------------------------------------------------

function renderCompareChoices(detail) {
  const versions = detail.versions.map((v) => v.version);
  const sameModel = $("compare-form").dataset.model === detail.name;
  $("compare-form").dataset.model = detail.name;
  for (const [id, fallback] of [["compare-a", detail.default], ["compare-b", null]]) {
    const box = $(id);
    const current = sameModel ? Number(box.value) || null : null; // keep the user's choice
    const others = versions.filter((v) => v !== detail.default);
    const chosen = versions.includes(current) ? current
      : (fallback ?? others[others.length - 1] ?? versions[0]);
    box.replaceChildren(...versions.map((v) => el("option", { value: v }, `v${v}`)));
    if (chosen !== undefined && chosen !== null) box.value = String(chosen);
  }
  const submit = $("compare-form").querySelector("button");
  submit.disabled = versions.length < 2;
  submit.title = versions.length < 2 ? "this model has one version" : "";
}

async function compare(event) {
  event.preventDefault();
  const model = state.model;
  const a = $("compare-a").value;
  const b = $("compare-b").value;
  const out = $("compare-result");
  out.replaceChildren(el("p", { class: "muted" }, "running both versions on recent requests…"));
  try {
    const [result, stats] = await Promise.all([
      api(`/models/${encodeURIComponent(model)}/compare?a=${a}&b=${b}`),
      api(`/models/${encodeURIComponent(model)}/stats`),
    ]);
    out.replaceChildren(...compareTables(result, stats));
  } catch (err) {
    out.replaceChildren(el("p", { class: "error", role: "alert" }, err.message));
    if (err.status === 401) lock(`The token was refused: ${err.message}`);
  }
}

function compareTables(result, stats) {
  const live = (v) => {
    const s = stats.versions[v];
    if (!s) return {};
    const mean = (xs) => {
      const vals = xs.filter((x) => x !== null);
      return vals.length ? vals.reduce((p, q) => p + q, 0) / vals.length : null;
    };
    return { p50: mean(s.p50_ms), p99: mean(s.p99_ms), errors: mean(s.error_rate) };
  };
  const versions = [String(result.a), String(result.b)];
  const latency = el("table", { id: "compare-latency" },
    el("thead", {}, el("tr", {}, el("th", {}, "Version"), el("th", {}, "Replay p50 (ms)"),
      el("th", {}, "Live p50 (ms)"), el("th", {}, "Live p99 (ms)"),
      el("th", {}, "Live error rate (%)"))),
    el("tbody", {}, ...versions.map((v) => {
      const l = live(v);
      return el("tr", {}, el("td", {}, `v${v}`),
        el("td", {}, fmt(result.latency_ms[v] && result.latency_ms[v].p50, 2)),
        el("td", {}, fmt(l.p50, 2)), el("td", {}, fmt(l.p99, 2)),
        el("td", {}, fmt(l.errors === null || l.errors === undefined ? null : l.errors * 100)));
    })));
  const outputs = el("table", { id: "compare-outputs" },
    el("thead", {}, el("tr", {}, el("th", {}, "Output"), el("th", {}, "Max abs diff"),
      el("th", {}, "Max rel diff"), el("th", {}, "Rows differing"))),
    el("tbody", {}, ...Object.entries(result.outputs).map(([name, d]) => el("tr", {},
      el("td", {}, name), el("td", {}, d.max_abs_diff.toExponential(2)),
      el("td", {}, d.max_rel_diff.toExponential(2)), el("td", {}, d.rows_differing)))));
  return [
    el("p", {}, `v${result.a} and v${result.b} on the ${result.samples} most recent requests`),
    outputs, latency,
  ];
}

// -- start ----------------------------------------------------------------------------

function start() {
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const secret = $("token").value.trim();
    if (!secret) {
      showLocked("Enter the token first.");
      return;
    }
    unlock(secret);
  });
  $("lock").addEventListener("click", () => lock(""));
  $("compare-form").addEventListener("submit", compare);
  $("replay-form").addEventListener("submit", replayTraffic);
  window.addEventListener("resize", () => {
    for (const chart of Object.values(state.charts)) {
      const box = chart.plot.root.parentElement;
      chart.plot.setSize({ width: Math.max(300, box.clientWidth - 16), height: 170 });
    }
  });
  if (token()) unlock(token());
  else showLocked("");
  setInterval(refresh, REFRESH_MS);
}

start();
