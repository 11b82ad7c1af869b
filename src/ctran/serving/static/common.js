// Helpers both pages use (index.html: ctran serve; library.html: ctran annotate), loaded before each page's
// own script.
"use strict";

const el = (id) => document.getElementById(id);

async function api(path, options = {}) {
  const response = await fetch(path, options);
  const type = response.headers.get("content-type") || "";
  const body = type.includes("application/json") ? await response.json() : null;
  if (!response.ok) {
    const error = new Error((body && body.error) || `${response.status} ${response.statusText}`);
    error.status = response.status;
    throw error;
  }
  return body;
}

function say(message, isError = false) {
  const status = el("status");
  status.textContent = message;
  status.classList.toggle("error", isError);
}

function percent(p) {
  return p >= 0.995 ? "100%" : p < 0.005 ? "0%" : `${(100 * p).toFixed(p < 0.1 || p > 0.9 ? 1 : 0)}%`;
}

// A label's three states: what the radio buttons say, in their order.
const STATES = [
  { value: "unknown", text: "?", title: "not known" },
  { value: "yes", text: "Yes", title: "present" },
  { value: "no", text: "No", title: "absent" },
];

// The three-state control of one label (? / Yes / No radio buttons named `prefix`); `onChange(value)` is
// called with "unknown", "yes" or "no". Returns the fieldset and its radios by value.
function triState(name, prefix, onChange) {
  const group = document.createElement("fieldset");
  group.className = "tri";
  const legend = document.createElement("legend");
  legend.textContent = `Is ${name} in the image?`;
  group.append(legend);
  const radios = {};
  for (const state of STATES) {
    const input = document.createElement("input");
    input.type = "radio";
    input.name = prefix;
    input.id = `${prefix}-${state.value}`;
    input.value = state.value;
    input.addEventListener("change", () => onChange(state.value));
    const label = document.createElement("label");
    label.htmlFor = input.id;
    label.className = state.value;
    label.textContent = state.text;
    label.title = `${name}: ${state.title}`;
    group.append(input, label);
    radios[state.value] = input;
  }
  return { group, radios };
}
