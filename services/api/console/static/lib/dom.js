// Building DOM nodes without innerHTML: every text goes in as text, so nothing from the API is ever parsed as HTML.

/**
 * h("div", {class: "card", onclick: fn, "aria-label": "x"}, child, "text", [more])
 * Attributes: `class`, `on<event>` (a function), `dataset` (an object), booleans (true sets, false omits).
 */
export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "class") node.className = value;
    else if (key === "value" && "value" in node) node.value = value;
    else if (value === true) node.setAttribute(key, "");
    else node.setAttribute(key, String(value));
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(node, child);
    else node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replace everything in `node` with `children`. */
export function replace(node, ...children) {
  node.replaceChildren();
  append(node, children);
  return node;
}

/** A labelled horizontal bar: `fraction` 0..1 of the whole, `tone` ok|warn|bad. */
export function bar(fraction, label, tone = "ok") {
  const pct = Math.max(0, Math.min(1, Number.isFinite(fraction) ? fraction : 0)) * 100;
  return h("div", {class: `bar bar-${tone}`, role: "meter", "aria-label": label,
                   "aria-valuemin": "0", "aria-valuemax": "100", "aria-valuenow": pct.toFixed(0)},
    h("span", {class: "bar-fill", style: `width:${pct.toFixed(1)}%`}));
}
