/* attnviz encoder-decoder report: the three kinds of attention of one source and one
   target (encoder self, decoder self, cross), bertviz's switch between them, and the
   views of one head: model view (grouped by kind), heatmap, lines, statistics. Each
   kind's weights are stored whole (layout "full", row-major, quantised as the report's):
   docs/encoder-decoders.md. */
(function () {
  "use strict";
  var payload = JSON.parse(document.getElementById("attnviz-data").textContent);
  var NAMES = { encoder: "Encoder", decoder: "Decoder", cross: "Cross" };
  /* an encoder model's page (encoder.js) has one text, not a source for a decoder */
  var ONE_TEXT = !payload.kinds.decoder && !payload.kinds.cross;
  var SOURCE = ONE_TEXT ? "" : "source ";
  var ABOUT = {
    encoder: "Encoder self-attention: each " + SOURCE + "token over every " + SOURCE +
      "token (bidirectional: nothing masked).",
    decoder: "Decoder self-attention: each decoder token over itself and the decoder tokens before it (causal).",
    cross: "Cross-attention: each decoder token (rows, left) over the source tokens (columns, right): the alignment of the two texts."
  };
  var PIXELS = 48; /* model view thumbnails, at most */
  var MARGIN = 96, MIN_LABELLED_CELL = 12, MIN_LINE = 1 / 64;
  var kinds = ["encoder", "decoder", "cross"].filter(function (k) { return payload.kinds[k]; });

  /* base64url (RFC 4648 section 5) -> bytes */
  function base64urlBytes(text) {
    var alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    var lookup = new Uint8Array(128);
    for (var k = 0; k < 64; k++) lookup[alphabet.charCodeAt(k)] = k;
    var end = text.length;
    while (end > 0 && text.charCodeAt(end - 1) === 61) end--;
    var out = new Uint8Array(Math.floor(end * 3 / 4)), o = 0, buffer = 0, bits = 0;
    for (var c = 0; c < end; c++) {
      buffer = ((buffer << 6) | lookup[text.charCodeAt(c)]) & 0xffffff;
      bits += 6;
      if (bits >= 8) { bits -= 8; out[o++] = (buffer >> bits) & 255; }
    }
    return out;
  }
  /* the stored weights in [0, 1]: "u16" linear, "sqrt-u8" square root */
  function decode(spec) {
    var bytes = base64urlBytes(spec.data), values, i;
    if (spec.encoding === "u16") {
      values = new Float32Array(bytes.length / 2);
      for (i = 0; i < values.length; i++) values[i] = (bytes[2 * i] | (bytes[2 * i + 1] << 8)) / 65535;
    } else if (spec.encoding === "sqrt-u8") {
      values = new Float32Array(bytes.length);
      for (i = 0; i < bytes.length; i++) values[i] = (bytes[i] / 255) * (bytes[i] / 255);
    } else {
      throw new Error("unknown weight encoding " + spec.encoding);
    }
    var count = spec.shape[0] * spec.shape[1] * spec.shape[2] * spec.shape[3];
    if (values.length !== count) throw new Error("weight data has the wrong length");
    return values;
  }

  var data = {};
  kinds.forEach(function (kind) {
    var spec = payload.kinds[kind];
    data[kind] = {
      layers: spec.layers, nHeads: spec.shape[1], nQ: spec.shape[2], nK: spec.shape[3],
      values: decode(spec),
      queries: kind === "encoder" ? payload.tokens : payload.decoder_tokens,
      keys: kind === "decoder" ? payload.decoder_tokens : payload.tokens,
      stats: spec.stats
    };
  });
  var state = { kind: kinds[kinds.length - 1], layer: 0, head: 0, scale: "sqrt", shown: {} };

  /* Weight of query i on key j of head h in layer index li, NaN for the decoder's future. */
  function weight(kind, li, h, i, j) {
    var d = data[kind];
    if (kind === "decoder" && j > i) return NaN;
    return d.values[((li * d.nHeads + h) * d.nQ + i) * d.nK + j];
  }

  var stops = [[68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 140],
    [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37]];
  var palette = new Uint8Array(256 * 3);
  for (var p = 0; p < 256; p++) {
    var x = p / 255 * (stops.length - 1), lo = Math.min(Math.floor(x), stops.length - 2), f = x - lo;
    for (var ch = 0; ch < 3; ch++) palette[p * 3 + ch] = Math.round(stops[lo][ch] * (1 - f) + stops[lo + 1][ch] * f);
  }
  function level(w, scale) { return Math.round((scale === "linear" ? w : Math.sqrt(w)) * 255); }
  function cssVar(name) { return getComputedStyle(document.documentElement).getPropertyValue(name).trim(); }
  function rgb(hex) { var n = parseInt(hex.replace("#", ""), 16); return [(n >> 16) & 255, (n >> 8) & 255, n & 255]; }
  function headColor(h, n) { return "hsl(" + Math.round(h * 360 / n) + ", 70%, 45%)"; }
  function headName(kind, li, h) { return NAMES[kind].toLowerCase() + " \u00b7 layer " + data[kind].layers[li] + ", head " + h; }
  function short(text) { return text.length > 12 ? text.slice(0, 11) + "\u2026" : text; }
  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  /* A head's (pooled) cells as an image: rows pooled by `pool`, columns too, maximum kept. */
  function cells(target, kind, li, h, pool, scale) {
    var d = data[kind], rows = Math.ceil(d.nQ / pool), cols = Math.ceil(d.nK / pool);
    var masked = rgb(cssVar("--masked") || "#d0d0d0");
    target.width = cols;
    target.height = rows;
    var tctx = target.getContext("2d"), image = tctx.createImageData(cols, rows), px = image.data;
    var best = new Float32Array(rows * cols).fill(-1);
    for (var i = 0; i < d.nQ; i++) {
      var base = ((li * d.nHeads + h) * d.nQ + i) * d.nK, bi = Math.floor(i / pool) * cols;
      var last = kind === "decoder" ? i : d.nK - 1;
      for (var j = 0; j <= last; j++) {
        var k = bi + Math.floor(j / pool);
        if (d.values[base + j] > best[k]) best[k] = d.values[base + j];
      }
    }
    for (var c = 0; c < rows * cols; c++) {
      var colour = masked;
      if (best[c] >= 0) {
        var q = level(best[c], scale) * 3;
        colour = [palette[q], palette[q + 1], palette[q + 2]];
      }
      px.set([colour[0], colour[1], colour[2], 255], c * 4);
    }
    tctx.putImageData(image, 0, 0);
  }

  /* ---- the switch and the selection ---- */
  var listeners = [];
  function select(kind, li, h) {
    state.kind = kind;
    state.layer = li;
    state.head = h;
    listeners.forEach(function (listener) { listener(); });
  }
  function buildSwitch() {
    var bar = document.getElementById("kind-switch");
    kinds.forEach(function (kind) {
      var button = el("button", "", NAMES[kind]);
      button.type = "button";
      button.dataset.kind = kind;
      button.addEventListener("click", function () {
        select(kind, Math.min(state.layer, data[kind].layers.length - 1), Math.min(state.head, data[kind].nHeads - 1));
      });
      bar.appendChild(button);
    });
    listeners.push(function () {
      Array.prototype.forEach.call(bar.children, function (b) {
        b.setAttribute("aria-pressed", String(b.dataset.kind === state.kind));
      });
      document.getElementById("kind-note").textContent = ABOUT[state.kind];
      var selected = document.getElementById("selected-head");
      selected.textContent = headName(state.kind, state.layer, state.head);
      selected.dataset.kind = state.kind;
      selected.dataset.layer = data[state.kind].layers[state.layer];
      selected.dataset.head = state.head;
    });
  }

  /* ---- model view: a grid of thumbnails per kind ---- */
  var thumbs = [];
  function buildModel(done) {
    var view = document.getElementById("model-view"), pending = [];
    kinds.forEach(function (kind) {
      var d = data[kind], group = el("div", "kind-group");
      group.dataset.kind = kind;
      group.appendChild(el("h3", "", ABOUT[kind].split(":")[0] + " (" + d.nQ + " \u00d7 " + d.nK + ")"));
      var grid = el("div", "model-grid");
      grid.style.gridTemplateColumns = "max-content repeat(" + d.nHeads + ", max-content)";
      grid.appendChild(el("span"));
      for (var h = 0; h < d.nHeads; h++) grid.appendChild(el("span", "head-label", "head " + h));
      d.layers.forEach(function (number, li) {
        grid.appendChild(el("span", "layer-label", "layer " + number));
        for (var h2 = 0; h2 < d.nHeads; h2++) {
          var button = el("button", "thumb"), canvas = el("canvas");
          button.type = "button";
          button.dataset.kind = kind;
          button.dataset.layer = number;
          button.dataset.head = h2;
          button.title = headName(kind, li, h2);
          button.setAttribute("aria-label", headName(kind, li, h2));
          button.appendChild(canvas);
          button.addEventListener("click", select.bind(null, kind, li, h2));
          grid.appendChild(button);
          thumbs.push(button);
          pending.push([canvas, kind, li, h2]);
        }
      });
      group.appendChild(grid);
      view.appendChild(group);
    });
    listeners.push(function () {
      thumbs.forEach(function (b) {
        var on = b.dataset.kind === state.kind && Number(b.dataset.layer) === data[state.kind].layers[state.layer] &&
          Number(b.dataset.head) === state.head;
        b.setAttribute("aria-pressed", String(on));
      });
      Array.prototype.forEach.call(view.children, function (g) {
        g.classList.toggle("current", g.dataset.kind === state.kind);
      });
    });
    /* drawn a few per frame, so the page paints first */
    (function draw() {
      var batch = pending.splice(0, 12);
      batch.forEach(function (item) {
        var d = data[item[1]], pool = Math.ceil(Math.max(d.nQ, d.nK) / PIXELS);
        cells(item[0], item[1], item[2], item[3], pool, "sqrt");
        item[0].style.width = "calc(var(--thumb, 36px) * " + (d.nK / Math.max(d.nQ, d.nK)).toFixed(3) + ")";
        item[0].style.height = "calc(var(--thumb, 36px) * " + (d.nQ / Math.max(d.nQ, d.nK)).toFixed(3) + ")";
      });
      if (pending.length) requestAnimationFrame(draw); else done();
    })();
  }

  /* ---- heatmap ---- */
  var canvas = document.getElementById("heatmap-canvas"), ctx = canvas.getContext("2d");
  var image = document.createElement("canvas"), geometry = null, cursor = null;
  var readout = document.getElementById("hover-readout");
  function renderHeatmap() {
    var kind = state.kind, d = data[kind], dpr = window.devicePixelRatio || 1;
    var width = Math.max(160, Math.min(document.getElementById("heatmap-wrap").clientWidth || 640, 720));
    var longest = Math.max(d.nQ, d.nK);
    var labelled = (width - MARGIN) / longest >= MIN_LABELLED_CELL;
    var margin = labelled ? MARGIN : 0, cell = (width - margin) / longest;
    var pool = Math.max(1, Math.ceil(longest / Math.floor((width - margin) * dpr)));
    var gridW = cell * d.nK, gridH = cell * d.nQ;
    canvas.style.width = (margin + gridW) + "px";
    canvas.style.height = (margin + gridH) + "px";
    canvas.width = Math.round((margin + gridW) * dpr);
    canvas.height = Math.round((margin + gridH) * dpr);
    geometry = { margin: margin, cell: cell, gridW: gridW, gridH: gridH, dpr: dpr, labelled: labelled };
    cells(image, kind, state.layer, state.head, pool, state.scale);
    canvas.dataset.kind = kind;
    canvas.dataset.layer = d.layers[state.layer];
    canvas.dataset.head = state.head;
    canvas.dataset.margin = margin;
    canvas.dataset.cell = cell;
    document.getElementById("heatmap-head").textContent = headName(kind, state.layer, state.head);
    document.getElementById("masked-legend").hidden = kind !== "decoder";
    document.getElementById("axes-note").textContent = kind === "cross" ?
      "rows: decoder tokens \u00b7 columns: source tokens" : kind === "encoder" ?
      "rows and columns: " + SOURCE + "tokens" : "rows and columns: decoder tokens";
    paint();
  }
  function paint() {
    var g = geometry, d = data[state.kind];
    ctx.setTransform(g.dpr, 0, 0, g.dpr, 0, 0);
    ctx.clearRect(0, 0, g.margin + g.gridW, g.margin + g.gridH);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(image, g.margin, g.margin, g.gridW, g.gridH);
    if (g.labelled) {
      ctx.fillStyle = cssVar("--fg") || "#000";
      ctx.font = Math.min(12, Math.floor(g.cell * 0.8)) + "px ui-monospace, monospace";
      ctx.textBaseline = "middle";
      ctx.textAlign = "right";
      for (var i = 0; i < d.nQ; i++) ctx.fillText(short(d.queries[i].label), g.margin - 4, g.margin + (i + 0.5) * g.cell);
      for (var j = 0; j < d.nK; j++) {
        ctx.save();
        ctx.translate(g.margin + (j + 0.5) * g.cell, g.margin - 4);
        ctx.rotate(-Math.PI / 2);
        ctx.textAlign = "left";
        ctx.fillText(short(d.keys[j].label), 0, 0);
        ctx.restore();
      }
    }
    if (cursor) {
      ctx.strokeStyle = cssVar("--accent") || "#1a5fd0";
      ctx.lineWidth = 2;
      ctx.strokeRect(g.margin + cursor[1] * g.cell, g.margin + cursor[0] * g.cell, Math.max(g.cell, 2), Math.max(g.cell, 2));
    }
  }
  function show(query, key) {
    var d = data[state.kind], w = weight(state.kind, state.layer, state.head, query, key);
    cursor = [query, key];
    var where = headName(state.kind, state.layer, state.head) + ": query " + query + " \u201c" +
      d.queries[query].label + "\u201d \u2192 key " + key + " \u201c" + d.keys[key].label + "\u201d";
    readout.dataset.query = query;
    readout.dataset.key = key;
    readout.dataset.weight = isNaN(w) ? "" : String(w);
    readout.textContent = where + (isNaN(w) ? ": masked (a decoder query never sees a later token)" : ": weight " + w.toFixed(3));
    paint();
  }
  canvas.addEventListener("mousemove", function (event) {
    var g = geometry, rect = canvas.getBoundingClientRect(), d = data[state.kind];
    var xx = event.clientX - rect.left - g.margin, yy = event.clientY - rect.top - g.margin;
    if (xx < 0 || yy < 0 || xx >= g.gridW || yy >= g.gridH) return;
    show(Math.min(d.nQ - 1, Math.floor(yy / g.cell)), Math.min(d.nK - 1, Math.floor(xx / g.cell)));
  });
  canvas.addEventListener("keydown", function (event) {
    var moves = { ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1] };
    var move = moves[event.key], d = data[state.kind];
    if (!move) return;
    event.preventDefault();
    var at = cursor || [0, 0];
    show(Math.max(0, Math.min(d.nQ - 1, at[0] + move[0])), Math.max(0, Math.min(d.nK - 1, at[1] + move[1])));
  });
  document.getElementById("scale").addEventListener("change", function (event) {
    state.scale = event.target.value;
    drawColorbar();
    renderHeatmap();
  });
  function drawColorbar() {
    var bar = document.getElementById("colorbar"), bctx = bar.getContext("2d"), bar_ = bctx.createImageData(256, 1);
    for (var k = 0; k < 256; k++) {
      var c = level(k / 255, state.scale) * 3;
      bar_.data.set([palette[c], palette[c + 1], palette[c + 2], 255], k * 4);
    }
    bctx.putImageData(bar_, 0, 0);
  }

  /* ---- lines view: query tokens left, key tokens right ---- */
  var left = document.getElementById("lines-left"), right = document.getElementById("lines-right");
  var lines = document.getElementById("lines-canvas"), lctx = lines.getContext("2d"), hot = null;
  function tokenColumn(column, tokens, side) {
    column.textContent = "";
    tokens.forEach(function (token, pos) {
      var tok = el("div", "tok", token.label);
      tok.title = pos + ": " + token.label + " (id " + token.id + ")";
      tok.dataset.pos = pos;
      if (side === "left") {
        tok.addEventListener("mouseenter", function () { hot = pos; drawLines(); });
        tok.addEventListener("mouseleave", function () { hot = null; drawLines(); });
      }
      column.appendChild(tok);
    });
  }
  function buildChips() {
    var chips = document.getElementById("head-chips"), d = data[state.kind];
    chips.textContent = "";
    for (var h = 0; h < d.nHeads; h++) {
      if (state.shown[h] === undefined) state.shown[h] = true;
      var chip = el("button", "chip", String(h));
      chip.type = "button";
      chip.style.setProperty("--chip", headColor(h, d.nHeads));
      chip.setAttribute("aria-pressed", String(state.shown[h]));
      chip.classList.toggle("selected", h === state.head);
      chip.addEventListener("click", (function (head) {
        return function () { state.shown[head] = !state.shown[head]; buildChips(); drawLines(); };
      })(h));
      chips.appendChild(chip);
    }
  }
  function setAll(on) {
    for (var h = 0; h < data[state.kind].nHeads; h++) state.shown[h] = on;
    buildChips();
    drawLines();
  }
  document.getElementById("heads-all").addEventListener("click", setAll.bind(null, true));
  document.getElementById("heads-none").addEventListener("click", setAll.bind(null, false));
  function renderLines() {
    var d = data[state.kind];
    tokenColumn(left, d.queries, "left");
    tokenColumn(right, d.keys, "right");
    document.getElementById("left-caption").textContent = state.kind === "encoder" ? (ONE_TEXT ? "tokens (queries)" : "source (queries)") : "decoder (queries)";
    document.getElementById("right-caption").textContent = state.kind === "decoder" ? "decoder (keys)" : (ONE_TEXT ? "tokens (keys)" : "source (keys)");
    document.getElementById("lines-layer").textContent = NAMES[state.kind].toLowerCase() + " \u00b7 layer " + d.layers[state.layer];
    buildChips();
    drawLines();
  }
  function drawLines() {
    var d = data[state.kind], row = parseFloat(cssVar("--row")) || 20, dpr = window.devicePixelRatio || 1;
    var width = lines.clientWidth || 160, height = row * Math.max(d.nQ, d.nK);
    lines.style.height = height + "px";
    lines.width = Math.round(width * dpr);
    lines.height = Math.round(height * dpr);
    lctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    lctx.clearRect(0, 0, width, height);
    lctx.lineWidth = 1.5;
    for (var h = 0; h < d.nHeads; h++) {
      if (!state.shown[h]) continue;
      lctx.strokeStyle = headColor(h, d.nHeads);
      for (var i = 0; i < d.nQ; i++) {
        if (hot !== null && hot !== i) continue;
        for (var j = 0; j < d.nK; j++) {
          var w = weight(state.kind, state.layer, h, i, j);
          if (!(w >= MIN_LINE)) continue;
          lctx.globalAlpha = Math.min(1, w);
          lctx.beginPath();
          lctx.moveTo(0, (i + 0.5) * row);
          lctx.lineTo(width, (j + 0.5) * row);
          lctx.stroke();
        }
      }
    }
    lctx.globalAlpha = 1;
    Array.prototype.forEach.call(left.children, function (tok, pos) { tok.classList.toggle("hot", pos === hot); });
  }

  /* ---- tables ---- */
  function fill(table, columns, rows, textColumns) {
    table.textContent = "";
    var head = el("thead"), tr = el("tr");
    columns.forEach(function (c) {
      var th = el("th", textColumns.indexOf(c) >= 0 ? "text" : "", c);
      th.scope = "col";
      tr.appendChild(th);
    });
    head.appendChild(tr);
    table.appendChild(head);
    var body = el("tbody");
    rows.forEach(function (row) {
      var line = el("tr");
      columns.forEach(function (c) {
        var v = row[c];
        line.appendChild(el("td", textColumns.indexOf(c) >= 0 ? "text" : "",
          v === null || v === undefined ? "\u2014" : typeof v === "number" && !Number.isInteger(v) ?
            (Math.abs(v) >= 1e-3 ? v.toFixed(4) : v.toPrecision(3)) :
            typeof v === "object" ? JSON.stringify(v) : String(v)));
      });
      body.appendChild(line);
    });
    table.appendChild(body);
    return body;
  }
  function renderStats() {
    var d = data[state.kind], table = document.getElementById("stats-table");
    document.getElementById("stats-kind").textContent = "(" + NAMES[state.kind].toLowerCase() + ")";
    var body = fill(table, d.stats.columns, d.stats.heads, []);
    Array.prototype.forEach.call(body.children, function (line, k) {
      var row = d.stats.heads[k], li = d.layers.indexOf(row.layer);
      line.classList.toggle("selected", li === state.layer && row.head === state.head);
      line.addEventListener("click", function () { select(state.kind, li, row.head); });
    });
  }

  buildSwitch();
  fill(document.getElementById("source-table"), ["position", "id", "label"], payload.tokens, ["label"]);
  fill(document.getElementById("decoder-table"), ["position", "id", "label"], payload.decoder_tokens, ["label"]);
  var config = payload.config;
  fill(document.getElementById("config-table"), ["key", "value"], Object.keys(config).map(function (k) {
    return { key: k, value: config[k] };
  }), ["key", "value"]);
  document.getElementById("summary").textContent = payload.tokens.length + " source tokens \u00b7 " +
    payload.decoder_tokens.length + " decoder tokens \u00b7 " + kinds.map(function (k) {
      return NAMES[k].toLowerCase() + " " + data[k].layers.length + " layer(s) \u00d7 " + data[k].nHeads + " heads";
    }).join(", ") + " \u00b7 " + (config.family || "") + " " + (config.weights || "");
  var lastKind = null;
  listeners.push(function () {
    if (lastKind !== state.kind) { cursor = null; lastKind = state.kind; }
    renderHeatmap();
    renderLines();
    renderStats();
  });
  drawColorbar();
  buildModel(function () {
    document.body.dataset.readyMs = String(Math.round(performance.now()));
    document.body.dataset.ready = "true";
  });
  var pending = 0;
  window.addEventListener("resize", function () {
    cancelAnimationFrame(pending);
    pending = requestAnimationFrame(function () { renderHeatmap(); drawLines(); });
  });
  select(state.kind, 0, 0);
})();
