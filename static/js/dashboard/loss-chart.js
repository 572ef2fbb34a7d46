// The loss chart and what the page says of the loss: the tiles (latest and best loss, points
// stored, last step) and the line under the chart (points shown, of how many, which steps).
// Every step is counted once, whether it came from the graph, the socket or a backfill.

import { formatInt, formatLoss } from "./live.js";
import { SeriesChart } from "./series-chart.js";

const COUNTED_LIMIT = 200_000; // past this only the steps on the chart stay remembered

export class LossChart extends SeriesChart {
  /** `tiles`: the elements the numbers go to (`latest`, `best`, `count`, `lastStep`, `info`);
   * `initial`: the page's figures before any point arrives (`points`, `latest_loss`,
   * `best_loss`). */
  constructor(parts, view, tiles, initial) {
    super("loss", parts, view);
    this.tiles = tiles;
    this.counted = new Set(); // steps received, in view or not
    this.lastStep = -1; // the highest step seen, in view or not: where a backfill resumes
    this.count = initial.points;
    this.latest = initial.latest_loss;
    this.best = initial.best_loss;
    this.downsampled = false;
    this.inView = 0;
  }

  show(graph) {
    const kept = super.show(graph);
    const covered = graph.to_step ?? -1;
    this.downsampled = graph.downsampled;
    this.inView = graph.raw_points + kept;
    for (const p of this.points) this.counted.add(p.x);
    if (!this.view.zoom.range) {
      this.count = Math.max(this.count, this.inView);
      const lowest = Math.min(...this.points.map((p) => p.y));
      if (this.points.length) this.best = Math.min(this.best ?? lowest, lowest);
      if (covered >= this.lastStep && graph.points.length) this.latest = graph.points.at(-1).loss;
    }
    this.lastStep = Math.max(this.lastStep, covered);
    this.showNumbers();
    return kept;
  }

  add(points) {
    const fresh = [];
    for (const point of points) {
      const { step, loss } = point;
      if (this.counted.has(step)) continue;
      this.counted.add(step);
      fresh.push(point);
      this.count += 1;
      this.best = this.best === null ? loss : Math.min(this.best, loss);
      if (step > this.lastStep) {
        this.lastStep = step;
        this.latest = loss;
      }
    }
    if (!fresh.length) return 0;
    const added = super.add(fresh);
    this.inView += added;
    if (this.counted.size > COUNTED_LIMIT) this.counted = new Set(this.steps);
    this.showNumbers();
    return added;
  }

  showNumbers() {
    const { tiles } = this;
    const zoom = this.view.zoom.range;
    tiles.latest.textContent = formatLoss(this.latest);
    tiles.best.textContent = formatLoss(this.best);
    tiles.count.textContent = formatInt(this.count);
    tiles.lastStep.textContent = this.lastStep >= 0 ? formatInt(this.lastStep) : "—";
    const shown = `${formatInt(this.points.length)} points shown`;
    const sampled = this.downsampled
      ? ` of ${formatInt(this.inView)} (downsampled, min/max of each bucket kept)`
      : "";
    const range = zoom
      ? ` · steps ${formatInt(zoom.from)}–${zoom.to === null ? "latest" : formatInt(zoom.to)}`
      : "";
    tiles.info.textContent = shown + sampled + range;
  }
}
