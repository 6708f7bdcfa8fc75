// chart.js: per-minute bar charts drawn as SVG by hand: one rect a minute, carrying
// data-minute and data-value, with a <title> tooltip. No library, no canvas, no inline style.

import { el, fmtTime, svg } from "./dom.js";

const WIDTH = 600; // viewBox units; CSS stretches the chart to its box
const HEIGHT = 100;

/** A figure with a caption and the bar chart svg[data-chart=name] of `points` ([{t, value}],
 * oldest first); `label` names what is counted ("delivered"). */
export function barChart(name, label, points) {
  const values = points.map((p) => Number(p.value) || 0);
  const peak = Math.max(1, ...values);
  const total = values.reduce((a, b) => a + b, 0);
  const step = WIDTH / Math.max(points.length, 1);
  const bars = points.map((point, i) => {
    const value = values[i];
    const height = value ? Math.max(1, (value / peak) * (HEIGHT - 4)) : 1;
    return svg(
      "rect",
      {
        class: value ? "bar" : "bar zero",
        x: (i * step + step * 0.1).toFixed(2),
        y: (HEIGHT - height).toFixed(2),
        width: (step * 0.8).toFixed(2),
        height: height.toFixed(2),
        "data-minute": point.t,
        "data-value": point.value ?? "",
      },
      svg("title", {}, `${fmtTime(point.t)}: ${value} ${label}`),
    );
  });
  const chart = svg(
    "svg",
    {
      class: "chart chart-" + name,
      "data-chart": name,
      viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
      preserveAspectRatio: "none",
      role: "img",
      "aria-label": `${label} per minute over the last hour: ${total} in all, at most ${peak} a minute`,
    },
    svg("line", { class: "axis", x1: 0, y1: HEIGHT - 0.5, x2: WIDTH, y2: HEIGHT - 0.5 }),
    bars,
  );
  const first = points[0]?.t;
  return el(
    "figure",
    { class: "figure", "data-figure": name },
    el(
      "figcaption",
      {},
      el("strong", {}, label),
      el("span", { class: "muted", "data-total": total }, ` ${total} in the hour, peak ${values.length ? Math.max(...values) : 0}/min`),
    ),
    chart,
    el(
      "div",
      { class: "axis-labels muted" },
      el("span", {}, first ? fmtTime(first).slice(11) : ""),
      el("span", {}, "now"),
    ),
  );
}
