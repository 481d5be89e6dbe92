/* Rollout view (attnviz report --rollout; Abnar & Zuidema 2020): how much each position's
   representation after the last layer draws on each input token. Per layer
   A~ = (mean over heads of A + I) / 2, rows summing to 1; R = A~_L ... A~_0. One matrix for
   the model, drawn as the heatmap draws a head (the same window, colour scale and pooling
   by block maximum), with a read-out. With the value-weighted switch it shows the rollout
   of the norms' rows renormalised. Only in reports that hold a rollout. */
(function (AV) {
  "use strict";
  var spec = AV.payload.rollout;
  if (!spec) return;
  var MARGIN = 96, MIN_LABELLED_CELL = 12;
  var n = spec.shape[0], perMatrix = n * (n + 1) / 2;

  function decode(text) { /* u16 lower triangle, as the weights' (docs/report.md) */
    var alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    var lookup = new Uint8Array(128), k;
    for (k = 0; k < 64; k++) lookup[alphabet.charCodeAt(k)] = k;
    var end = text.length;
    while (end > 0 && text.charCodeAt(end - 1) === 61) end--;
    var bytes = new Uint8Array(Math.floor(end * 3 / 4)), o = 0, buffer = 0, bits = 0;
    for (k = 0; k < end; k++) {
      buffer = ((buffer << 6) | lookup[text.charCodeAt(k)]) & 0xffffff;
      bits += 6;
      if (bits >= 8) { bits -= 8; bytes[o++] = (buffer >> bits) & 255; }
    }
    var values = new Float32Array(bytes.length / 2);
    for (k = 0; k < values.length; k++) values[k] = (bytes[2 * k] | (bytes[2 * k + 1] << 8)) / 65535;
    if (values.length !== perMatrix) throw new Error("rollout data has the wrong length");
    return values;
  }

  var matrices = { attention: decode(spec.attention) };
  if (spec.norm) matrices.norm = decode(spec.norm);
  function current() {
    return AV.weighting === "norm" && matrices.norm ? "norm" : "attention";
  }
  function value(i, j) {
    return j > i ? NaN : matrices[current()][i * (i + 1) / 2 + j];
  }

  var layers = spec.layers;
  var through = layers.length === 1 ? "layer " + layers[0] : "layers " + layers[0] + "\u2013" + layers[layers.length - 1];
  var section = document.createElement("section");
  section.id = "rollout-section";
  section.setAttribute("aria-labelledby", "rollout-title");
  var title = document.createElement("h2");
  title.id = "rollout-title";
  var hint = document.createElement("p");
  hint.className = "hint";
  hint.textContent = "Row i: how much position i after layer " + layers[layers.length - 1] +
    " draws on each input token (rows sum to 1). Each layer passes on half of what its heads " +
    "attend to (their mean) and half of the token itself; the layers' matrices multiplied " +
    "(Abnar & Zuidema 2020). The heatmap's window and colour scale apply here too.";
  var wrap = document.createElement("div");
  wrap.className = "canvas-wrap";
  var canvas = document.createElement("canvas");
  canvas.id = "rollout-canvas";
  canvas.tabIndex = 0;
  canvas.setAttribute("aria-label", "Attention rollout: rows are positions after the last layer, " +
    "columns input tokens. Arrow keys move the read-out.");
  wrap.appendChild(canvas);
  var readout = document.createElement("p");
  readout.id = "rollout-readout";
  readout.className = "readout";
  readout.setAttribute("aria-live", "polite");
  readout.textContent = "Hover over a cell (or focus the picture and use the arrow keys) to read it.";
  section.append(title, hint, wrap, readout);
  document.getElementById("heatmap-section").after(section);
  var link = document.createElement("a");
  link.href = "#rollout-section";
  link.textContent = "Rollout";
  document.querySelector('nav a[href="#heatmap-section"]').after(link);

  var ctx = canvas.getContext("2d"), image = document.createElement("canvas");
  var geometry = null, cursor = null;

  function label(pos) {
    var text = AV.tokens[pos].label;
    return text.length > 12 ? text.slice(0, 11) + "\u2026" : text;
  }

  function renderCells(size, start, count, pool) {
    var masked = AV.rgb(AV.cssVar("--masked") || "#d0d0d0");
    image.width = size;
    image.height = size;
    var ictx = image.getContext("2d"), data = ictx.createImageData(size, size), px = data.data;
    for (var bi = 0; bi < size; bi++) {
      for (var bj = 0; bj < size; bj++) {
        var best = -1;
        for (var i = start + bi * pool; i < Math.min(start + (bi + 1) * pool, start + count); i++) {
          var jEnd = Math.min(start + (bj + 1) * pool, start + count, i + 1);
          for (var j = start + bj * pool; j < jEnd; j++) best = Math.max(best, value(i, j));
        }
        var o = (bi * size + bj) * 4, rgb = masked;
        if (best >= 0) {
          var c = AV.level(Math.min(best, 1), AV.state.scale) * 3;
          rgb = [AV.palette[c], AV.palette[c + 1], AV.palette[c + 2]];
        }
        px[o] = rgb[0]; px[o + 1] = rgb[1]; px[o + 2] = rgb[2]; px[o + 3] = 255;
      }
    }
    ictx.putImageData(data, 0, 0);
  }

  function render() {
    var st = AV.state, count = st.winSize, start = st.winStart;
    var dpr = window.devicePixelRatio || 1;
    var width = Math.max(160, Math.min(wrap.clientWidth || 640, 720));
    var labelled = (width - MARGIN) / count >= MIN_LABELLED_CELL;
    var margin = labelled ? MARGIN : 0, grid = width - margin;
    var pool = Math.max(1, Math.ceil(count / Math.floor(grid * dpr)));
    canvas.style.width = width + "px";
    canvas.style.height = width + "px";
    canvas.width = Math.round(width * dpr);
    canvas.height = Math.round(width * dpr);
    geometry = { n: count, start: start, margin: margin, grid: grid, cell: grid / count, dpr: dpr,
                 labelled: labelled };
    renderCells(Math.ceil(count / pool), start, count, pool);
    canvas.dataset.weighting = current();
    canvas.dataset.margin = margin;
    canvas.dataset.cell = geometry.cell;
    canvas.dataset.start = start;
    title.textContent = (current() === "norm" ? "Value-weighted rollout" : "Attention rollout") +
      " through " + through + (pool > 1 ? " (cells pooled " + pool + "\u00d7" + pool + ", maximum)" : "");
    paint();
  }

  function paint() {
    var g = geometry;
    ctx.setTransform(g.dpr, 0, 0, g.dpr, 0, 0);
    ctx.clearRect(0, 0, g.margin + g.grid, g.margin + g.grid);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(image, g.margin, g.margin, g.grid, g.grid);
    if (g.labelled) {
      ctx.fillStyle = AV.cssVar("--fg") || "#000";
      ctx.font = Math.min(12, Math.floor(g.cell * 0.8)) + "px ui-monospace, monospace";
      ctx.textBaseline = "middle";
      for (var k = 0; k < g.n; k++) {
        var centre = g.margin + (k + 0.5) * g.cell;
        ctx.textAlign = "right";
        ctx.fillText(label(g.start + k), g.margin - 4, centre);
        ctx.save();
        ctx.translate(centre, g.margin - 4);
        ctx.rotate(-Math.PI / 2);
        ctx.textAlign = "left";
        ctx.fillText(label(g.start + k), 0, 0);
        ctx.restore();
      }
    }
    if (cursor) {
      ctx.strokeStyle = AV.cssVar("--accent") || "#1a5fd0";
      ctx.lineWidth = 2;
      ctx.strokeRect(g.margin + (cursor[1] - g.start) * g.cell, g.margin + (cursor[0] - g.start) * g.cell,
        Math.max(g.cell, 2), Math.max(g.cell, 2));
    }
  }

  function show(query, key) {
    cursor = [query, key];
    var v = value(query, key);
    var where = "position " + query + " \u201c" + AV.tokens[query].label + "\u201d \u2190 input token " +
      key + " \u201c" + AV.tokens[key].label + "\u201d";
    readout.dataset.query = query;
    readout.dataset.key = key;
    readout.dataset.weighting = current();
    readout.dataset.value = isNaN(v) ? "" : String(v);
    readout.textContent = where + (isNaN(v) ? ": masked (a position never draws on a later token)"
      : ": rollout " + v.toFixed(3));
    paint();
  }

  canvas.addEventListener("mousemove", function (event) {
    var g = geometry, rect = canvas.getBoundingClientRect();
    var x = event.clientX - rect.left - g.margin, y = event.clientY - rect.top - g.margin;
    if (x < 0 || y < 0 || x >= g.grid || y >= g.grid) return;
    show(g.start + Math.floor(y / g.cell), g.start + Math.floor(x / g.cell));
  });
  canvas.addEventListener("keydown", function (event) {
    var moves = { ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1] };
    var move = moves[event.key];
    if (!move) return;
    event.preventDefault();
    var g = geometry, at = cursor || [g.start, g.start];
    var clamp = function (v) { return Math.max(g.start, Math.min(g.start + g.n - 1, v)); };
    show(clamp(at[0] + move[0]), clamp(at[1] + move[1]));
  });

  render();
  AV.on(function (what) {
    if (what === "select") return;
    if (what === "window") cursor = null;
    render();
    if (cursor) show(cursor[0], cursor[1]);
  });
  var pending = 0;
  window.addEventListener("resize", function () {
    cancelAnimationFrame(pending);
    pending = requestAnimationFrame(render);
  });
})(AV);
