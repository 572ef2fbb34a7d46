// One simulation's page: the loss curve from the graph endpoint, then live points from
// WS /ws/convergence/{id}, backfilled from the stream endpoint after every reconnect so the
// curve has no holes. Chart.js comes from static/vendor (a classic script loaded before this).

import {
  LiveSocket,
  connectionIndicator,
  debounce,
  formatInt,
  formatLoss,
  formatTime,
  getJSON,
  postJSON,
  setBadge,
  socketUrl,
  withQuery,
} from "./live.js";
import {
  graphPoints,
  graphSeries,
  insertByStep,
  livePoint,
  renderSeries,
  seriesDatasets,
  seriesOptions,
  setAxis,
  smooth,
  stepAtTime,
} from "./series.js";

const GRAPH_POINTS = 2000;
const LIVE_POINTS_LIMIT = 20_000; // past this the chart reloads a downsampled view
const BACKFILL_PAGES = 3; // further behind than this: reload the chart instead of paging
const SEEN_LIMIT = 200_000;
const FINAL = new Set(["finished", "failed", "cancelled", "timed_out"]);
const STARTABLE = new Set(["pending", "scheduled"]); // where a simulated run can begin
const COLORS = {
  line: "#5aa9ff",
  faded: "rgba(90, 169, 255, 0.35)",
  smooth: "#f0b45a",
  band: "rgba(90, 169, 255, 0.18)",
};
const MAX_METRICS_PER_GRAPH = 10; // the graph endpoint's limit per request

const root = document.getElementById("simulation");
const config = root.dataset;
const canControl = config.canControl === "true";
const initial = JSON.parse(document.getElementById("simulation-data").textContent);
const $ = (id) => document.getElementById(id);

const state = {
  status: initial.status,
  points: [], // {x: step, y: loss, t, b} (see series.js), sorted by step
  smoothed: [],
  seen: new Set(), // steps received, so a point sent twice (socket + backfill) counts once
  lastStep: -1, // the highest step seen, in view or not: where a backfill resumes
  count: initial.points,
  latest: initial.latest_loss,
  best: initial.best_loss,
  zoom: null, // {from, to}; to === null follows the live end
  downsampled: false,
  inView: 0,
  loads: 0,
  backfilling: false,
  backfillAgain: false,
  machineId: initial.machine,
  axis: "step", // or "time": wall-clock time on every chart's x-axis
  rollupsOnly: false,
  others: new Map(), // metric -> SeriesChart, every series but loss
  connects: 0,
};

// --- Chart -----------------------------------------------------------------------------------

function createChart() {
  const { Chart } = window;
  Chart.defaults.color = "#8b95a3";
  Chart.defaults.borderColor = "#262d38";
  Chart.defaults.font.family = getComputedStyle(document.body).getPropertyValue("--mono");
  return new Chart($("chart"), {
    type: "line",
    data: { datasets: seriesDatasets("loss", COLORS) },
    options: seriesOptions(state.axis, "loss"),
  });
}

const chart = createChart();

function smoothingOn() {
  return $("smoothing").checked;
}

function smoothingWeight() {
  return Number($("smoothing-weight").value);
}

function recomputeSmoothing() {
  state.smoothed = smooth(state.points, smoothingWeight());
}

function inView(step) {
  const zoom = state.zoom;
  return !zoom || (step >= zoom.from && (zoom.to === null || step <= zoom.to));
}

function applyZoomLimits(target) {
  // Over time the window is already what the graph answered for the zoomed steps.
  const byStep = state.axis === "step" && state.zoom;
  target.options.scales.x.min = byStep ? state.zoom.from : undefined;
  target.options.scales.x.max = byStep ? (state.zoom.to ?? undefined) : undefined;
}

function draw() {
  applyZoomLimits(chart);
  renderSeries(chart, { points: state.points, smoothed: state.smoothed, axis: state.axis });
  $("chart-empty").hidden = state.points.length > 0;
  $("rollups-notice").hidden = !state.rollupsOnly;
  showNumbers();
}

// --- Loading the curve -----------------------------------------------------------------------

