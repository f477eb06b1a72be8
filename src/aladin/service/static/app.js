// The search page: text or image queries against /api, results as a grid of focusable buttons, and a dialog
// that explains a match with the alignment head's word × region similarities drawn over the image.
"use strict";

const $ = (selector) => document.querySelector(selector);
const RESULTS = 24;
const HEAT_CELLS = 48;
const TITLE_CHARS = 80; // a longer query is cut short in the results title
// near-duplicate photos show as one result with an "N similar" badge, where the model has a threshold for them
let COLLAPSE = "";
const state = { query: "", opener: null, imageId: null, image: null, explanation: null, word: 0, request: 0, search: 0 };

function setStatus(element, text, isError = false) {
  element.textContent = text;
  element.classList.toggle("error", isError);
}

function shorten(text) {
  return text.length > TITLE_CHARS ? `${text.slice(0, TITLE_CHARS - 1)}…` : text;
}

async function getJSON(url, options = {}) {
  const response = await fetch(url, options);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail ?? response.statusText);
    throw new Error(`${response.status}: ${detail}`);
  }
  return body;
}

// Checked: the model's own re-rank setting (chosen on validation when it was trained); unchecked: kNN only.
function rerankParam() {
  return $("#rerank").checked ? "" : "&rerank=0";
}

// The filter box (see the README for its syntax): empty means every photo.
function whereParam() {
  const where = $("#where").value.trim();
  return where ? `&where=${encodeURIComponent(where)}` : "";
}

async function runSearch(url, options, label) {
  const status = $("#status");
  const search = ++state.search; // a slower, older search must not overwrite a newer one's results
  setStatus(status, "Searching…");
  $("#results").replaceChildren();
  try {
    const started = performance.now();
    const result = await getJSON(url, options);
    if (search !== state.search) return;
    const ms = Math.round(performance.now() - started);
    const how = result.rerank ? "re-ranked" : "kNN only";
    const warning = result.warning ? `. Note: ${result.warning}` : "";
    const hits = confidentHits(result.hits);
    if (hits.length === 0 && result.hits.length > 0) {
      setStatus(status, `no confident match for ${label}: none of the ${result.hits.length} results is a ` +
        `${$("#min-score").selectedOptions[0].text} or better (${how}, ${ms} ms)${warning}`);
      return;
    }
    setStatus(status, `${hits.length} results for ${label} (${how}, ${ms} ms)${warning}`);
    $("#results").replaceChildren(...hits.map(renderHit));
  } catch (error) {
    if (search === state.search) setStatus(status, error.message, true);
  }
}

// Also run for a page opened as /?q=...; the address then names the search shown, so it can be shared.
function searchText(event) {
  event?.preventDefault();
  state.query = $("#query").value;
  const q = encodeURIComponent(state.query);
  history.replaceState(null, "", `?q=${q}${whereParam()}`);
  const url = `/api/search?q=${q}&k=${RESULTS}${rerankParam()}${whereParam()}${COLLAPSE}`;
  return runSearch(url, {}, `“${shorten(state.query)}”`);
}

