// The search page's script (index.html's markup, page.css's styles): what it shows comes from /search alone, so no
// column of any catalogue is named here. No build step; loaded by index.html as it is written.
"use strict";
const $ = (id) => document.getElementById(id);
const PAGE = 24;  // results a page adds
const FACET_VALUES = 6;  // values a facet shows before "show all"
const state = { text: "", like: null, likeTitle: "", photo: null, filters: {}, where: "", mode: "" };
let display = { title: null, fields: [] }, shown = 0, total = 0, ticket = 0, photoUrl = null;

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}
function button(className, text, onClick) {  // a button that submits no form
  const node = el("button", className, text);
  node.type = "button";
  node.addEventListener("click", onClick);
  return node;
}
function label(column) {  // "unitPrice" / "unit_price" -> "Unit price"
  const words = String(column).replace(/[_-]+/g, " ").replace(/([a-z0-9])([A-Z])/g, "$1 $2").trim().toLowerCase();
  return words.charAt(0).toUpperCase() + words.slice(1);
}
function status(text, error = false) { $("status").textContent = text; $("status").className = error ? "error" : ""; }
function anyFilter() { return Object.keys(state.filters).length > 0 || state.where !== ""; }

// ---------------------------------------------------------------------------------------------- requests
function fields(offset) {
  const out = { k: String(PAGE), offset: String(offset), facets: "true" };
  if (Object.keys(state.filters).length) out.filters = JSON.stringify(state.filters);
  if (state.where) out.where = state.where;
  if (state.photo) return out;
  if (state.like) out.like = state.like;
  else if (state.text) { out.text = state.text; if (state.mode) out.mode = state.mode; }
  else out.browse = "true";
  return out;
}
function request(offset) {
  const asked = fields(offset);
  if (!state.photo) return fetch("/search?" + new URLSearchParams(asked));
  const form = new FormData();  // a photo travels again with every page: the service keeps no state
  form.append("image", state.photo);
  for (const [key, value] of Object.entries(asked)) form.append(key, value);
  return fetch("/search", { method: "POST", body: form });
}
async function answer(pending, mine) {
  try {
    const response = await pending;
    const body = await response.json();
    if (mine !== ticket) return null;  // a newer search was started meanwhile
    if (!response.ok) {
      status(typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail || response.statusText), true);
      return null;
    }
    return body;
  } catch (err) {
    if (mine === ticket) status("The service did not answer: " + err, true);
    return null;
  }
}
async function search(remember = true) {
  const mine = ++ticket;
  if (remember) history.pushState(null, "", location.pathname + address());
  showAsking();
  status("Searching...");
  $("more").hidden = true;
  $("results").replaceChildren();  // no card of the previous search stays on the page while this one runs
  shown = 0;
  const body = await answer(request(0), mine);
  if (!body) return;
  total = body.total;
  display = body.display || display;
  showFacets(body.facets || []);
  showChips();
  showEmpty(body);
  add(body);
}
async function more() {
  const mine = ticket;
  $("more").disabled = true;
  const body = await answer(request(shown), mine);
  $("more").disabled = false;
  if (body) add(body);
}

// ---------------------------------------------------------------------------------------------- results
function add(body) {
  for (const hit of body.results) $("results").append(card(hit));
  shown += body.results.length;
  total = body.total;
  $("more").hidden = shown >= total;
  $("more").textContent = "Show more (" + shown + " of " + total + " shown)";
  describe(body);
}
function describe(body) {
  const what = state.photo ? "your photo" : state.like ? null : state.text ? "\u201c" + state.text + "\u201d" : null;
  let text;
  if (state.like) text = total + " products like \u201c" + state.likeTitle + "\u201d";
  else if (what) text = total + (total === 1 ? " result" : " results") + " for " + what;
  else text = total + (total === 1 ? " product" : " products") + (anyFilter() ? " match the filters" : " in the catalogue");
  status(text);
  const debug = el("span", "debug-only", " \u00b7 mode " + (body.query.mode || "none") + " \u00b7 index " + body.index_version
    + (body.query.where ? " \u00b7 where " + body.query.where : ""));
  debug.id = "status-debug";
  $("status").append(debug);
}
function card(hit) {
  const node = el("article", "hit");
  node.dataset.id = hit.id;
  const title = display.title && hit[display.title] != null ? String(hit[display.title]) : "";
  const img = el("img");
  img.alt = title || "product photo";
  img.loading = "lazy";
  if (hit.image_url) img.src = hit.image_url;
  const body = el("div", "body");
  body.append(el("div", "title", title));
  const facts = el("div", "fields");
  const seen = new Set();  // a value two fields share ("Watches", "Watches") is shown once
  for (const column of display.fields) {
    const value = hit[column] == null ? "" : String(hit[column]);
    if (value === "" || seen.has(value)) continue;
    seen.add(value);
    const part = el("span", "", value);
    part.title = label(column);
    if (facts.childNodes.length) facts.append(" \u00b7 ");
    facts.append(part);
  }
  body.append(facts);
  const score = hit.score == null ? "" : " \u00b7 score " + hit.score.toFixed(3);
  const rerank = hit.rerank_score == null ? "" : " \u00b7 rerank " + hit.rerank_score.toFixed(3);
  body.append(el("div", "debug debug-only", "#" + hit.rank + " \u00b7 id " + hit.id + score + rerank));
  body.append(button("", "More like this", () => {
    Object.assign(state, { like: hit.id, likeTitle: title || hit.id, text: "", photo: null });
    $("q").value = "";
    window.scrollTo(0, 0);
    search();
  }));
  node.append(img, body);
  return node;
}

