// iad-agent web UI: a little vanilla JS over the HTTP API (no build step).
"use strict";

const $ = (selector, root = document) => root.querySelector(selector);

// An element with attributes and children (strings become text nodes: never parsed as HTML).
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value !== null && value !== undefined && value !== false) node.setAttribute(key, value);
  }
  for (const child of children.flat(Infinity)) {
    if (child !== null && child !== undefined && child !== false) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

async function callApi(url, options = {}) {
  const response = await fetch(url, { credentials: "same-origin", ...options });
  const isJson = (response.headers.get("content-type") || "").includes("json");
  const body = response.status === 204 ? null : isJson ? await response.json() : await response.text();
  if (!response.ok) {
    const detail = body && body.detail !== undefined ? body.detail : body;
    throw new Error(typeof detail === "string" ? detail : JSON.stringify(detail));
  }
  return body;
}

function setupDrop(label) {
  const input = $("input[type=file]", label);
  const chosen = $(".chosen", label);
  const show = () => {
    const names = Array.from(input.files).map((f) => f.name);
    chosen.textContent = names.length ? `${names.length} file${names.length > 1 ? "s" : ""}: ${names.join(", ")}` : "";
  };
  input.addEventListener("change", show);
  for (const type of ["dragenter", "dragover"]) {
    label.addEventListener(type, (e) => { e.preventDefault(); label.classList.add("over"); });
  }
  for (const type of ["dragleave", "drop"]) {
    label.addEventListener(type, (e) => { e.preventDefault(); label.classList.remove("over"); });
  }
  label.addEventListener("drop", (e) => {
    if (e.dataTransfer && e.dataTransfer.files.length) { input.files = e.dataTransfer.files; show(); }
  });
}

const VERDICT = { true: ["anomalous", "ANOMALOUS"], false: ["normal", "NORMAL"], null: ["none", "NO ANSWER"] };

function verdict(value) {
  const [cls, label] = VERDICT[String(value)] || VERDICT.null;
  return el("span", { class: `verdict ${cls}` }, label);
}

function figure(src, caption) {
  return el("figure", {}, el("img", { src, alt: caption, loading: "lazy" }), el("figcaption", {}, caption));
}

function fmt(x, digits = 4) {
  return x === null || x === undefined ? "—" : Number(x).toPrecision(digits);
}

function renderStep(step, i) {
  const li = el("li", { class: "step" }, el("h4", {}, `Step ${i + 1}`));
  if (step.thought) li.append(el("p", { class: "thought" }, step.thought));
  step.tool_calls.forEach((call, j) => {
    const obs = step.observations[j] || { text: "", images: [] };
    li.append(el("p", {}, "→ ", el("code", {}, `${call.name}(${JSON.stringify(call.arguments)})`)));
    li.append(el("p", { class: obs.error ? "error" : "observation" }, obs.text));
    if (obs.images && obs.images.length) {
      li.append(el("div", { class: "figures" }, obs.images.map((img) => figure(img.url, img.caption || call.name))));
    }
  });
  for (const problem of step.parse_errors || []) li.append(el("p", { class: "error" }, problem));
  if (step.answer) li.append(el("p", {}, "Answer: ", el("code", {}, JSON.stringify(step.answer))));
  return li;
}

function renderInspection(box, d) {
  const facts = [
    ["Score / threshold", `${fmt(d.score)} / ${fmt(d.threshold)}`],
    ["Confidence", d.confidence === null ? "—" : `${Math.round(d.confidence * 100)} %`],
    ["Defect type", d.defect_type || "—"],
    ["Box", d.box ? d.box.map((v) => v.toFixed(3)).join(", ") : "—"],
    ["Product", `${d.product} (version ${d.product_version})`],
    ["Policy", d.policy],
    ["Time", `${Math.round(d.elapsed_ms)} ms`],
  ];
  box.replaceChildren(
    el("h2", {}, `Result for ${d.filename || d.image}`),
    el("p", { class: "big" }, verdict(d.anomaly_present)),
    el("dl", { class: "facts" }, facts.map(([k, v]) => [el("dt", {}, k), el("dd", {}, v)])),
    el("p", {}, el("b", {}, "Reason. "), d.reason),
    (d.warnings || []).map((w) => el("p", { class: "warning" }, `⚠ ${w}`)),
    el("div", { class: "figures" }, figure(d.urls.overlay, "heat map overlay with box"), figure(d.urls.image, "inspected image")),
    el("p", {}, el("a", { href: d.urls.report }, "HTML report"), " · ", el("a", { href: d.urls.heatmap }, "heat map PNG"),
      " · ", el("a", { href: d.urls.self }, "JSON"), " · ", el("a", { href: d.urls.page }, "permalink")),
    el("h3", {}, "Trace"),
    el("ol", { class: "trace" }, d.trace.steps.map(renderStep)),
  );
}

function busy(box, on, text) {
  box.setAttribute("aria-busy", on ? "true" : "false");
  if (on) box.replaceChildren(el("p", { class: "working" }, text));
}

function initInspect() {
  const form = $("#inspect-form");
  if (!form) return;
  setupDrop($("#inspect-drop"));
  const box = $("#result");
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    busy(box, true, "Inspecting…");
    try {
      const d = await callApi("/api/inspect", { method: "POST", body: new FormData(form) });
      renderInspection(box, d);
    } catch (err) {
      box.replaceChildren(el("p", { class: "error", role: "alert" }, err.message));
    } finally {
      box.setAttribute("aria-busy", "false");
    }
  });
}