/** Several series of the graph endpoint in as few requests as it allows, by metric. */
async function fetchGraphs(metrics) {
  const zoom = state.zoom;
  const requests = [];
  for (let i = 0; i < metrics.length; i += MAX_METRICS_PER_GRAPH) {
    const url = withQuery(config.graphUrl, {
      metric: metrics.slice(i, i + MAX_METRICS_PER_GRAPH).join(","),
      max_points: GRAPH_POINTS,
      from_step: zoom?.from,
      to_step: zoom?.to,
    });
    requests.push(getJSON(url));
  }
  const answers = await Promise.all(requests);
  return new Map(answers.flatMap(graphSeries).map((series) => [series.metric, series]));
}

/** Every chart from the graph endpoint: the whole run, or the zoomed step range. */
async function loadGraph() {
  const load = ++state.loads;
  const graphs = await fetchGraphs(["loss", ...state.others.keys()]);
  if (load !== state.loads) return; // a newer load (zoom, reset) replaced this one
  showLossGraph(graphs.get("loss"));
  for (const [metric, series] of state.others) {
    if (graphs.has(metric)) series.show(graphs.get(metric));
  }
}

function showLossGraph(graph) {
  const zoom = state.zoom;
  const covered = graph.to_step ?? -1;
  // Live points that arrived while the request was out, past what it covers.
  const tail = state.points.filter((p) => p.x > covered && inView(p.x));
  state.points = graphPoints(graph).concat(tail);
  state.downsampled = graph.downsampled;
  state.rollupsOnly = Boolean(graph.rollups_only);
  state.inView = graph.raw_points + tail.length;
  for (const p of state.points) state.seen.add(p.x);
  if (!zoom) {
    state.count = Math.max(state.count, state.inView);
    const lowest = Math.min(...state.points.map((p) => p.y));
    if (state.points.length) state.best = Math.min(state.best ?? lowest, lowest);
    if (covered >= state.lastStep && graph.points.length) state.latest = graph.points.at(-1).loss;
  }
  state.lastStep = Math.max(state.lastStep, covered);
  recomputeSmoothing();
  draw();
}

const reloadSoon = debounce(() => loadGraph().catch(showError), 500);

/** Points from the socket or a backfill; each step is counted and drawn once. */
function addPoints(points) {
  let changed = false;
  for (const raw of points) {
    const { step, loss } = raw;
    if (state.seen.has(step)) continue;
    state.seen.add(step);
    changed = true;
    state.count += 1;
    state.best = state.best === null ? loss : Math.min(state.best, loss);
    if (step > state.lastStep) {
      state.lastStep = step;
      state.latest = loss;
    }
    if (!inView(step)) continue;
    state.inView += 1;
    const point = livePoint(raw);
    if (!state.points.length || step > state.points.at(-1).x) {
      state.points.push(point);
    } else {
      insertByStep(state.points, point);
    }
  }
  if (!changed) return;
  recomputeSmoothing();
  if (state.seen.size > SEEN_LIMIT) state.seen = new Set(state.points.map((p) => p.x));
  if (state.points.length > LIVE_POINTS_LIMIT) reloadSoon();
  draw();
}

/** After (re)connecting: every point stored since the last one seen, page by page. */
async function backfill() {
  if (state.backfilling) {
    state.backfillAgain = true;
    return;
  }
  state.backfilling = true;
  try {
    do {
      state.backfillAgain = false;
      let since = state.lastStep;
      for (let pages = 1; ; pages += 1) {
        const page = await getJSON(withQuery(config.streamUrl, { since_step: since }));
        addPoints(page.points);
        since = page.last_step;
        if (!page.has_more) break;
        if (pages >= BACKFILL_PAGES && !state.zoom) {
          await loadGraph(); // far behind: a downsampled chart, then only the rest
          since = state.lastStep;
          pages = 0;
        }
      }
    } while (state.backfillAgain);
  } finally {
    state.backfilling = false;
  }
}

// --- The other series: one small chart each -------------------------------------------------

/** One series other than loss, in the grid under the loss chart. */
class SeriesChart {
  constructor(metric) {
    this.metric = metric;
    this.points = [];
    this.smoothed = [];
    this.seen = new Set();
    this.rollupsOnly = false;
    this.card = $("series-template").content.firstElementChild.cloneNode(true);
    this.card.dataset.metric = metric;
    this.card.querySelector(".series-name").textContent = metric;
    const canvas = this.card.querySelector("canvas");
    canvas.setAttribute("aria-label", `${metric} by step`);
    $("series-grid").append(this.card);
    $("series-section").hidden = false;
    this.chart = new window.Chart(canvas, {
      type: "line",
      data: { datasets: seriesDatasets(metric, COLORS) },
      options: seriesOptions(state.axis, metric),
    });
    this.card.querySelector(".series-log").addEventListener("change", (event) => {
      this.chart.options.scales.y.type = event.target.checked ? "logarithmic" : "linear";
      this.chart.update("none");
    });
  }