// ---------------------------------------------------------------------------------------------- filters
function toggle(column, value) {
  const chosen = state.filters[column] || [];
  const kept = chosen.includes(value) ? chosen.filter((v) => v !== value) : [...chosen, value];
  if (kept.length) state.filters[column] = kept; else delete state.filters[column];
  search();
}
function drop(what) {
  if (what.column !== undefined) delete state.filters[what.column];
  else { state.where = ""; $("where").value = ""; }
  search();
}
function showFacets(facets) {
  const aside = $("facets");
  aside.replaceChildren();
  for (const facet of facets) {
    const section = el("section", "facet");
    section.dataset.column = facet.column;
    section.append(el("h3", "", label(facet.column)));
    const list = el("ul");
    facet.values.forEach((v, i) => {
      const item = el("li", i >= FACET_VALUES && !v.selected ? "extra" : "");
      const choice = button("facet-value" + (v.selected ? " selected" : ""), undefined, () => toggle(facet.column, v.value));
      choice.dataset.column = facet.column;
      choice.dataset.value = v.value;
      choice.setAttribute("aria-pressed", String(v.selected));
      choice.append(el("span", "name", v.value), el("span", "count", String(v.count)));
      item.append(choice);
      list.append(item);
    });
    section.append(list);
    const hidden = list.querySelectorAll("li.extra").length;
    if (hidden) {
      const all = button("all", "Show " + hidden + " more", () => {
        section.classList.toggle("open");
        all.textContent = section.classList.contains("open") ? "Show fewer" : "Show " + hidden + " more";
      });
      section.append(all);
    }
    aside.append(section);
  }
}
function filterName(what) {
  return what.column !== undefined ? label(what.column) + ": " + what.values.join(" or ") : "filter " + what.where;
}
function chip(text, onRemove) {
  const node = el("span", "chip", text);
  const remove = button("", "\u00d7", onRemove);
  remove.title = "remove";
  node.append(remove);
  return node;
}
function showChips() {
  const chips = [];
  for (const [column, values] of Object.entries(state.filters)) {
    chips.push(chip(filterName({ column, values }), () => drop({ column })));
  }
  if (state.where) chips.push(chip(filterName({ where: state.where }), () => drop({ where: state.where })));
  $("chips").replaceChildren(...chips);
}
function showEmpty(body) {
  const box = $("empty");
  box.replaceChildren();
  box.hidden = body.total > 0;
  if (body.total > 0) return;
  const about = state.photo ? " your photo" : state.text ? " \u201c" + state.text + "\u201d" : "";
  box.append(el("p", "", "No products match" + about + (anyFilter() ? " with these filters." : ".")));
  const suggestions = body.suggestions || [];
  if (suggestions.length) {
    box.append(el("p", "hint", "Drop a filter to see results:"));
    for (const s of suggestions) {
      const offer = button("drop-filter", "Drop " + filterName(s.drop), () => drop(s.drop));
      offer.append(" ", el("span", "count", s.count + (s.count === 1 ? " result" : " results")));
      box.append(offer);
    }
  } else if (anyFilter()) {
    box.append(button("drop-filter", "Clear all filters", () => {
      state.filters = {}; state.where = ""; $("where").value = ""; search();
    }));
  } else {
    box.append(el("p", "hint", "Try other words, or search by a photo."));
  }
}

