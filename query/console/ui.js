// Building the page: an element helper, toasts and a few shared pieces.

// h("button", {class: "x", onclick: f, "aria-label": "…"}, child, "text", …): an element.
// Children may be elements, strings, numbers, null (skipped) or arrays of them.
export function h(tag, attrs, ...children) {
  const svg = tag.startsWith("svg:");
  const el = svg
    ? document.createElementNS("http://www.w3.org/2000/svg", tag.slice(4))
    : document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(el.dataset, value);
    else if (name === "value" && !svg) el.value = value;
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : String(child));
  }
}

// Replaces what `el` holds with `children`.
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

// A message in the corner that leaves by itself (errors stay 10 s, the rest 4 s).
export function toast(message, kind = "error") {
  const box = document.getElementById("toasts");
  const close = h("button", { type: "button", "aria-label": "Dismiss", onclick: () => item.remove() }, "×");
  const item = h("div", { class: `toast ${kind}`, role: kind === "error" ? "alert" : null }, h("p", {}, message), close);
  // One toast per message: a panel refreshing every 5 s does not pile them up.
  for (const old of box.querySelectorAll(".toast p")) if (old.textContent === message) old.parentElement.remove();
  box.append(item);
  setTimeout(() => item.remove(), kind === "error" ? 10_000 : 4_000);
}

// A labelled <select> of [value, text] pairs.
export function select(label, id, options, current, onchange) {
  return h(
    "span",
    { class: "control" },
    h("label", { for: id }, label),
    h(
      "select",
      { id, onchange: (e) => onchange(e.target.value) },
      options.map(([value, text]) => h("option", { value, selected: value === current }, text)),
    ),
  );
}

// Tab buttons; `chosen` is the selected one's value.
export function tabs(label, options, chosen, onchoose) {
  return h(
    "div",
    { class: "tabs", role: "tablist", "aria-label": label },
    options.map(([value, text]) =>
      h(
        "button",
        {
          type: "button",
          role: "tab",
          "aria-selected": value === chosen ? "true" : "false",
          onclick: () => onchoose(value),
        },
        text,
      ),
    ),
  );
}

// Saves `text` as a file named `name`.
export function download(name, text, type = "text/csv") {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = h("a", { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}
