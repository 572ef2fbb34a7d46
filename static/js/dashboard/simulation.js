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

const GRAPH_POINTS = 2000;
const LIVE_POINTS_LIMIT = 20_000; // past this the chart reloads a downsampled view
const BACKFILL_PAGES = 3; // further behind than this: reload the chart instead of paging
const SEEN_LIMIT = 200_000;
const FINAL = new Set(["finished", "failed", "cancelled", "timed_out"]);
const STARTABLE = new Set(["pending", "scheduled"]); // where a simulated run can begin
const COLORS = { loss: "#5aa9ff", faded: "rgba(90, 169, 255, 0.35)", smooth: "#f0b45a" };

const root = document.getElementById("simulation");
const config = root.dataset;
const canControl = config.canControl === "true";
const initial = JSON.parse(document.getElementById("simulation-data").textContent);
const $ = (id) => document.getElementById(id);

const state = {
  status: initial.status,
  points: [], // {x: step, y: loss}, sorted by step: the chart's first dataset
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
};

// --- Chart -----------------------------------------------------------------------------------

function createChart() {
  const { Chart } = window;
  Chart.defaults.color = "#8b95a3";
  Chart.defaults.borderColor = "#262d38";
  Chart.defaults.font.family = getComputedStyle(document.body).getPropertyValue("--mono");
  return new Chart($("chart"), {
    type: "line",
    data: {
      datasets: [
        { label: "loss", data: state.points, borderColor: COLORS.loss, borderWidth: 1.25 },
        {
          label: "smoothed",
          data: state.smoothed,
          borderColor: COLORS.smooth,
          borderWidth: 2,
          hidden: true,
        },
      ],
    },
    options: {
      parsing: false,
      normalized: true,
      animation: false,
      maintainAspectRatio: false,
      elements: { point: { radius: 0, hoverRadius: 3, hitRadius: 4 }, line: { tension: 0 } },
      interaction: { mode: "nearest", axis: "x", intersect: false },
      scales: {
        x: {
          type: "linear",
          title: { display: true, text: "step" },
          ticks: { maxRotation: 0, callback: (value) => formatInt(value) },
        },
        y: { type: "linear", title: { display: true, text: "loss" } },
      },
      plugins: {
        legend: { display: false },
        tooltip: {
          callbacks: {
            title: (items) => `step ${formatInt(items[0].parsed.x)}`,
            label: (item) => ` ${item.dataset.label}  ${formatLoss(item.parsed.y)}`,
          },
        },
      },
    },
  });
}

const chart = createChart();

function smoothingOn() {
  return $("smoothing").checked;
}

function smoothingWeight() {
  return Number($("smoothing-weight").value);
}

/** Exponential moving average, the way training dashboards smooth a noisy loss. */
function recomputeSmoothing() {
  const weight = smoothingWeight();
  let value = null;
  state.smoothed = state.points.map((p) => {
    value = value === null ? p.y : weight * value + (1 - weight) * p.y;
    return { x: p.x, y: value };
  });
  chart.data.datasets[1].data = state.smoothed;
}

function pushSmoothed(point) {
  const previous = state.smoothed.at(-1);
  const weight = smoothingWeight();
  const y = previous ? weight * previous.y + (1 - weight) * point.y : point.y;
  state.smoothed.push({ x: point.x, y });
}

function insertSorted(point) {
  let lo = 0;
  let hi = state.points.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (state.points[mid].x < point.x) lo = mid + 1;
    else hi = mid;
  }
  state.points.splice(lo, 0, point);
}

function inView(step) {
  const zoom = state.zoom;
  return !zoom || (step >= zoom.from && (zoom.to === null || step <= zoom.to));
}

function draw() {
  chart.options.scales.x.min = state.zoom ? state.zoom.from : undefined;
  chart.options.scales.x.max = state.zoom?.to ?? undefined;
  chart.update("none");
  $("chart-empty").hidden = state.points.length > 0;
  showNumbers();
}

// --- Loading the curve -----------------------------------------------------------------------

/** The chart's series from the graph endpoint: the whole run, or the zoomed step range. */
async function loadGraph() {
  const load = ++state.loads;
  const zoom = state.zoom;
  const graph = await getJSON(
    withQuery(config.graphUrl, {
      max_points: GRAPH_POINTS,
      from_step: zoom?.from,
      to_step: zoom?.to,
    }),
  );
  if (load !== state.loads) return; // a newer load (zoom, reset) replaced this one
  const covered = graph.to_step ?? -1;
  // Live points that arrived while the request was out, past what it covers.
  const tail = state.points.filter((p) => p.x > covered && inView(p.x));
  state.points = graph.points.map((p) => ({ x: p.step, y: p.loss })).concat(tail);
  chart.data.datasets[0].data = state.points;
  state.downsampled = graph.downsampled;
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
  let appendedOnly = true;
  for (const { step, loss } of points) {
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
    const point = { x: step, y: loss };
    if (!state.points.length || step > state.points.at(-1).x) {
      state.points.push(point);
      pushSmoothed(point);
    } else {
      insertSorted(point);
      appendedOnly = false;
    }
  }
  if (!changed) return;
  if (!appendedOnly) recomputeSmoothing();
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
    zoomTo(
      Math.max(0, Math.floor(scale.getValueForPixel(a))),
      Math.ceil(scale.getValueForPixel(b)),
    );
  });
}

function wireControls() {
  $("log-scale").addEventListener("change", (event) => {
    chart.options.scales.y.type = event.target.checked ? "logarithmic" : "linear";
    chart.update("none");
  });
  const applySmoothing = () => {
    const on = smoothingOn();
    recomputeSmoothing();
    $("smoothing-value").textContent = smoothingWeight().toFixed(2);
    chart.data.datasets[1].hidden = !on;
    chart.data.datasets[0].borderColor = on ? COLORS.faded : COLORS.loss;
    chart.update("none");
  };
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
    showStatus(message.simulation.status, message.simulation);
    backfill().catch(showError);
  } else if (message.type === "points") {
    addPoints(message.points);
  } else if (message.type === "status") {
    showStatus(message.status, message.simulation);
  }
}

showTimes();
showNumbers();
wireControls();
updateControls();
try {
  await loadGraph();
} catch (error) {
  showError(error);
}
new LiveSocket(config.wsPath, {
  onMessage,
  onState: connectionIndicator($("connection")),
}).open();
