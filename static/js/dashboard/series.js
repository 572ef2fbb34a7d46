// What every chart of the simulation page shares: the points it keeps, the min/max band of the
// graph endpoint's buckets, EMA smoothing and the step / wall-clock time x-axis.
//
// A chart point is {x: step, y: value, t: milliseconds since the epoch or null, b: bucket}. The
// graph endpoint keeps the first, min, max and last point of each bucket (`bucket_width` steps,
// counted from step 0), so the points of one bucket share `b`; a point that is not downsampled
// (a small window, a live point) is a bucket of its own.

import { dateTime as dayAndTime, formatInt, formatLoss } from "./live.js";

const timeOfDay = new Intl.DateTimeFormat(undefined, {
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

// --- Chart.js's time scale without a date library ------------------------------------------
// The time scale needs a date adapter; the few calls it makes are done here with Date and Intl
// (local time), rather than vendoring a date library for one axis.

const UNIT_MS = { millisecond: 1, second: 1e3, minute: 6e4, hour: 36e5, day: 864e5, week: 6048e5 };
const MONTHS = { month: 1, quarter: 3, year: 12 };
const TICK_FORMATS = {
  datetime: dayAndTime,
  millisecond: new Intl.DateTimeFormat(undefined, {
    minute: "2-digit",
    second: "2-digit",
    fractionalSecondDigits: 3,
  }),
  second: timeOfDay,
  minute: new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", hour12: false }),
  hour: new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", hour12: false }),
  day: new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric" }),
  week: new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric" }),
  month: new Intl.DateTimeFormat(undefined, { month: "short", year: "numeric" }),
  quarter: new Intl.DateTimeFormat(undefined, { month: "short", year: "numeric" }),
  year: new Intl.DateTimeFormat(undefined, { year: "numeric" }),
};

function startOf(ms, unit, weekday = 0) {
  const d = new Date(ms);
  if (unit === "millisecond") return ms;
  if (unit === "second") return d.setMilliseconds(0);
  if (unit === "minute") return d.setSeconds(0, 0);
  if (unit === "hour") return d.setMinutes(0, 0, 0);
  d.setHours(0, 0, 0, 0);
  if (unit === "week" || unit === "isoWeek") {
    const first = unit === "isoWeek" ? 1 : weekday;
    d.setDate(d.getDate() - ((d.getDay() - first + 7) % 7));
  } else if (unit in MONTHS) {
    d.setDate(1);
    if (unit === "quarter") d.setMonth(d.getMonth() - (d.getMonth() % 3));
    if (unit === "year") d.setMonth(0);
  }
  return d.getTime();
}

function add(ms, amount, unit) {
  if (!(unit in MONTHS)) return ms + amount * UNIT_MS[unit];
  const d = new Date(ms);
  return d.setMonth(d.getMonth() + amount * MONTHS[unit]);
}

function diff(a, b, unit) {
  if (!(unit in MONTHS)) return (a - b) / UNIT_MS[unit];
  const [x, y] = [new Date(a), new Date(b)];
  const months = (x.getFullYear() - y.getFullYear()) * 12 + x.getMonth() - y.getMonth();
  return months / MONTHS[unit];
}

let adapterInstalled = false;

function useTimeAdapter() {
  if (adapterInstalled) return;
  adapterInstalled = true;
  window.Chart._adapters._date.override({
    formats: () => Object.fromEntries(Object.keys(TICK_FORMATS).map((key) => [key, key])),
    parse: (value) => (value === null || value === undefined ? null : new Date(value).getTime()),
    format: (ms, key) => (TICK_FORMATS[key] ?? dayAndTime).format(new Date(ms)),
    add,
    diff,
    startOf,
    endOf: (ms, unit) => startOf(add(ms, 1, unit), unit) - 1,
  });
}

/** The x scale options for an axis: linear over steps, or Chart.js's time scale. */
export function xScale(axis) {
  if (axis === "time") {
    useTimeAdapter();
    return {
      type: "time",
      title: { display: true, text: "wall-clock time" },
      ticks: { maxRotation: 0, autoSkipPadding: 24 },
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

/** The dashboard's colours and font for every Chart.js chart (call before creating one). */
export function applyChartTheme() {
  const { Chart } = window;
  Chart.defaults.color = "#8b95a3";
  Chart.defaults.borderColor = "#262d38";
  Chart.defaults.font.family = getComputedStyle(document.body).getPropertyValue("--mono");
}

/** Options every line chart of the dashboard shares: points given as {x, y}, no animation,
 * the step or time x-axis, a y-axis titled `yTitle`, and tooltips read as step (or time) and
 * value. */
export function chartOptions(axis, yTitle) {
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
        callbacks: {
          title: tooltipTitle(axis),
          label: (item) => ` ${item.dataset.label}  ${formatLoss(item.parsed.y)}`,
        },
      },
    },
  };
}

/** Options of a series chart (the datasets of `seriesDatasets`). */
export function seriesOptions(axis, yTitle) {
  const options = chartOptions(axis, yTitle);
  // the band's edges are context, not values to read one by one
  options.plugins.tooltip.filter = (item) => item.datasetIndex < 2;
  return options;
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
