// The compare page: one metric of several runs on one chart, one line per run with a legend.
// Zoom re-queries /convergence/compare for the window; running runs get their new points live.

import { LiveSocket, alertBox, formatInt, getJSON, withQuery } from "./live.js";
import { applyChartTheme, chartOptions } from "./series.js";
import { StepZoom, dragToZoom, stepsCovering } from "./zoom.js";

const COLORS = ["#4f9dff", "#f5a524", "#3ccf91", "#ef5b5b", "#b47cff", "#2ec4d6", "#e879b9",
  "#a3be3c", "#ff8a4c", "#8b95a3"];
const MAX_POINTS = 1000;

const root = document.getElementById("compare");
const $ = (id) => document.getElementById(id);
const state = { ids: [], metric: "loss", sockets: new Map(), loads: 0 };
let chart = null;
let zoom = null;
let errors = null;

function parseIds(text) {
  return [...new Set(text.split(",").map((s) => s.trim()).filter((s) => /^\d+$/.test(s)))];
}

function createChart() {
  applyChartTheme();
  const options = chartOptions("step", state.metric);
  options.plugins.legend = { display: true, position: "bottom" };
  return new window.Chart($("chart"), { type: "line", data: { datasets: [] }, options });
}

function renderRuns(runs) {
  const body = $("runs").querySelector("tbody");
  body.replaceChildren(...runs.map((run, index) => {
    const row = document.createElement("tr");
    row.dataset.id = run.simulation_id;
    const link = document.createElement("a");
    link.href = root.dataset.pageUrl.replace(/0$/, String(run.simulation_id));
    link.textContent = run.name;
    link.style.color = COLORS[index % COLORS.length];
    const cells = [link, run.status, run.machine_name || "—", formatInt(run.raw_points),
      formatInt(run.returned_points)];
    for (const value of cells) {
      const cell = document.createElement("td");
      if (value instanceof Node) cell.append(value); else cell.textContent = value;
      row.append(cell);
    }
    row.children[3].className = row.children[4].className = "num";
    return row;
  }));
}

async function load() {
  if (!state.ids.length) {
    errors.show("Choose runs: tick them on the fleet page, or type their ids above.");
    return;
  }
  const params = {
    simulations: state.ids.join(","),
    metric: state.metric,
    max_points: MAX_POINTS,
    from_step: zoom.range?.from,
    to_step: zoom.range?.to,
  };
  const loadNumber = ++state.loads;
  try {
    const body = await getJSON(withQuery(root.dataset.compareUrl, params));
    if (loadNumber !== state.loads) return; // a newer load (zoom, reset, runs) replaced this one
    errors.hide();
    chart.data.datasets = body.simulations.map((run, index) => ({
      label: `${run.name} (#${run.simulation_id})`,
      simulationId: run.simulation_id,
      data: run.points.map((p) => ({ x: p.step, y: p.loss })),
      borderColor: COLORS[index % COLORS.length],
      borderWidth: 1.5,
    }));
    chart.options.scales.y.title.text = state.metric;
    zoom.applyLimits(chart);
    chart.update();
    renderRuns(body.simulations);
    showRollupsNotice(body.simulations);
    $("chart-info").textContent =
      `${body.simulations.length} run(s) · ${state.metric} · at most ${MAX_POINTS} points each, ` +
      "every bucket's first, min, max and last kept";
    watchRunning(body.simulations);
  } catch (error) {
    errors.show(error);
  }
}

/** Compacted runs (`manage.py compact`) are drawn from their rollups: say which. */
function showRollupsNotice(runs) {
  const compacted = runs.filter((run) => run.rollups_only).map((run) => `${run.name} (#${run.simulation_id})`);
  const notice = $("rollups-notice");
  notice.textContent = compacted.length
    ? `raw points compacted: chart drawn from rollups for ${compacted.join(", ")}`
    : "";
  notice.hidden = !compacted.length;
}

function watchRunning(runs) {
  const running = new Set(runs.filter((r) => !r.is_complete).map((r) => r.simulation_id));
  for (const [id, socket] of state.sockets) {
    if (!running.has(id)) { socket.close(); state.sockets.delete(id); }
  }
  for (const id of running) {
    if (state.sockets.has(id)) continue;
    const socket = new LiveSocket(`/ws/convergence/${id}`, {
      onMessage: (message) => onLive(id, message),
    });
    socket.open();
    state.sockets.set(id, socket);
  }
}

function onLive(simulationId, message) {
  if (message.type !== "points" || !zoom.followsLiveEnd) return; // a zoomed window stays put
  const dataset = chart.data.datasets.find((d) => d.simulationId === simulationId);
  if (!dataset) return;
  const last = dataset.data.length ? dataset.data[dataset.data.length - 1].x : -1;
  for (const point of message.points) {
    if ((point.metric || "loss") === state.metric && point.step > last) {
      dataset.data.push({ x: point.step, y: point.loss });
    }
  }
  chart.update("none");
}

function updateUrl() {
  const url = new URL(location.href);
  url.searchParams.set("simulations", state.ids.join(","));
  url.searchParams.set("metric", state.metric);
  history.replaceState(null, "", url);
}

function start() {
  errors = alertBox($("error"));
  chart = createChart();
  state.ids = parseIds(root.dataset.simulations || "");
  state.metric = root.dataset.metric || "loss";
  $("compare-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.ids = parseIds($("simulations").value);
    state.metric = $("metric").value.trim() || "loss";
    updateUrl();
    load();
  });
  // The form, or a drag across the chart: either re-queries /convergence/compare for the range.
  zoom = new StepZoom(
    { form: $("zoom-form"), from: $("from-step"), to: $("to-step"), reset: $("zoom-reset") },
    { onChange: load, onError: errors.show },
  );
  dragToZoom(chart, $("chart-selection"), (from, to) => zoom.set(...stepsCovering(from, to)));
  $("log-scale").addEventListener("change", (event) => {
    chart.options.scales.y.type = event.target.checked ? "logarithmic" : "linear";
    chart.update();
  });
  load();
}

window.addEventListener("load", start);
