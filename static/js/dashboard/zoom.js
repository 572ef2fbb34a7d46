// Zooming into a step range: one range for every chart of a page, set by dragging across any
// of its charts or by the page's from/to form, and cleared by its reset button. Whoever owns
// the charts re-queries them for the range (`onChange`); this module only keeps and asks it.

const MIN_DRAG_PX = 6; // less is a click, not a selection

/**
 * Drag-to-select on a Chart.js chart: shows `selection` (an absolutely placed element over the
 * chart) while dragging inside the chart area, then calls `onSelect(from, to)` with the x values
 * (in the x scale's units) under the two ends, `from <= to`.
 */
export function dragToZoom(chart, selection, onSelect) {
  const canvas = chart.canvas;
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
    if (b - a < MIN_DRAG_PX) return;
    const scale = chart.scales.x;
    onSelect(scale.getValueForPixel(a), scale.getValueForPixel(b));
  });
}

/** Whole steps covering the x values `from`..`to` of a step axis. */
export function stepsCovering(from, to) {
  return [Math.max(0, Math.floor(from)), Math.ceil(to)];
}

/**
 * A page's step range: `range` is null (everything) or `{from, to}`, where `to === null`
 * follows the live end. `elements` are the zoom form, its from and to inputs and its reset
 * button; `onChange(range)` runs after every change, `onError(message)` on a range it refuses.
 */
export class StepZoom {
  constructor({ form, from, to, reset }, { onChange, onError }) {
    this.range = null;
    this.inputs = { from, to, reset };
    this.onChange = onChange;
    this.onError = onError;
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      if (from.value === "" && to.value === "") this.reset();
      else this.set(from.value === "" ? 0 : Number(from.value), to.value === "" ? null : Number(to.value));
    });
    reset.addEventListener("click", () => this.reset());
  }

  set(from, to) {
    if (to !== null && to < from) {
      this.onError("The zoom range must end after it starts.");
      return;
    }
    this.range = { from, to };
    this.inputs.from.value = from;
    this.inputs.to.value = to ?? "";
    this.inputs.reset.disabled = false;
    this.onChange(this.range);
  }

  reset() {
    this.range = null;
    this.inputs.from.value = "";
    this.inputs.to.value = "";
    this.inputs.reset.disabled = true;
    this.onChange(this.range);
  }

  includes(step) {
    const range = this.range;
    return !range || (step >= range.from && (range.to === null || step <= range.to));
  }

  /** True unless the range ends at a fixed step: new points at the live end are in view. */
  get followsLiveEnd() {
    return this.range === null || this.range.to === null;
  }

  /** Limits a chart's x axis to the range. Over time the chart's points are already just what
   * the graph answered for the zoomed steps, so only a step axis is limited. */
  applyLimits(chart, axis = "step") {
    const byStep = axis === "step" && this.range;
    chart.options.scales.x.min = byStep ? this.range.from : undefined;
    chart.options.scales.x.max = byStep ? (this.range.to ?? undefined) : undefined;
  }
}