// ---------------------------------------------------------------------------------------------- the query
function showAsking() {
  const box = $("asking");
  box.replaceChildren();
  if (photoUrl && !state.photo) { URL.revokeObjectURL(photoUrl); photoUrl = null; }
  const clear = () => { Object.assign(state, { photo: null, like: null }); search(); };
  if (state.photo) {
    const c = chip("your photo", clear);
    const thumb = el("img");
    thumb.src = photoUrl;
    thumb.alt = "the photo searched by";
    c.prepend(thumb);
    box.append(c);
  } else if (state.like) {
    box.append(chip("like \u201c" + state.likeTitle + "\u201d", clear));
  }
}
function searchPhoto(file) {
  if (!file || !file.type.startsWith("image/")) { status("Drop or pick a photo (JPEG, PNG, WebP...).", true); return; }
  if (photoUrl) URL.revokeObjectURL(photoUrl);
  photoUrl = URL.createObjectURL(file);
  Object.assign(state, { photo: file, like: null, text: "" });
  $("q").value = "";
  search(false);  // a photo cannot be kept in the address
}
function address() {  // the page's state as its address (text, like, filters, typed filter, debug): links and Back work
  const params = new URLSearchParams();
  if (state.text) params.set("q", state.text);
  if (state.like) { params.set("like", state.like); params.set("like_title", state.likeTitle); }
  if (Object.keys(state.filters).length) params.set("filters", JSON.stringify(state.filters));
  if (state.where) params.set("where", state.where);
  if (state.mode) params.set("mode", state.mode);
  if ($("debug").checked) params.set("debug", "1");
  const text = params.toString();
  return text ? "?" + text : "";
}
function restore() {
  const params = new URLSearchParams(location.search);
  let filters = {};
  try { filters = JSON.parse(params.get("filters") || "{}") || {}; } catch (err) { filters = {}; }
  Object.assign(state, { text: params.get("q") || "", like: params.get("like"), likeTitle: params.get("like_title") || "",
    photo: null, filters, where: params.get("where") || "", mode: params.get("mode") || "" });
  $("q").value = state.text;
  $("where").value = state.where;
  $("mode").value = state.mode;
  $("debug").checked = params.get("debug") === "1";
  document.body.classList.toggle("debug", $("debug").checked);
  if (state.where) openAdvanced(true);
}
function openAdvanced(open) {
  $("advanced").hidden = !open;
  $("advanced-toggle").setAttribute("aria-expanded", String(open));
}

$("search").addEventListener("submit", (event) => {
  event.preventDefault();
  Object.assign(state, { text: $("q").value.trim(), where: $("where").value.trim(), photo: null, like: null });
  search();
});
$("photo").addEventListener("change", () => { if ($("photo").files.length) searchPhoto($("photo").files[0]); $("photo").value = ""; });
$("more").addEventListener("click", more);
$("advanced-toggle").addEventListener("click", () => openAdvanced($("advanced").hidden));
$("debug").addEventListener("change", () => {
  document.body.classList.toggle("debug", $("debug").checked);
  history.replaceState(null, "", location.pathname + address());
});
$("mode").addEventListener("change", () => { state.mode = $("mode").value; if (state.text) search(); });
let dragging = 0;  // dragenter / dragleave pairs of the page's elements
const carriesFiles = (event) => event.dataTransfer && [...event.dataTransfer.types].includes("Files");
document.addEventListener("dragenter", (event) => {
  if (!carriesFiles(event)) return;
  event.preventDefault();
  dragging += 1;
  document.body.classList.add("dragging");
});
document.addEventListener("dragleave", (event) => {
  if (carriesFiles(event) && --dragging <= 0) { dragging = 0; document.body.classList.remove("dragging"); }
});
document.addEventListener("dragover", (event) => { if (carriesFiles(event)) event.preventDefault(); });
document.addEventListener("drop", (event) => {
  if (!carriesFiles(event)) return;
  event.preventDefault();
  dragging = 0;
  document.body.classList.remove("dragging");
  searchPhoto([...event.dataTransfer.files].find((f) => f.type.startsWith("image/")));
});
window.addEventListener("popstate", () => { restore(); search(false); });
restore();
search(false);
