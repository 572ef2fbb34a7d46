// One simulation's page: its charts (the loss curve and every other series, from the graph
// endpoint, then live from WS /ws/convergence/{id}, backfilled after every reconnect), its
// status and machine, the owner's controls and the output panel. This script only wires the
// modules that do each. Chart.js comes from static/vendor (a classic script loaded before this).

import { LiveSocket, alertBox, connectionIndicator, getJSON } from "./live.js";
import { LossChart } from "./loss-chart.js";
import { LogPanel } from "./logs.js";
import { RunCharts } from "./run-charts.js";
import { RunControls } from "./run-controls.js";
import { RunStatus, showTimes } from "./run-status.js";
import { applyChartTheme } from "./series.js";
import { cardParts } from "./series-chart.js";
import { StepZoom } from "./zoom.js";

const root = document.getElementById("simulation");
const config = root.dataset;
const initial = JSON.parse(document.getElementById("simulation-data").textContent);
const $ = (id) => document.getElementById(id);
const errors = alertBox($("error"));

function smoothing() {
  return { on: $("smoothing").checked, weight: Number($("smoothing-weight").value) };
}

/** A card for a series other than loss, in the grid under the loss chart. */
function newCard(metric) {
  const card = $("series-template").content.firstElementChild.cloneNode(true);
  card.dataset.metric = metric;
  card.querySelector(".series-name").textContent = metric;
  card.querySelector("canvas").setAttribute("aria-label", `${metric} by step`);
  $("series-grid").append(card);
  $("series-section").hidden = false;
  return cardParts(card);
}

const zoom = new StepZoom(
  { form: $("zoom-form"), from: $("from-step"), to: $("to-step"), reset: $("zoom-reset") },
  {
    onChange: () => {
      errors.hide();
      charts.load().catch(errors.show);
    },
    onError: errors.show,
  },
);
applyChartTheme();
const view = { axis: "step", smoothing: smoothing(), zoom };
const loss = new LossChart(
  {
    canvas: $("chart"),
    log: $("log-scale"),
    selection: $("chart-selection"),
    empty: $("chart-empty"),
    notice: $("rollups-notice"),
  },
  view,
  {
    latest: $("latest-loss"),
    best: $("best-loss"),
    count: $("point-count"),
    lastStep: $("last-step"),
    info: $("chart-info"),
  },
  initial,
);
const charts = new RunCharts(config, { loss, view, newCard, onError: errors.show });

let controls = null;
const status = new RunStatus({
  root,
  machineUrl: config.machineUrl,
  initial,
  onChange: (value) => controls?.update(value),
});
if (config.canControl === "true") {
  controls = new RunControls(config, {
    status: initial.status,
    errors,
    onStatus: (value, simulation) => status.show(value, simulation),
  });
  controls.update();
}

// Smoothing and the x-axis apply to every chart of the page; log scale to one chart each.
const applySmoothing = () => {
  $("smoothing-value").textContent = smoothing().weight.toFixed(2);
  charts.setSmoothing(smoothing());
};
$("smoothing").addEventListener("change", applySmoothing);
$("smoothing-weight").addEventListener("input", applySmoothing);
$("x-axis").addEventListener("change", (event) => charts.setAxis(event.target.value));

let connects = 0;
function onMessage(message) {
  if (message.type === "snapshot") {
    connects += 1;
    status.show(message.simulation.status, message.simulation);
    charts.connected(message.metrics ?? [], { again: connects > 1 });
  } else if (message.type === "points") {
    charts.addLive(message.points);
  } else if (message.type === "status") {
    status.show(message.status, message.simulation);
  }
}

if ($("logs")) new LogPanel($("logs")).start(); // its own socket: it need not wait for charts
showTimes(root);
loss.showNumbers();
try {
  const { metrics } = await getJSON(config.metricsUrl);
  charts.addSeries(metrics.map((m) => m.metric));
} catch (error) {
  console.warn("series list", error); // the loss chart still loads
}
try {
  await charts.load();
} catch (error) {
  errors.show(error);
}
new LiveSocket(config.wsPath, { onMessage, onState: connectionIndicator($("connection")) }).open();
