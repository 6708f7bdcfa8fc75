// dom.js: building the page from values. Text goes in as text nodes only, never as markup,
// and no element gets a style attribute (the Content-Security-Policy refuses inline style).

const SVG_NS = "http://www.w3.org/2000/svg";

function apply(node, attrs) {
  for (const [key, value] of Object.entries(attrs ?? {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "style") throw new Error("no style attribute: use a class (CSP)");
    if (key.startsWith("on")) {
      if (typeof value !== "function") throw new Error(key + " must be a function");
      node.addEventListener(key.slice(2), value);
    } else if (key === "value" && "value" in node && !(node instanceof SVGElement)) {
      node.value = String(value);
    } else if (key === "class") {
      node.setAttribute("class", Array.isArray(value) ? value.filter(Boolean).join(" ") : value);
    } else {
      node.setAttribute(key, value === true ? "" : String(value));
    }
  }
}

function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** An HTML element: attrs are class, id, data-*, type, value, disabled, ... and on<event>
 * functions; children are nodes or strings (as text). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  apply(node, attrs);
  return append(node, children);
}

/** An SVG element, as el(). */
export function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  apply(node, attrs);
  return append(node, children);
}

export function clear(node) {
  node.replaceChildren();
  return node;
}

/** An RFC 3339 time as "2026-12-01 17:42:05 UTC"; "—" for null. */
export function fmtTime(value) {
  if (value === null || value === undefined || value === "") return "—";
  const date = new Date(value);
  if (Number.isNaN(date.getTime())) return String(value);
  return date.toISOString().replace("T", " ").replace(/\.\d+Z$|Z$/, " UTC");
}

/** Milliseconds as "4.2 ms", "310 ms", "1.25 s" or "3 min 5 s"; "—" for null. */
export function fmtMs(value) {
  if (value === null || value === undefined || value === "") return "—";
  const ms = Number(value);
  if (ms < 10) return ms.toFixed(1) + " ms";
  if (ms < 1000) return Math.round(ms) + " ms";
  if (ms < 60000) return (ms / 1000).toFixed(2) + " s";
  return Math.floor(ms / 60000) + " min " + Math.round((ms % 60000) / 1000) + " s";
}

let toastTimer = 0;

/** Say `text` in #toast (role=status, so screen readers read it too) for a few seconds. */
export function toast(text) {
  const box = document.getElementById("toast");
  if (!box) return;
  box.textContent = text;
  box.classList.add("show");
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => box.classList.remove("show"), 8000);
}