function searchUpload() {
  const file = $("#upload").files[0];
  if (!file) return undefined;
  const form = new FormData();
  form.append("file", file);
  state.query = "";
  const url = `/api/search/image?target=${$("#target").value}&k=${RESULTS}${rerankParam()}${whereParam()}${COLLAPSE}`;
  return runSearch(url, { method: "POST", body: form }, shorten(file.name));
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function renderHit(hit) {
  const name = hit.caption ?? hit.external_id;
  const button = element("button", "result");
  button.type = "button";
  button.dataset.id = hit.id;
  const img = element("img");
  img.src = hit.thumbnail;
  img.alt = "";
  img.loading = "lazy";
  button.append(img, element("span", "score", hit.score.toFixed(3)), element("span", "label", name));
  let said = `score ${hit.score.toFixed(3)}`;
  if (hit.confidence !== null && hit.confidence !== undefined) {
    said = `${Math.round(hit.confidence * 100)}% match`;
    button.append(element("span", "confidence", said));
  }
  if (hit.similar) {
    button.append(similarBadge(hit.similar));
    said = `and ${hit.similar} similar, ${said}`;
  }
  button.setAttribute("aria-label", `${name}, ${said}: explain the match`);
  button.addEventListener("click", () => openDetail(hit, button));
  const full = element("a", "full-size", "full size");
  full.href = hit.image;
  full.target = "_blank";
  full.rel = "noopener";
  const item = element("li");
  item.append(button, full);
  return item;
}

async function openDetail(hit, opener) {
  state.opener = opener;
  state.imageId = hit.image_id;
  state.explanation = null;
  $("#full-size").href = hit.image;
  $("#words").replaceChildren();
  $("#captions").replaceChildren();
  setStatus($("#explain-status"), "");
  $("#detail").showModal();
  const image = new Image();
  image.src = `${hit.thumbnail}?size=512`;
  state.image = image;
  image.addEventListener("load", draw);
  try {
    const item = await getJSON(`/api/items/${hit.image_id}`);
    $("#detail-title").textContent = `Why it matches: ${item.external_id}`;
    $("#captions").replaceChildren(...item.captions.map(renderCaption));
    const text = state.query || hit.caption || item.captions[0] || "";
    $("#explain-text").value = text;
    if (text) await explain(text);
  } catch (error) {
    setStatus($("#explain-status"), error.message, true);
  }
}

function renderCaption(caption) {
  const button = element("button", "caption", caption);
  button.type = "button";
  button.addEventListener("click", () => {
    $("#explain-text").value = caption;
    explain(caption);
  });
  const item = element("li");
  item.append(button);
  return item;
}

async function explain(text) {
  const request = ++state.request;
  const status = $("#explain-status");
  setStatus(status, "Explaining…");
  try {
    const result = await getJSON(`/api/explain?q=${encodeURIComponent(text)}&id=${state.imageId}`);
    if (request !== state.request) return;
    state.explanation = result;
    // one colour scale for every map, so that a word that matches nothing stays cold beside one that does
    const values = [result.query_similarity, ...result.similarity].flat();
    state.low = Math.min(...values);
    state.span = Math.max(...values) - state.low || 1;
    const best = result.similarity.map((row) => Math.max(...row));
    const whole = element("button", "word", "whole text");
    whole.type = "button";
    whole.title = "the whole text as the alignment head reads it";
    whole.addEventListener("click", () => selectWord(-1));
    $("#words").replaceChildren(
      whole,
      ...result.words.map((word, i) => {
        const button = element("button", "word", word);
        button.type = "button";
        const tag = (result.word_tags || [])[i];
        button.title = `best region: cosine ${best[i].toFixed(2)}${tag ? `, the tag “${tag}”` : ""}`;
        if (tag) button.textContent = `${word} ≈ ${tag}`;
        button.addEventListener("click", () => selectWord(i));
        return button;
      }),
    );
    const boxes = result.boxes ? "choose a word to see where it matched" : "this index stored no region boxes";
    setStatus(status, `alignment score ${result.score.toFixed(3)}: ${boxes}`);
    selectWord(best.indexOf(Math.max(...best)));
  } catch (error) {
    if (request === state.request) setStatus(status, error.message, true);
  }
}

function selectWord(index) {
  state.word = index;
  document.querySelectorAll("#words .word").forEach((button, i) => {
    button.setAttribute("aria-pressed", String(i === index + 1)); // the first button is the whole text
  });
  draw();
}

function heatColour(t) {
  // blue (cold) → red (hot), more opaque where hotter: [r, g, b, alpha] in 0..255
  return [Math.round(255 * t), Math.round(96 * (1 - Math.abs(2 * t - 1))), Math.round(255 * (1 - t)), Math.round(40 + 140 * t)];
}

function draw() {
  const image = state.image;
  if (!image || !image.complete || !image.naturalWidth) return;
  const canvas = $("#heatmap");
  const scale = 384 / Math.max(image.naturalWidth, image.naturalHeight);
  canvas.width = Math.round(image.naturalWidth * scale);
  canvas.height = Math.round(image.naturalHeight * scale);
  const context = canvas.getContext("2d");
  context.drawImage(image, 0, 0, canvas.width, canvas.height);
  const explanation = state.explanation;
  if (!explanation || !explanation.boxes) return;
  // each cell: the mean similarity of the regions covering its centre (as aladin.service.heatmap.region_heat),
  // drawn on a small canvas that is then scaled up smoothly over the picture
  const row = state.word < 0 ? explanation.query_similarity : explanation.similarity[state.word];
  const { low, span } = state;
  const heat = document.createElement("canvas");
  heat.width = HEAT_CELLS;
  heat.height = HEAT_CELLS;
  const cells = heat.getContext("2d").createImageData(HEAT_CELLS, HEAT_CELLS);
  for (let gy = 0; gy < HEAT_CELLS; gy++) {
    const y = (gy + 0.5) / HEAT_CELLS;
    for (let gx = 0; gx < HEAT_CELLS; gx++) {
      const x = (gx + 0.5) / HEAT_CELLS;
      let total = 0;
      let count = 0;
      explanation.boxes.forEach(([x1, y1, x2, y2], r) => {
        if ((explanation.region_tags || [])[r]) return; // a tag region is a word, not a place
        if (x >= x1 && x < x2 && y >= y1 && y < y2) {
          total += (row[r] - low) / span;
          count += 1;
        }
      });
      if (count) cells.data.set(heatColour(total / count), 4 * (gy * HEAT_CELLS + gx));
    }
  }
  heat.getContext("2d").putImageData(cells, 0, 0);
  context.imageSmoothingEnabled = true;
  context.drawImage(heat, 0, 0, canvas.width, canvas.height);
}

async function showStats() {
  try {
    const stats = await getJSON("/stats");
    if (stats.collapse) COLLAPSE = "&collapse=true";
    const captions = stats.captions === null ? "" : `, ${stats.captions} captions`;
    $("#stats").textContent = `${stats.images} images${captions}`;
    if (stats.captions === null) $("#target option[value=texts]").disabled = true;
  } catch (error) {
    setStatus($("#stats"), error.message, true);
  }
}

document.addEventListener("DOMContentLoaded", async () => {
  $("#search-form").addEventListener("submit", searchText);
  $("#upload").addEventListener("change", searchUpload);
  $("#explain-form").addEventListener("submit", (event) => {
    event.preventDefault();
    explain($("#explain-text").value);
  });
  const dialog = $("#detail");
  $("#close").addEventListener("click", () => dialog.close());
  dialog.addEventListener("close", () => state.opener?.focus());
  await showStats(); // before a linked search: whether results collapse depends on it
  const params = new URLSearchParams(location.search);
  $("#where").value = params.get("where") ?? "";
  const query = params.get("q");
  if (query) {
    $("#query").value = query;
    searchText();
  }
});

// A collapsed result stands for near-duplicates of its photo that the list leaves out.
function similarBadge(count) {
  const badge = element("span", "similar", `${count} similar`);
  badge.title = `${count} near-duplicate photo${count === 1 ? "" : "s"} not shown`;
  return badge;
}

// The page's min score: hits a calibrated model gives a lower confidence are hidden (a model without calibration
// gives none, and nothing is hidden).
function confidentHits(hits) {
  const min = Number($("#min-score").value);
  return hits.filter((hit) => hit.confidence === null || hit.confidence === undefined || hit.confidence >= min);
}

document.addEventListener("DOMContentLoaded", () => {
  $("#min-score").addEventListener("change", () => (state.query ? searchText() : searchUpload()));
});
