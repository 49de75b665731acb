// The dashboard panel: the server's `Metrics` pushes (every 2 s) shown as
// numbers and as one SVG line chart per metric over the last two minutes
// (60 samples).

import { byId, clock } from "./dom";
import type { DashboardConnection, Metrics } from "./generated/dashboard";

const SAMPLES = 60;
const WIDTH = 300;
const HEIGHT = 70;
const SVG = "http://www.w3.org/2000/svg";

interface Series {
  id: string;
  value: (sample: Metrics) => number | null;
  format: (value: number | null) => string;
}

const SERIES: Array<Series> = [
  { id: "connections", value: (s) => s.activeConnections, format: (v) => String(v ?? 0) },
  { id: "rate", value: (s) => s.messagesPerSecond, format: (v) => (v ?? 0).toFixed(1) },
  { id: "p99", value: (s) => s.p99LatencyMs, format: (v) => (v === null ? "–" : v.toFixed(2)) },
];

export class DashboardPanel {
  #samples: Array<Metrics> = [];
  readonly #updated = byId("metric-updated");
  readonly #uptime = byId("metric-uptime");
  readonly #count = byId("metric-samples");

  attach(hub: DashboardConnection): void {
    hub.on("metrics", (sample) => this.#add(sample));
  }

  #add(sample: Metrics): void {
    this.#samples.push(sample);
    if (this.#samples.length > SAMPLES) this.#samples.shift();
    for (const series of SERIES) {
      byId(`metric-${series.id}`).textContent = series.format(series.value(sample));
      this.#draw(series);
    }
    this.#updated.textContent = clock(sample.timestamp);
    this.#uptime.textContent = `${sample.uptimeSeconds} s`;
    this.#count.textContent = String(this.#samples.length);
  }

  #draw(series: Series): void {
    const chart = byId(`chart-${series.id}`) as unknown as SVGSVGElement;
    const values = this.#samples.map(series.value);
    const top = Math.max(1e-9, ...values.map((v) => v ?? 0));
    const scale = top * 1.15;
    // The chart spans the samples so far, up to the last SAMPLES of them.
    const step = WIDTH / Math.max(values.length - 1, 1);
    const offset = values.length === 1 ? 1 : 0;
    const points = values
      .map((v, i) => `${((offset + i) * step).toFixed(1)},${(HEIGHT - ((v ?? 0) / scale) * HEIGHT).toFixed(1)}`)
      .join(" ");

    const line = document.createElementNS(SVG, "polyline");
    line.setAttribute("points", points);
    line.setAttribute("class", "line");
    const area = document.createElementNS(SVG, "polygon");
    const first = (offset * step).toFixed(1);
    area.setAttribute("points", `${first},${HEIGHT} ${points} ${WIDTH},${HEIGHT}`);
    area.setAttribute("class", "area");
    const grid = document.createElementNS(SVG, "line");
    const y = (HEIGHT - (top / scale) * HEIGHT).toFixed(1);
    for (const [k, v] of [["x1", "0"], ["x2", String(WIDTH)], ["y1", y], ["y2", y]]) grid.setAttribute(k, v);
    grid.setAttribute("class", "grid");
    const label = document.createElementNS(SVG, "title");
    label.textContent = `highest: ${series.format(top)}`;
    chart.replaceChildren(label, area, line, grid);
  }
}