function initRegister() {
  const form = $("#register-form");
  if (!form) return;
  setupDrop($("#register-drop"));
  const status = $("#register-status");
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const data = new FormData(form);
    if (!$("#reg-files").files.length) data.delete("files");
    if (!data.get("folder")) data.delete("folder");
    status.className = "working";
    status.textContent = "Registering… (reading the good images and setting the threshold)";
    try {
      const p = await callApi("/api/products", { method: "POST", body: data });
      status.className = "ok";
      status.replaceChildren(`Registered ${p.name}: ${p.images} good images, threshold ${fmt(p.threshold)} `,
        `(${(p.fpr * 100).toFixed(1)} % false alarms). `, el("a", { href: `/products/${p.name}` }, "Open the product"),
        " · ", el("a", { href: `/?product=${encodeURIComponent(p.name)}` }, "inspect"));
    } catch (err) {
      status.className = "error";
      status.textContent = err.message;
    }
  });
}

function initProduct() {
  const data = $("#product-data");
  if (!data) return;
  const product = JSON.parse(data.textContent);
  const slider = $("#fpr-slider");
  const out = $("#threshold-out");
  const curve = product.curve;
  let best = 0;
  curve.forEach((c, i) => { if (Math.abs(Math.log(c.fpr / product.fpr)) < Math.abs(Math.log(curve[best].fpr / product.fpr))) best = i; });
  slider.value = best;
  const show = () => {
    const c = curve[Number(slider.value)];
    const flagged = product.good_scores.filter((s) => s > c.threshold).length;
    const text = `${(c.fpr * 100).toFixed(c.fpr < 0.01 ? 2 : 1)} % — 1 in ${Math.round(1 / c.fpr)} good parts flagged; ` +
      `threshold ${fmt(c.threshold)}; ${flagged} of ${product.good_scores.length} held-out good images above it`;
    out.textContent = text;
    slider.setAttribute("aria-valuetext", text);
  };
  slider.addEventListener("input", show);
  show();
  const status = $("#threshold-status");
  $("#threshold-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    status.className = "working";
    status.textContent = "Saving…";
    try {
      const p = await callApi(`/api/products/${encodeURIComponent(product.name)}`, {
        method: "PATCH", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ fpr: curve[Number(slider.value)].fpr }),
      });
      $("#current-threshold").textContent = fmt(p.threshold);
      status.className = "ok";
      status.textContent = `Saved: threshold ${fmt(p.threshold)}, ${p.meaning}.`;
    } catch (err) {
      status.className = "error";
      status.textContent = err.message;
    }
  });
  $("#delete-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    if (!window.confirm(`Delete ${product.name}? Its inspections stay in the history.`)) return;
    await callApi(`/api/products/${encodeURIComponent(product.name)}`, { method: "DELETE" });
    window.location.href = "/products";
  });
}

function batchRow(b) {
  const running = b.status === "running" || b.status === "queued";
  const actions = el("td");
  const act = (label, path) => {
    const button = el("button", { type: "button", class: "small" }, label);
    button.addEventListener("click", async () => { await callApi(`/api/batches/${b.id}/${path}`, { method: "POST" }); refreshBatches(); });
    return button;
  };
  if (running) actions.append(act("Cancel", "cancel"));
  else if (b.status !== "done") actions.append(act("Resume", "resume"));
  actions.append(" ", el("a", { href: b.urls.history }, "results"));
  return el("tr", { "data-batch": b.id, "data-status": b.status },
    el("td", {}, b.created_at), el("td", {}, b.product), el("td", { class: "path" }, b.folder),
    el("td", {}, el("progress", { max: b.total, value: b.processed, "aria-label": `progress of batch ${b.id}` }),
      ` ${b.processed} / ${b.total}`),
    el("td", {}, b.anomalous), el("td", {}, b.failed),
    el("td", {}, el("span", { class: `status ${b.status}` }, b.status), b.message ? el("small", {}, ` ${b.message}`) : null),
    actions);
}

let batchTimer = null;

async function refreshBatches(initial) {
  const batches = initial || await callApi("/api/batches");
  $("#batch-table tbody").replaceChildren(...batches.map(batchRow));
  clearTimeout(batchTimer);
  if (batches.some((b) => b.status === "running" || b.status === "queued")) batchTimer = setTimeout(() => refreshBatches(), 1000);
}

function initBatches() {
  const data = $("#batches-data");
  if (!data) return;
  refreshBatches(JSON.parse(data.textContent));
  const form = $("#batch-form");
  const status = $("#batch-status");
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const body = Object.fromEntries(new FormData(form));
    status.className = "working";
    status.textContent = "Starting…";
    try {
      const b = await callApi("/api/batches", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
      status.className = "ok";
      status.textContent = `Started: ${b.total} images of ${b.product}.`;
      refreshBatches();
    } catch (err) {
      status.className = "error";
      status.textContent = err.message;
    }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  initInspect();
  initRegister();
  initProduct();
  initBatches();
  const stored = $("#inspection-data");
  if (stored) renderInspection($("#result"), JSON.parse(stored.textContent));
});
