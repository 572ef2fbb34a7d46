// Every chart of the simulation page: loss on top, one small chart for each other series, all
// over one step range. A load asks the graph endpoint for all of them at once
// (`graph?metric=loss,lr,…`); live points go to the chart of their metric; after a reconnect
// the loss chart backfills from the stream endpoint and the others are reloaded whole.

import { debounce, getJSON, withQuery } from "./live.js";
import { graphSeries } from "./series.js";
import { SeriesChart } from "./series-chart.js";

const GRAPH_POINTS = 2000;
const MAX_METRICS_PER_GRAPH = 10; // the graph endpoint's limit per request
const LIVE_POINTS_LIMIT = 20_000; // past this on one chart, all reload a downsampled view
const BACKFILL_PAGES = 3; // further behind than this: reload the charts instead of paging

export class RunCharts {
  /**
   * `loss`: the LossChart; `view`: what the charts share (see SeriesChart); `newCard(metric)`
   * places a card for a new series and returns its parts; `onError` shows a failed load.
   */
  constructor({ graphUrl, streamUrl }, { loss, view, newCard, onError }) {
    this.urls = { graph: graphUrl, stream: streamUrl };
    this.loss = loss;
    this.view = view;
    this.newCard = newCard;
    this.onError = onError;
    this.others = new Map(); // metric -> SeriesChart, every series but loss
    this.loads = 0;
    this.backfilling = false;
    this.backfillAgain = false;
    this.reloadSoon = debounce(() => this.load().catch(onError), 500);
  }

  get all() {
    return [this.loss, ...this.others.values()];
  }

  /** Several series of the graph endpoint in as few requests as it allows, by metric. */
  async fetchGraphs(metrics) {
    const zoom = this.view.zoom.range;
    const requests = [];
    for (let i = 0; i < metrics.length; i += MAX_METRICS_PER_GRAPH) {
      const url = withQuery(this.urls.graph, {
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
  async load() {
    const load = ++this.loads;
    const graphs = await this.fetchGraphs(this.all.map((chart) => chart.metric));
    if (load !== this.loads) return; // a newer load (zoom, reset) replaced this one
    for (const chart of this.all) {
      if (graphs.has(chart.metric)) chart.show(graphs.get(chart.metric));
    }
  }

  /** Only these series from the graph endpoint (a new series, or after a reconnect). */
  async loadSeries(metrics) {
    if (!metrics.length) return;
    const graphs = await this.fetchGraphs(metrics);
    for (const [metric, graph] of graphs) this.others.get(metric)?.show(graph);
  }

  /** Charts for series not on the page yet; returns the ones it added. */
  addSeries(metrics) {
    const added = [];
    for (const metric of metrics) {
      if (metric === "loss" || this.others.has(metric)) continue;
      this.others.set(metric, new SeriesChart(metric, this.newCard(metric), this.view));
      added.push(metric);
    }
    return added;
  }

  addTo(chart, points) {
    chart.add(points);
    if (chart.points.length > LIVE_POINTS_LIMIT) this.reloadSoon();
  }

  /** A socket message's points, each naming its metric (older servers left `loss` unnamed). */
  addLive(points) {
    const byMetric = new Map();
    for (const point of points) {
      const metric = point.metric || "loss";
      if (!byMetric.has(metric)) byMetric.set(metric, []);
      byMetric.get(metric).push(point);
    }
    this.addTo(this.loss, byMetric.get("loss") ?? []);
    byMetric.delete("loss");
    const added = this.addSeries(byMetric.keys());
    for (const [metric, metricPoints] of byMetric) this.addTo(this.others.get(metric), metricPoints);
    // Points of a new series stored before this message (another request) come from the graph.
    if (added.length) this.loadSeries(added).catch(this.onError);
  }

  /** (Re)connected, with the run's series as the socket's snapshot names them. */
  connected(metrics, { again }) {
    this.backfill().catch(this.onError);
    const reload = again ? [...this.others.keys()] : [];
    const added = this.addSeries(metrics);
    this.loadSeries([...reload, ...added]).catch(this.onError);
  }

  /** Every loss point stored since the last one seen, page by page. */
  async backfill() {
    if (this.backfilling) {
      this.backfillAgain = true;
      return;
    }
    this.backfilling = true;
    try {
      do {
        this.backfillAgain = false;
        let since = this.loss.lastStep;
        for (let pages = 1; ; pages += 1) {
          const page = await getJSON(withQuery(this.urls.stream, { since_step: since }));
          this.addTo(this.loss, page.points);
          since = page.last_step;
          if (!page.has_more) break;
          if (pages >= BACKFILL_PAGES && !this.view.zoom.range) {
            await this.load(); // far behind: a downsampled chart, then only the rest
            since = this.loss.lastStep;
            pages = 0;
          }
        }
      } while (this.backfillAgain);
    } finally {
      this.backfilling = false;
    }
  }

  setAxis(axis) {
    this.view.axis = axis;
    for (const chart of this.all) chart.setAxis(axis);
  }

  setSmoothing(smoothing) {
    this.view.smoothing = smoothing;
    for (const chart of this.all) chart.draw();
  }
}