  /** A graph answer for this series; live points past what it covers are kept. */
  show(graph) {
    const covered = graph.to_step ?? -1;
    const tail = this.points.filter((p) => p.x > covered && inView(p.x));
    this.points = graphPoints(graph).concat(tail);
    this.seen = new Set(this.points.map((p) => p.x));
    this.rollupsOnly = Boolean(graph.rollups_only);
    this.draw();
  }

  add(points) {
    let changed = false;
    for (const raw of points) {
      if (this.seen.has(raw.step) || !inView(raw.step)) continue;
      this.seen.add(raw.step);
      changed = true;
      const point = livePoint(raw);
      if (!this.points.length || point.x > this.points.at(-1).x) this.points.push(point);
      else insertByStep(this.points, point);
    }
    if (!changed) return;
    if (this.points.length > LIVE_POINTS_LIMIT) reloadSoon(); // all charts, downsampled again
    this.draw();
  }

  setAxis(axis) {
    setAxis(this.chart, axis);
    this.draw();
  }

  draw() {
    const on = smoothingOn();
    this.smoothed = smooth(this.points, smoothingWeight());
    const [line, smoothLine] = this.chart.data.datasets;
    smoothLine.hidden = !on;
    line.borderColor = on ? COLORS.faded : COLORS.line;
    applyZoomLimits(this.chart);
    renderSeries(this.chart, { points: this.points, smoothed: this.smoothed, axis: state.axis });
    const latest = this.points.at(-1);
    this.card.querySelector(".series-latest").textContent = latest ? formatLoss(latest.y) : "—";
    this.card.querySelector(".chart-notice").hidden = !this.rollupsOnly;
    this.card.querySelector(".chart-empty").hidden = this.points.length > 0;
  }
}

/** Charts for series not on the page yet; returns the ones it added. */
function addSeriesCharts(metrics) {
  const added = [];
  for (const metric of metrics) {
    if (metric === "loss" || state.others.has(metric)) continue;
    state.others.set(metric, new SeriesChart(metric));
    added.push(metric);
  }
  return added;
}

/** Only these series from the graph endpoint (a new series, or after a reconnect). */
async function loadSeries(metrics) {
  if (!metrics.length) return;
  const graphs = await fetchGraphs(metrics);
  for (const [metric, graph] of graphs) state.others.get(metric)?.show(graph);
}

function addLivePoints(points) {
  const byMetric = new Map();
  for (const point of points) {
    const metric = point.metric || "loss";
    if (!byMetric.has(metric)) byMetric.set(metric, []);
    byMetric.get(metric).push(point);
  }
  addPoints(byMetric.get("loss") ?? []);
  byMetric.delete("loss");
  const added = addSeriesCharts(byMetric.keys());
  for (const [metric, metricPoints] of byMetric) state.others.get(metric).add(metricPoints);
  // Points of a new series stored before this message (another request) come from the graph.
  if (added.length) loadSeries(added).catch(showError);
}

// --- Numbers, status, machine ----------------------------------------------------------------

function showNumbers() {
  $("latest-loss").textContent = formatLoss(state.latest);
  $("best-loss").textContent = formatLoss(state.best);
  $("point-count").textContent = formatInt(state.count);
  $("last-step").textContent = state.lastStep >= 0 ? formatInt(state.lastStep) : "—";
  const shown = `${formatInt(state.points.length)} points shown`;
  const sampled = state.downsampled
    ? ` of ${formatInt(state.inView)} (downsampled, min/max of each bucket kept)`
    : "";
  const range = state.zoom
    ? ` · steps ${formatInt(state.zoom.from)}–${state.zoom.to === null ? "latest" : formatInt(state.zoom.to)}`
    : "";
  $("chart-info").textContent = shown + sampled + range;
}

function showTimes() {
  for (const element of root.querySelectorAll("[data-time]")) {
    element.textContent = formatTime(element.dataset.time);
  }
}

