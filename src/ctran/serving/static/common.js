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
