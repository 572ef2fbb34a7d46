// One chart of one series on the simulation page: its points (a graph answer, then live ones),
// the min/max band, smoothing, log scale, and drag-to-zoom into a step range for the whole page.

import { formatLoss } from "./live.js";
import {
  graphPoints,
  insertByStep,
  livePoint,
  renderSeries,
  seriesDatasets,
  seriesOptions,
  setAxis,
  smooth,
  stepAtTime,
} from "./series.js";
import { dragToZoom, stepsCovering } from "./zoom.js";

const COLORS = {
  line: "#5aa9ff",
  faded: "rgba(90, 169, 255, 0.35)",
  smooth: "#f0b45a",
  band: "rgba(90, 169, 255, 0.18)",
};

/** The parts of a small chart's card (a clone of the page's series template). */
export function cardParts(card) {
  return {
    canvas: card.querySelector("canvas"),
    log: card.querySelector(".series-log"),
    selection: card.querySelector(".chart-selection"),
    empty: card.querySelector(".chart-empty"),
    notice: card.querySelector(".chart-notice"),
    latest: card.querySelector(".series-latest"),
  };
}

export class SeriesChart {
  /**
   * `parts`: the chart's canvas, its log-scale checkbox, drag selection, "no points" and
   * "from rollups" notices, and (optional) where its latest value shows. `view` is shared by
   * every chart of the page: `axis` ("step" or "time"), `smoothing` ({on, weight}) and `zoom`
   * (a StepZoom); a drag across this chart sets that one zoom.
   */
  constructor(metric, parts, view) {
    this.metric = metric;
    this.parts = parts;
    this.view = view;
    this.points = []; // chart points (series.js), sorted by step
    this.steps = new Set(); // the steps in `points`, so a point sent twice is drawn once
    this.rollupsOnly = false;
    this.chart = new window.Chart(parts.canvas, {
      type: "line",
      data: { datasets: seriesDatasets(metric, COLORS) },
      options: seriesOptions(view.axis, metric),
    });
    parts.log.addEventListener("change", (event) => {
      this.chart.options.scales.y.type = event.target.checked ? "logarithmic" : "linear";
      this.chart.update("none");
    });
    dragToZoom(this.chart, parts.selection, (from, to) => this.zoomTo(from, to));
  }

  zoomTo(from, to) {
    if (this.view.axis === "time") {
      this.view.zoom.set(stepAtTime(this.points, from), stepAtTime(this.points, to));
    } else {
      this.view.zoom.set(...stepsCovering(from, to));
    }
  }

  /** A graph answer for this series; live points past what it covers are kept. Returns how
   * many were kept. */
  show(graph) {
    const covered = graph.to_step ?? -1;
    const tail = this.points.filter((p) => p.x > covered && this.view.zoom.includes(p.x));
    this.points = graphPoints(graph).concat(tail);
    this.steps = new Set(this.points.map((p) => p.x));
    this.rollupsOnly = Boolean(graph.rollups_only);
    this.draw();
    return tail.length;
  }

  /** Socket or backfill points; those in the zoomed range and new to the chart are drawn.
   * Returns how many were. */
  add(points) {
    let added = 0;
    for (const raw of points) {
      if (this.steps.has(raw.step) || !this.view.zoom.includes(raw.step)) continue;
      this.steps.add(raw.step);
      added += 1;
      const point = livePoint(raw);
      if (!this.points.length || point.x > this.points.at(-1).x) this.points.push(point);
      else insertByStep(this.points, point);
    }
    if (added) this.draw();
    return added;
  }

  setAxis(axis) {
    setAxis(this.chart, axis);
    this.draw();
  }

  draw() {
    const { axis, smoothing, zoom } = this.view;
    const smoothed = smooth(this.points, smoothing.weight);
    const [line, smoothLine] = this.chart.data.datasets;
    smoothLine.hidden = !smoothing.on;
    line.borderColor = smoothing.on ? COLORS.faded : COLORS.line;
    zoom.applyLimits(this.chart, axis);
    renderSeries(this.chart, { points: this.points, smoothed, axis });
    if (this.parts.latest) {
      const latest = this.points.at(-1);
      this.parts.latest.textContent = latest ? formatLoss(latest.y) : "—";
    }
    this.parts.notice.hidden = !this.rollupsOnly;
    this.parts.empty.hidden = this.points.length > 0;
  }
}
