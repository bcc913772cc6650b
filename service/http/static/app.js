// facemem browser page. Every string from the server or from a file name is put into the page as
// text (textContent / text nodes), never parsed as HTML; the server's Content-Security-Policy also
// requires Trusted Types, so an HTML sink would throw. Thumbnails are fetched with the bearer
// token and shown as blob: URLs (an <img src> request could not carry the token).
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const chosen = []; // File objects, in the order they were added
  let objectUrls = []; // revoked when the next result replaces this one
  let thumbCache = new Map(); // training file -> Promise<object URL | null>
  let info = null; // GET /v1/index, once the token is right

  // ------------------------------------------------------------------ small helpers

  const ATTRS = new Set(["class", "title", "alt", "src", "width", "height", "colspan", "role"]);

  // createElement with whitelisted attributes and text/element children (strings become text nodes).
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined) continue;
      if (!ATTRS.has(k) && !k.startsWith("data-")) throw new Error("attribute not allowed: " + k);
      e.setAttribute(k, String(v));
    }
    for (const c of children.flat()) {
      if (c !== null && c !== undefined && c !== false) e.append(c instanceof Node ? c : String(c));
    }
    return e;
  }

  function authHeaders() {
    const t = $("token").value.trim();
    return t ? { Authorization: "Bearer " + t } : {};
  }

  function pct(x, digits) {
    if (x === null || x === undefined) return "n/a";
    const v = 100 * x;
    if (v === 0 || v === 100) return v + "%";
    const d = digits !== undefined ? digits : v < 0.1 || v > 99.9 ? 2 : 1;
    return v.toFixed(d) + "%";
  }

  const num = (x, d) => (x === null || x === undefined ? "n/a" : Number(x).toFixed(d));
  // A support size, rounded to what its interval supports: to the power of ten one below the
  // interval's width (902 [654–1185] reads 900 [650–1190]), never past whole faces, grouped by thousands.
  const unitOf = (iv) => {
    if (!iv || !(iv[1] > iv[0])) return 1;
    return Math.max(1, Math.pow(10, Math.floor(Math.log10(iv[1] - iv[0])) - 1));
  };
  const big = (x, unit) => (Math.round(x / (unit || 1)) * (unit || 1)).toLocaleString("en-US");
  // a distance as the page shows it: descriptor distances to 3 decimals, pixel L1 sums as integers
  const dist = (channel, x) => (x === null || x === undefined ? "n/a" : channel === "pixel" ? String(Math.round(x)) : num(x, 3));
  const interval = (iv) => (iv ? `95% CI ${pct(iv[0])}–${pct(iv[1])}` : "");

  function setStatus(text, isError) {
    const s = $("status");
    s.textContent = text;
    s.classList.toggle("error", Boolean(isError));
  }

  // An error answer of the API ({error, message}) as one line of text.
  async function errorText(resp) {
    let body = null;
    try {
      body = await resp.json();
    } catch (_) {
      /* not JSON */
    }
    const what = body && body.error ? `${body.error}: ${body.message}` : resp.statusText;
    const retry = resp.headers.get("Retry-After");
    return `HTTP ${resp.status} ${what}${retry ? ` (retry after ${retry} s)` : ""}`;
  }

  const fileUrl = (file, size) =>
    "images/" + file.split("/").map(encodeURIComponent).join("/") + "?size=" + encodeURIComponent(size);

  function thumbnail(file) {
    if (!thumbCache.has(file)) {
      const p = fetch(fileUrl(file, 128), { headers: authHeaders() })
        .then((r) => (r.ok ? r.blob() : null))
        .then((b) => {
          if (!b) return null;
          const u = URL.createObjectURL(b);
          objectUrls.push(u);
          return u;
        })
        .catch(() => null);
      thumbCache.set(file, p);
    }
    return thumbCache.get(file);
  }

  // ------------------------------------------------------------------ the index description

  async function loadIndex() {
    const out = $("index-summary");
    let resp;
    try {
      resp = await fetch("v1/index", { headers: authHeaders() });
    } catch (e) {
      out.textContent = "The server cannot be reached: " + e;
      return;
    }
    if (resp.status === 401) {
      info = null;
      out.textContent = "This server needs a token: enter it in the Token field.";
      return;
    }
    if (!resp.ok) {
      out.textContent = "GET /v1/index failed: " + (await errorText(resp));
      return;
    }
    info = await resp.json();
    const s = info.summary;
    const c = info.calibration;
    out.textContent =
      `Index: ${s.faces} faces from ${s.images} images (${s.dataset || "dataset"}, split ${s.split || "n/a"}, ` +
      `${s.identities_known ? `${s.identities} identities` : "no identities"}), built with detector ${s.detector}. ` +
      `Identity threshold ${num(c.identity, 3)} (${c.source}` +
      (c.false_match_rate !== null ? ` at a ${pct(c.false_match_rate)} false-match target` : "") +
      `). At most ${info.limits.max_files} images per search.`;
    $("k").max = String(info.limits.k_max);
  }

  // ------------------------------------------------------------------ choosing files

  function addFiles(list) {
    for (const f of list) chosen.push(f);
    const ul = $("chosen");
    ul.replaceChildren(...chosen.map((f) => el("li", { "data-name": f.name }, f.name)));
    setStatus(chosen.length ? `${chosen.length} image(s) chosen` : "");
  }

  function clearAll() {
    chosen.length = 0;
    $("chosen").replaceChildren();
    $("results").replaceChildren();
    $("batch").hidden = true;
    setStatus("");
  }

  // ------------------------------------------------------------------ searching

  async function search(ev) {
    ev.preventDefault();
    if (!chosen.length) {
      setStatus("Choose or drop one or more images first.", true);
      return;
    }
    const k = $("k").value.trim() || "5";
    const params = new URLSearchParams({ detector: $("detector").value, k });
    const form = new FormData();
    for (const f of chosen) form.append("images", f, f.name);
    setStatus(`Searching ${chosen.length} image(s)…`);
    $("search").disabled = true;
    let resp;
    try {
      resp = await fetch("neighbors?" + params.toString(), { method: "POST", body: form, headers: authHeaders() });
    } catch (e) {
      setStatus("The server cannot be reached: " + e, true);
      $("search").disabled = false;
      return;
    }
    $("search").disabled = false;
    if (!resp.ok) {
      setStatus("Search failed: " + (await errorText(resp)), true);
      return;
    }
    const body = await resp.json();
    if (!info) loadIndex(); // the token worked: describe the index too
    render(body, chosen.slice());
    const t = body.timing && body.timing.total_s;
    setStatus(`${body.images.length} image(s) searched${t !== undefined ? ` in ${t.toFixed(2)} s` : ""}.`);
  }

  // ------------------------------------------------------------------ rendering a response

  function render(body, files) {
    for (const u of objectUrls) URL.revokeObjectURL(u);
    objectUrls = [];
    thumbCache = new Map();
    renderBatch(body);
    const cal = body.calibration;
    $("results").replaceChildren(
      el("h2", {}, "Each image"),
      ...body.images.map((im, i) => renderImage(im, i, files[i], cal))
    );
  }

  function renderBatch(body) {
    const c = body.counts;
    const cal = body.calibration;
    $("batch").hidden = false;
    $("batch-summary").replaceChildren(
      el(
        "p",
        { "data-counts": JSON.stringify(c) },
        `${body.images.length} image(s): ${c.ok} with a face, ${c.no_face} without a face, ${c.unreadable} unreadable.`
      ),
      el(
        "p",
        { class: "muted" },
        `Identity threshold ${num(cal.identity, 3)} (${cal.source}); real strangers fall under it ` +
          `${pct(cal.expected_false_match_rate)} of the time, other photos of the same training person ` +
          `${pct(cal.expected_recall)}. Copy thresholds: semantic ${num(cal.semantic_copy, 3)}, pixel ` +
          `${num(cal.pixel_copy_per_value, 3)} per value (${cal.copy_percentile}% of training faces are closer ` +
          `than that to their nearest other training face). ${cal.note}`
      )
    );
    renderMemorization(body.memorization);
    renderCollisions(body.collisions);
  }

  function shareText(s) {
    if (!s) return "not computed";
    if (!s.faces) return "no faces";
    return `${s.count} of ${s.faces} (${pct(s.share)}, ${interval(s.interval)})`;
  }

  function renderMemorization(m) {
    const rows = [];
    if (m.same_person) {
      const base = m.same_person.baseline;
      const p = base ? base.p_value : null;
      rows.push(
        el(
          "tr",
          { "data-kind": "same_person" },
          el("th", {}, "same person as a training face"),
          el(
            "td",
            {},
            `${shareText(m.same_person)} vs ${pct(base ? base.null_rate : m.expected_false_match_rate)} of the index's strangers` +
              (p !== null && p !== undefined ? ` (p = ${p.toPrecision(3)} for "more than strangers")` : "")
          )
        )
      );
    }
    for (const ch of ["semantic", "pixel"]) {
      rows.push(
        el(
          "tr",
          { "data-kind": "likely_copies_" + ch },
          el("th", {}, `likely copies (${ch})`),
          el(
            "td",
            {},
            shareText(m.likely_copies[ch]) +
              (m.likely_copies[ch] && m.likely_copies[ch].baseline
                ? ` vs ${pct(m.likely_copies[ch].baseline.null_rate)} of strangers (p = ${
                    m.likely_copies[ch].baseline.p_value === null ? "n/a" : m.likely_copies[ch].baseline.p_value.toPrecision(3)
                  })`
                : "")
          )
        )
      );
    }
    const parts = [el("table", {}, el("tbody", {}, rows))];
    if (m.suspected_copies.length) {
      parts.push(
        el(
          "table",
          { class: "suspects" },
          el("thead", {}, el("tr", {}, el("th", {}, "image"), el("th", {}, "channel"), el("th", {}, "training file"), el("th", {}, "distance"))),
          el(
            "tbody",
            {},
            m.suspected_copies.map((s) =>
              el("tr", { "data-image": s.image }, el("td", {}, s.image), el("td", {}, s.channel), el("td", {}, s.file || ""), el("td", {}, dist(s.channel, s.distance)))
            )
          )
        )
      );
    }
    $("memorization").replaceChildren(...parts);
  }

  function renderCollisions(col) {
    const parts = [];
    for (const ch of ["semantic", "pixel"]) {
      const c = col[ch];
      if (!c) continue;
      // The support assumes the index's chance rate f holds for these faces (the batch audit checks it
      // against real faces of the same domain); a bound below the batch's own size says nothing.
      const unit = unitOf(c.interval);
      const est =
        c.estimate !== null && c.estimate !== undefined
          ? `support ≈ ${big(c.estimate, unit)}` +
            (c.interval ? ` (95% ${big(c.interval[0], unit)}–${big(c.interval[1], unit)})` : "") +
            " if the index's chance rate holds for these faces"
          : c.lower_bound !== null && c.lower_bound !== undefined && c.lower_bound >= c.faces
            ? `support ≥ ${big(c.lower_bound)} (95% lower bound, if the index's chance rate holds for these faces)`
            : c.pairs_compared
              ? "too few faces to bound the support"
              : "";
      parts.push(
        el(
          "p",
          { "data-channel": ch },
          `${ch}: ${c.colliding_pairs} of ${c.pairs_compared} pairs under ${dist(ch, c.threshold)}` +
            (c.expected_chance_pairs !== undefined ? ` (${c.expected_chance_pairs.toPrecision(2)} expected by chance)` : "") +
            (est ? `; ${est}` : "") +
            ". ",
          el("span", { class: "muted" }, c.note || "")
        )
      );
      if (c.pairs.length) {
        parts.push(
          el(
            "table",
            { class: "pairs", "data-channel": ch },
            el("thead", {}, el("tr", {}, el("th", {}, "image a"), el("th", {}, "image b"), el("th", {}, "distance"))),
            el(
              "tbody",
              {},
              c.pairs.map((p) =>
                el("tr", { "data-a": p.a_index, "data-b": p.b_index }, el("td", {}, p.a), el("td", {}, p.b), el("td", {}, dist(ch, p.distance)))
              )
            )
          )
        );
      }
    }
    parts.push(el("p", { class: "muted" }, col.reference));
    $("collisions").replaceChildren(...parts);
  }

  function queryPicture(file, box) {
    if (!file) return el("div", {}, "(no preview)");
    const u = URL.createObjectURL(file);
    objectUrls.push(u);
    if (!box) return el("img", { src: u, alt: "uploaded image", class: "upload" });
    // The face the server used: its box with a margin, drawn from the local file.
    const canvas = el("canvas", { width: 128, height: 128, class: "upload", "data-box": box.join(",") });
    const img = new Image();
    img.onload = () => {
      const [l, t, r, b] = box;
      const side = Math.max(r - l, b - t) * 1.5;
      const cx = (l + r) / 2;
      const cy = (t + b) / 2;
      canvas.getContext("2d").drawImage(img, cx - side / 2, cy - side / 2, side, side, 0, 0, 128, 128);
    };
    img.src = u;
    return canvas;
  }

  // q: the share of a calibration sample strictly below the distance (the server's *_quantile).
  const given = (q) => q !== null && q !== undefined;

  function semanticContext(n, cal) {
    if (given(n.stranger_quantile)) {
      return n.stranger_quantile === 0
        ? `no stranger's nearest training face in the calibration (${cal.null_samples}) is this close`
        : `closer than ${pct(1 - n.stranger_quantile)} of strangers' nearest training face`;
    }
    if (given(n.loo_quantile)) {
      return n.loo_quantile === 0
        ? `no training face in the calibration (${cal.loo_samples}) is this close to its nearest other face`
        : `closer than ${pct(1 - n.loo_quantile)} of training faces' nearest other face (no identities here)`;
    }
    return "";
  }

  function pixelContext(n, cal) {
    if (!given(n.loo_quantile)) return "";
    return n.loo_quantile === 0
      ? `no training face in the calibration (${cal.pixel_loo_samples}) is this close to its nearest other face in pixels`
      : `closer than ${pct(1 - n.loo_quantile)} of training faces' nearest other face in pixels`;
  }

  function neighborFigure(channel, n, cal) {
    const img = el("img", { alt: `training face ${n.file}`, class: "thumb" });
    thumbnail(n.file).then((u) => {
      if (u) img.setAttribute("src", u);
      else img.setAttribute("alt", `thumbnail of ${n.file} unavailable`);
    });
    const lines = [el("div", {}, `#${n.rank} `, el("span", { class: "file" }, n.file))];
    if (n.identity !== null) lines.push(el("div", { class: "identity" }, `identity ${n.identity}`));
    let context;
    if (channel === "semantic") {
      const badges = [];
      if (n.same_person) badges.push(el("span", { class: "badge bad" }, "same person"));
      if (cal.semantic_copy !== null && n.distance < cal.semantic_copy) badges.push(el("span", { class: "badge bad" }, "likely copy"));
      lines.push(el("div", {}, el("span", { class: "dist" }, `distance ${num(n.distance, 3)}`), ...badges));
      context = semanticContext(n, cal);
    } else {
      const copy = cal.pixel_copy !== null && n.distance < cal.pixel_copy;
      lines.push(
        el(
          "div",
          {},
          el("span", { class: "dist" }, `L1 ${num(n.distance_per_value, 3)} per value`),
          copy ? el("span", { class: "badge bad" }, "likely copy") : null
        )
      );
      context = pixelContext(n, cal);
    }
    if (context) lines.push(el("div", { class: "context" }, context));
    return el(
      "figure",
      {
        class: "neighbor",
        "data-channel": channel,
        "data-rank": n.rank,
        "data-file": n.file,
        "data-distance": String(n.distance),
        "data-stranger-quantile": n.stranger_quantile === undefined ? null : String(n.stranger_quantile),
        "data-loo-quantile": n.loo_quantile === undefined ? null : String(n.loo_quantile),
      },
      img,
      el("figcaption", {}, lines)
    );
  }

  function renderImage(im, i, file, cal) {
    const head = el("h3", {}, el("span", { class: "name" }, im.image), el("span", { class: "badge " + im.status }, im.status));
    const parts = [head];
    if (im.reason) parts.push(el("p", { class: "reason" }, im.reason));
    const channels = [];
    for (const ch of ["pixel", "semantic"]) {
      if (!im[ch].length) continue;
      const title = ch === "pixel" ? "pixel L1 neighbours (aligned 64×64 crops)" : "semantic neighbours (identity)";
      channels.push(
        el(
          "div",
          { class: "channel", "data-channel": ch },
          el("h4", {}, title),
          el("div", { class: "row" }, im[ch].map((n) => neighborFigure(ch, n, cal)))
        )
      );
    }
    parts.push(
      el(
        "div",
        { class: "layout" },
        el("div", { class: "query" }, queryPicture(file, im.status === "ok" ? im.box : null), el("div", {}, "uploaded")),
        el("div", { class: "channels" }, channels.length ? channels : el("p", { class: "muted" }, "no neighbours: no face was used"))
      )
    );
    return el("article", { class: "card", "data-index": i, "data-status": im.status }, parts);
  }

  // ------------------------------------------------------------------ wiring

  document.addEventListener("DOMContentLoaded", () => {
    const drop = $("drop");
    $("files").addEventListener("change", (e) => {
      addFiles(e.target.files);
      e.target.value = ""; // the same file may be chosen again
    });
    for (const type of ["dragenter", "dragover"]) {
      drop.addEventListener(type, (e) => {
        e.preventDefault();
        drop.classList.add("over");
      });
    }
    drop.addEventListener("dragleave", () => drop.classList.remove("over"));
    drop.addEventListener("drop", (e) => {
      e.preventDefault();
      drop.classList.remove("over");
      if (e.dataTransfer && e.dataTransfer.files.length) addFiles(e.dataTransfer.files);
    });
    $("query").addEventListener("submit", search);
    $("clear").addEventListener("click", clearAll);
    $("token").addEventListener("change", loadIndex);
    loadIndex();
  });
})();