// guards: what stopped the run early, and what of its max_duration that did not spend
function stopNote(simulation) {
  if (!simulation.stopped_by) return "";
  const saved = simulation.saved_cost
    ? ` Saved ${Number(simulation.saved_hours).toFixed(2)} machine-hours ($${Number(simulation.saved_cost).toFixed(2)}).`
    : "";
  return `Stopped by ${simulation.stopped_by}: ${simulation.stop_reason}.${saved}`;
}

function showStatus(status, simulation = null) {
  state.status = status;
  setBadge($("status"), status);
  if (simulation) {
    $("scheduled-at").dataset.time = simulation.scheduled_at ?? "";
    $("started-at").dataset.time = simulation.started_at ?? "";
    $("finished-at").dataset.time = simulation.finished_at ?? "";
    showTimes();
    const note = $("status-note");
    if (status !== "pending") {
      const text = stopNote(simulation) || simulation.failure_reason || ""; // guards
      note.textContent = text;
      note.hidden = !text;
    }
    if (simulation.machine && simulation.machine !== state.machineId) {
      state.machineId = simulation.machine;
      showMachine(simulation.machine).catch(console.warn);
    }
  }
  updateControls();
}

async function showMachine(id) {
  const machine = await getJSON(config.machineUrl.replace(/0$/, String(id)));
  $("machine-name").textContent = machine.name;
  $("machine-name").nextElementSibling.textContent =
    `${machine.gpu_count} GPU · $${machine.hourly_cost}/h`;
  const facts = [
    ["Name", machine.name],
    ["Status", null],
    ["GPU", machine.gpu || "none"],
    ["CPU", machine.cpu],
    ["Cores", machine.cpu_cores],
    ["Memory", `${machine.memory} GB`],
    ["Cost", `$${machine.hourly_cost}/h`],
  ];
  const list = document.createElement("dl");
  list.className = "facts";
  for (const [label, value] of facts) {
    const term = document.createElement("dt");
    const detail = document.createElement("dd");
    term.textContent = label;
    if (value === null) {
      const badge = document.createElement("span");
      badge.className = "badge";
      setBadge(badge, machine.status);
      detail.append(badge);
    } else {
      detail.textContent = value;
    }
    list.append(term, detail);
  }
  $("machine-facts").replaceChildren(list);
}

function showError(error) {
  const box = $("error");
  box.textContent = typeof error === "string" ? error : error.message;
  box.hidden = false;
}

function hideError() {
  $("error").hidden = true;
}

// --- Simulated run and cancel ----------------------------------------------------------------

let runSocket = null;

function updateControls() {
  if (!canControl) return;
  const button = $("run-button");
  button.hidden = !runSocket && !STARTABLE.has(state.status);
  button.textContent = runSocket ? "Stop" : "Start simulated run";
  button.classList.toggle("primary", !runSocket);
  button.classList.toggle("stop", Boolean(runSocket));
  $("cancel-button").hidden = FINAL.has(state.status);
}

function startRun() {
  hideError();
  const socket = new WebSocket(socketUrl(config.runWsPath));
  let refusal = null;
  runSocket = socket;
  $("run-button").disabled = true;
  updateControls();
  socket.addEventListener("message", (event) => {
    const message = JSON.parse(event.data);
    if (message.type === "error") refusal = message.message;
    if (message.type === "run") {
      $("run-button").disabled = false;
      showStatus(message.status);
    }
  });
  socket.addEventListener("close", (event) => {
    runSocket = null;
    $("run-button").disabled = false;
    if (event.code === 4409) showError(refusal || "The simulated run was refused.");
    else if (event.code === 4403) showError("Only the simulation's owner or staff may run it.");
    else if (event.code === 4401) showError("You are signed out: reload the page to sign in.");
    else if (event.code !== 1000) showError("The simulated run's connection dropped.");
    updateControls();
  });
}

function stopRun() {
  $("run-button").disabled = true;
  runSocket.close(1000);
}

async function cancel() {
  if (!window.confirm("Cancel this simulation? Its machine is freed at once.")) return;
  hideError();
  try {
    const simulation = await postJSON(config.cancelUrl, config.csrfToken);
    showStatus(simulation.status, simulation);
  } catch (error) {
    showError(error);
  }
}

// --- Zoom ------------------------------------------------------------------------------------

function zoomTo(from, to) {
  if (to !== null && to < from) {
    showError("The zoom range must end after it starts.");
    return;
  }
  hideError();
  state.zoom = { from, to };
  $("from-step").value = from;
  $("to-step").value = to ?? "";
  $("zoom-reset").disabled = false;
  loadGraph().catch(showError);
}

