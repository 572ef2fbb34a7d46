// What every chart of the simulation page shares: the points it keeps, the min/max band of the
// graph endpoint's buckets, EMA smoothing and the step / wall-clock time x-axis.
//
// A chart point is {x: step, y: value, t: milliseconds since the epoch or null, b: bucket}. The
// graph endpoint keeps the first, min, max and last point of each bucket (`bucket_width` steps,
// counted from step 0), so the points of one bucket share `b`; a point that is not downsampled
// (a small window, a live point) is a bucket of its own.

import { formatInt, formatLoss } from "./live.js";

const timeOfDay = new Intl.DateTimeFormat(undefined, {
  hour: "2-digit",
  minute: "2-digit",
  second: "2-digit",
  hour12: false,
});
const dayAndTime = new Intl.DateTimeFormat(undefined, {
  month: "short",
  day: "numeric",
  hour: "2-digit",
  minute: "2-digit",
  second: "2-digit",
  hour12: false,
});

function timeOrNull(iso) {
  const ms = iso ? Date.parse(iso) : Number.NaN;
  return Number.isNaN(ms) ? null : ms;
}

/** A graph answer's points (one series) as chart points. */
export function graphPoints(series) {
  const width = series.downsampled ? series.bucket_width : 0;
  return series.points.map((p) => ({
    x: p.step,
    y: p.loss,
    t: timeOrNull(p.timestamp),
    b: width ? Math.floor(p.step / width) : `s${p.step}`,
  }));
}

/** A socket point: its own time when it carries one, else the time it arrived. */
export function livePoint(point) {
  return {
    x: point.step,
    y: point.loss,
    t: timeOrNull(point.timestamp) ?? Date.now(),
    b: `s${point.step}`,
  };
}

/** The several series of one graph answer (one metric: its fields are at the top level). */
export function graphSeries(graph) {
  return graph.series ?? [graph];
}

/** Exponential moving average, the way training dashboards smooth a noisy curve. */
export function smooth(points, weight) {
  let value = null;
  return points.map((p) => {
    value = value === null ? p.y : weight * value + (1 - weight) * p.y;
    return { x: p.x, y: value, t: p.t };
  });
}

/**
 * The min/max band: for each bucket, its lowest and highest value from its first to its last
 * step, so a spike between two drawn points still shows as the band's edge. Returns two
 * point lists, `low` and `high`, of the same length.
 */
export function band(points) {
  const low = [];
  const high = [];
  let start = 0;
  for (let i = 1; i <= points.length; i += 1) {
    if (i < points.length && points[i].b === points[start].b) continue;
    const bucket = points.slice(start, i);
    const ys = bucket.map((p) => p.y);
    const lo = Math.min(...ys);
    const hi = Math.max(...ys);
    for (const p of [bucket[0], bucket.at(-1)]) {
      low.push({ x: p.x, y: lo, t: p.t });
      high.push({ x: p.x, y: hi, t: p.t });
    }
    start = i;
  }
  return { low, high };
}

/** Points as the chart draws them: by step, or by time (points with no time left out). */
export function onAxis(points, axis) {
  if (axis === "step") return points;
  return points.filter((p) => p.t !== null).map((p) => ({ x: p.t, y: p.y }));
}

export function formatClock(ms, withDay = false) {
  return (withDay ? dayAndTime : timeOfDay).format(new Date(ms));
}

/** The x scale options for an axis: a linear scale over steps or over epoch milliseconds. */
export function xScale(axis) {
  if (axis === "time") {
    return {
      type: "linear",
      title: { display: true, text: "wall-clock time" },
      ticks: { maxRotation: 0, autoSkipPadding: 24, callback: (value) => formatClock(value) },
    };
  }
  return {
    type: "linear",
    title: { display: true, text: "step" },
    ticks: { maxRotation: 0, callback: (value) => formatInt(value) },
  };
}

export function tooltipTitle(axis) {
  return (items) =>
    axis === "time"
      ? formatClock(items[0].parsed.x, true)
      : `step ${formatInt(items[0].parsed.x)}`;
}

/** A series chart's datasets: line, smoothed line, then the band's low and high edges. */
export function seriesDatasets(label, colors) {
  return [
    { label, data: [], borderColor: colors.line, borderWidth: 1.25 },
    { label: "smoothed", data: [], borderColor: colors.smooth, borderWidth: 2, hidden: true },
    {
      label: "bucket min",
      data: [],
      borderWidth: 0,
      pointRadius: 0,
      pointHitRadius: 0,
      fill: false,
    },
    {
      label: "bucket max",
      data: [],
      borderWidth: 0,
      pointRadius: 0,
      pointHitRadius: 0,
      backgroundColor: colors.band,
      fill: "-1", // down to the band's low edge
    },
  ];
}

/** Common options of every series chart on the page. */
export function seriesOptions(axis, yTitle) {
  return {
    parsing: false,
    normalized: true,
    animation: false,
    maintainAspectRatio: false,
    elements: { point: { radius: 0, hoverRadius: 3, hitRadius: 4 }, line: { tension: 0 } },
    interaction: { mode: "nearest", axis: "x", intersect: false },
    scales: { x: xScale(axis), y: { type: "linear", title: { display: true, text: yTitle } } },
    plugins: {
      legend: { display: false },
      tooltip: {
        // the band's edges are context, not values to read one by one
        filter: (item) => item.datasetIndex < 2,
        callbacks: {
          title: tooltipTitle(axis),
          label: (item) => ` ${item.dataset.label}  ${formatLoss(item.parsed.y)}`,
        },
      },
    },
  };
}

/** Fills a chart's four datasets from its points and draws it. */
export function renderSeries(chart, { points, smoothed, axis }) {
  const [line, smoothLine, low, high] = chart.data.datasets;
  const edges = band(points);
  line.data = onAxis(points, axis);
  smoothLine.data = onAxis(smoothed, axis);
  low.data = onAxis(edges.low, axis);
  high.data = onAxis(edges.high, axis);
  chart.update("none");
}

/** Switches a chart between step and wall-clock time on x (zoom limits are the caller's). */
export function setAxis(chart, axis) {
  chart.options.scales.x = xScale(axis);
  chart.options.plugins.tooltip.callbacks.title = tooltipTitle(axis);
}

/** The step of the first point at or after a time, for a drag over a time axis. */
export function stepAtTime(points, ms) {
  const timed = points.filter((p) => p.t !== null);
  const hit = timed.find((p) => p.t >= ms) ?? timed.at(-1);
  return hit ? hit.x : 0;
}

/** Inserts a point into points sorted by step. */
export function insertByStep(points, point) {
  let lo = 0;
  let hi = points.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (points[mid].x < point.x) lo = mid + 1;
    else hi = mid;
  }
  points.splice(lo, 0, point);
}