function resetZoom() {
  state.zoom = null;
  $("from-step").value = "";
  $("to-step").value = "";
  $("zoom-reset").disabled = true;
  loadGraph().catch(showError);
}

function wireDragZoom() {
  const canvas = $("chart");
  const selection = $("chart-selection");
  let start = null;
  const clampX = (x) => Math.min(Math.max(x, chart.chartArea.left), chart.chartArea.right);
  const show = (a, b) => {
    selection.style.left = `${canvas.offsetLeft + Math.min(a, b)}px`;
    selection.style.width = `${Math.abs(b - a)}px`;
    selection.hidden = false;
  };
  canvas.addEventListener("pointerdown", (event) => {
    const { left, right } = chart.chartArea;
    if (event.button !== 0 || event.offsetX < left || event.offsetX > right) return;
    start = event.offsetX;
    canvas.setPointerCapture(event.pointerId);
    show(start, start);
  });
  canvas.addEventListener("pointermove", (event) => {
    if (start !== null) show(start, clampX(event.offsetX));
  });
  canvas.addEventListener("pointerup", (event) => {
    if (start === null) return;
    const [a, b] = [start, clampX(event.offsetX)].sort((p, q) => p - q);
    start = null;
    selection.hidden = true;
    if (b - a < 6) return; // a click, not a selection
    const scale = chart.scales.x;
    const [from, to] = [a, b].map((pixel) => scale.getValueForPixel(pixel));
    if (state.axis === "time") {
      zoomTo(stepAtTime(state.points, from), stepAtTime(state.points, to));
    } else {
      zoomTo(Math.max(0, Math.floor(from)), Math.ceil(to));
    }
  });
}

function wireControls() {
  $("log-scale").addEventListener("change", (event) => {
    chart.options.scales.y.type = event.target.checked ? "logarithmic" : "linear";
    chart.update("none");
  });
  // Smoothing and the x-axis apply to every chart of the page; log scale to one chart each.
  const applySmoothing = () => {
    const on = smoothingOn();
    recomputeSmoothing();
    $("smoothing-value").textContent = smoothingWeight().toFixed(2);
    chart.data.datasets[1].hidden = !on;
    chart.data.datasets[0].borderColor = on ? COLORS.faded : COLORS.line;
    draw();
    for (const series of state.others.values()) series.draw();
  };
  $("x-axis").addEventListener("change", (event) => {
    state.axis = event.target.value;
    setAxis(chart, state.axis);
    draw();
    for (const series of state.others.values()) series.setAxis(state.axis);
  });
  $("smoothing").addEventListener("change", applySmoothing);
  $("smoothing-weight").addEventListener("input", applySmoothing);
  $("zoom-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const from = $("from-step").value;
    const to = $("to-step").value;
    if (from === "" && to === "") resetZoom();
    else zoomTo(from === "" ? 0 : Number(from), to === "" ? null : Number(to));
  });
  $("zoom-reset").addEventListener("click", resetZoom);
  wireDragZoom();
  if (canControl) {
    $("run-button").addEventListener("click", () => (runSocket ? stopRun() : startRun()));
    $("cancel-button").addEventListener("click", cancel);
  }
}

// --- Start -----------------------------------------------------------------------------------

function onMessage(message) {
  if (message.type === "snapshot") {
    state.connects += 1;
    showStatus(message.simulation.status, message.simulation);
    backfill().catch(showError);
    // After a reconnect the other series are reloaded whole rather than paged.
    const reload = state.connects > 1 ? [...state.others.keys()] : [];
    const added = addSeriesCharts(message.metrics ?? []);
    loadSeries([...reload, ...added]).catch(showError);
  } else if (message.type === "points") {
    // Points of other series carry their metric, loss points do not.
    addLivePoints(message.points);
  } else if (message.type === "status") {
    showStatus(message.status, message.simulation);
  }
}

showTimes();
showNumbers();
wireControls();
updateControls();
try {
  const { metrics } = await getJSON(config.metricsUrl);
  addSeriesCharts(metrics.map((m) => m.metric));
} catch (error) {
  console.warn("series list", error); // the loss chart still loads
}
try {
  await loadGraph();
} catch (error) {
  showError(error);
}
new LiveSocket(config.wsPath, {
  onMessage,
  onState: connectionIndicator($("connection")),
}).open();
