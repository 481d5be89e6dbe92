/* Heatmap view: the selected head's matrix on a canvas (rows: queries, columns: keys),
   the masked future in its own colour, a read-out of the cell under the pointer, and a
   window of tokens for long texts. When the window has more tokens than the canvas has
   pixels, blocks of cells are pooled by their maximum, so a large weight stays visible. */
(function (AV) {
  "use strict";
  var MARGIN = 96; /* room for token labels, in CSS pixels */
  var MIN_LABELLED_CELL = 12;
  var canvas = document.getElementById("heatmap-canvas");
  var wrap = document.getElementById("heatmap-wrap");
  var readout = document.getElementById("hover-readout");
  var sizeSelect = document.getElementById("window-size");
  var startInput = document.getElementById("window-start");
  var rangeOutput = document.getElementById("window-range");
  var poolNote = document.getElementById("pool-note");
  var ctx = canvas.getContext("2d");
  var image = document.createElement("canvas"); /* the cells, one pixel per (pooled) cell */
  var geometry = null;
  var cursor = null; /* [query, key] under the pointer or keyboard cursor */
  /* [families] */
  /* the legend's swatch and name for keys outside the window: shown for a layer with one */
  var outsideLegend = [document.createElement("span"), document.createElement("span")];
  if (AV.payload.windows) {
    outsideLegend[0].className = "swatch outside-swatch";
    outsideLegend[0].setAttribute("aria-hidden", "true");
    outsideLegend[1].id = "outside-label";
    var maskedName = document.querySelector(".legend .masked-swatch").nextElementSibling;
    maskedName.after(outsideLegend[0], outsideLegend[1]);
  }
  /* [/families] */
  /* [generation] */
  /* the legend's swatch and name for the rows generation did not compute (left blank) */
  (function () {
    var swatch = document.createElement("span"), name = document.createElement("span");
    swatch.className = "swatch unknown-swatch";
    swatch.setAttribute("aria-hidden", "true");
    name.id = "unknown-label";
    name.textContent = "not computed (queries before " + (AV.promptLength - 1) + " and the last)";
    document.getElementById("pool-note").before(swatch, name);
  })();
  /* [/generation] */

  function label(pos) {
    var text = AV.tokens[pos].label;
    return text.length > 12 ? text.slice(0, 11) + "\u2026" : text;
  }

  function renderCells(n, start, pool) {
    var st = AV.state, size = Math.ceil(n / pool);
    var masked = AV.rgb(AV.cssVar("--masked") || "#d0d0d0");
    /* [families] */
    var outsideRgb = AV.rgb(AV.cssVar("--outside") || "#808080");
    /* [/families] */
    /* [generation] */
    var unknownRgb = AV.rgb(AV.cssVar("--unknown") || "#ffffff");
    /* [/generation] */
    image.width = size;
    image.height = size;
    var ictx = image.getContext("2d");
    var data = ictx.createImageData(size, size);
    var px = data.data;
    for (var bi = 0; bi < size; bi++) {
      for (var bj = 0; bj < size; bj++) {
        var best = -1;
        /* [families] */
        var outside = false; /* the block holds keys outside the sliding window */
        /* [/families] */
        /* [generation] */
        var computed = false; /* the block holds a row generation computed */
        /* [/generation] */
        for (var i = start + bi * pool; i < Math.min(start + (bi + 1) * pool, start + n); i++) {
          /* [generation] */
          if (!AV.known(i)) continue;
          computed = true;
          /* [/generation] */
          var base = AV.rowStart(st.layer, st.head, i);
          /* [families] */
          var first = AV.firstKey(st.layer, i);
          /* [/families] */
          var jEnd = Math.min(start + (bj + 1) * pool, start + n, i + 1);
          for (var j = start + bj * pool; j < jEnd; j++) {
            /* [families] */
            if (j < first) { outside = true; continue; }
            /* [/families] */
            if (AV.values[base + j] > best) best = AV.values[base + j];
          }
        }
        var o = (bi * size + bj) * 4;
        if (best < 0) {
          px[o] = masked[0]; px[o + 1] = masked[1]; px[o + 2] = masked[2];
        } else {
          var c = AV.level(best, st.scale) * 3;
          px[o] = AV.palette[c]; px[o + 1] = AV.palette[c + 1]; px[o + 2] = AV.palette[c + 2];
        }
        /* [families] */
        if (best < 0 && outside) {
          px[o] = outsideRgb[0]; px[o + 1] = outsideRgb[1]; px[o + 2] = outsideRgb[2];
        }
        /* [/families] */
        /* [generation] */
        if (!computed) {
          px[o] = unknownRgb[0]; px[o + 1] = unknownRgb[1]; px[o + 2] = unknownRgb[2];
        }
        /* [/generation] */
        px[o + 3] = 255;
      }
    }
    ictx.putImageData(data, 0, 0);
  }

  /* Lay out and render the cells (after a change of head, window, scale or size). */
  function render() {
    var st = AV.state, n = st.winSize, start = st.winStart;
    var dpr = window.devicePixelRatio || 1;
    var width = Math.max(160, Math.min(wrap.clientWidth || 640, 720));
    var labelled = (width - MARGIN) / n >= MIN_LABELLED_CELL;
    var margin = labelled ? MARGIN : 0;
    var grid = width - margin;
    var pool = Math.max(1, Math.ceil(n / Math.floor(grid * dpr)));
    canvas.style.width = width + "px";
    canvas.style.height = width + "px";
    canvas.width = Math.round(width * dpr);
    canvas.height = Math.round(width * dpr);
    geometry = { n: n, start: start, margin: margin, grid: grid, cell: grid / n, dpr: dpr, labelled: labelled };
    renderCells(n, start, pool);
    poolNote.textContent = pool > 1 ? "cells pooled " + pool + "\u00d7" + pool + " (maximum); narrow the window to see each cell" : "";
    canvas.dataset.layer = AV.layers[st.layer];
    canvas.dataset.head = st.head;
    /* where the cells are, in CSS pixels from the canvas corner (for tests and tools) */
    canvas.dataset.margin = margin;
    canvas.dataset.cell = geometry.cell;
    canvas.dataset.start = start;
    document.getElementById("heatmap-head").textContent = AV.headName(st.layer, st.head);
    /* [families] */
    document.getElementById("heatmap-head").textContent += AV.familyNote(st.layer, st.head);
    var w = AV.windowOf(st.layer), cut = w !== null && w < AV.nTokens;
    outsideLegend.forEach(function (el) { el.hidden = !cut; });
    outsideLegend[1].textContent = cut ? "outside window " + w : "";
    /* [/families] */
    /* [norms] */
    if (AV.weighting === "norm") document.getElementById("heatmap-head").textContent += " \u00b7 value-weighted";
    /* [/norms] */
    paint();
  }

  /* Draw the rendered cells, the labels and the cursor (cheap: on every pointer move). */
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
        /* [generation] */
        ctx.fillStyle = AV.isGenerated(g.start + k) ? AV.cssVar("--generated") || "#c2185b"
          : AV.cssVar("--fg") || "#000";
        /* [/generation] */
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

  function quoted(pos) {
    return "\u201c" + AV.tokens[pos].label + "\u201d";
  }

  function show(query, key) {
    var st = AV.state;
    cursor = [query, key];
    var w = AV.weight(st.layer, st.head, query, key);
    var where = AV.headName(st.layer, st.head) + ": query " + query + " " + quoted(query) +
      " \u2192 key " + key + " " + quoted(key);
    readout.dataset.layer = AV.layers[st.layer];
    readout.dataset.head = st.head;
    readout.dataset.query = query;
    readout.dataset.key = key;
    /* [families] */
    if (key < AV.firstKey(st.layer, query)) {
      var win = AV.windowOf(st.layer);
      readout.dataset.weight = "";
      readout.textContent = where + ": outside window " + win + " (query " + query + " sees keys " +
        (query - win + 1) + "\u2013" + query + ")";
      paint();
      return;
    }
    /* [/families] */
    /* [generation] */
    if (!AV.known(query)) {
      readout.dataset.weight = "";
      readout.textContent = where + ": not computed (generate keeps the rows that wrote a token: " +
        "queries " + (AV.promptLength - 1) + "\u2013" + (AV.promptLength + AV.nSteps - 2) + ")";
      paint();
      return;
    }
    /* [/generation] */
    if (isNaN(w)) {
      readout.dataset.weight = "";
      readout.textContent = where + ": masked (a query never sees a later key)";
    } else {
      readout.dataset.weight = String(w);
      readout.textContent = where + ": weight " + w.toFixed(3);
      /* [norms] */
      if (AV.weighting === "norm") {
        readout.textContent = where + ": \u2016\u03b1\u00b7f(x)\u2016 " + w.toFixed(3) + " (weight " +
          AV.attentionWeight(st.layer, st.head, query, key).toFixed(3) + ")";
      }
      /* [/norms] */
    }
    /* [generation] */
    readout.textContent += " (writing " + quoted(query + 1) + ")";
    /* [/generation] */
    paint();
  }

  function cellAt(event) {
    var g = geometry, rect = canvas.getBoundingClientRect();
    var x = event.clientX - rect.left - g.margin, y = event.clientY - rect.top - g.margin;
    if (x < 0 || y < 0 || x >= g.grid || y >= g.grid) return null;
    return [g.start + Math.floor(y / g.cell), g.start + Math.floor(x / g.cell)];
  }

  canvas.addEventListener("mousemove", function (event) {
    var cell = cellAt(event);
    if (cell) show(cell[0], cell[1]);
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

  function fillWindowControls() {
    var sizes = [8, 16, 32, 64, 128, 256, 512, 1024].filter(function (s) { return s < AV.nTokens; });
    sizes.push(AV.nTokens);
    sizes.forEach(function (s) {
      var option = document.createElement("option");
      option.value = s;
      option.textContent = s === AV.nTokens ? "all " + s + " tokens" : s + " tokens";
      sizeSelect.appendChild(option);
    });
    sizeSelect.value = AV.state.winSize;
    sizeSelect.addEventListener("change", function () {
      AV.setWindow(AV.state.winStart, Number(sizeSelect.value));
    });
    startInput.addEventListener("input", function () {
      AV.setWindow(Number(startInput.value), AV.state.winSize);
    });
    document.getElementById("scale").addEventListener("change", function (event) {
      AV.setScale(event.target.value);
    });
  }

  function syncWindowControls() {
    var st = AV.state;
    startInput.max = AV.nTokens - st.winSize;
    startInput.value = st.winStart;
    startInput.disabled = st.winSize >= AV.nTokens;
    rangeOutput.textContent = "tokens " + st.winStart + "\u2013" + (st.winStart + st.winSize - 1);
  }

  function drawColorbar() {
    var bar = document.getElementById("colorbar");
    var bctx = bar.getContext("2d"), data = bctx.createImageData(256, 1);
    for (var k = 0; k < 256; k++) {
      var c = AV.level(k / 255, AV.state.scale) * 3;
      data.data.set([AV.palette[c], AV.palette[c + 1], AV.palette[c + 2], 255], k * 4);
    }
    bctx.putImageData(data, 0, 0);
    /* the scale in use, named as on the colour bars of the PNGs */
    document.getElementById("colorbar-scale").textContent =
      AV.state.scale === "sqrt" ? "(\u221a scale)" : "(linear scale)";
  }

  AV.initHeatmap = function () {
    fillWindowControls();
    syncWindowControls();
    drawColorbar();
    AV.on(function (what) {
      if (what === "window") {
        syncWindowControls();
        cursor = null;
      }
      if (what === "scale") drawColorbar();
      render();
      if (cursor && what === "select") show(cursor[0], cursor[1]);
      /* [norms] */
      if (what !== "weighting") return;
      var end = document.getElementById("colorbar").nextElementSibling; /* the top's label */
      end.id = "colorbar-top";
      end.textContent = AV.weighting === "norm" ? String(AV.top) + " \u2016\u03b1\u00b7f(x)\u2016" : "1";
      if (cursor) show(cursor[0], cursor[1]);
      /* [/norms] */
    });
    var pending = 0;
    window.addEventListener("resize", function () {
      cancelAnimationFrame(pending);
      pending = requestAnimationFrame(render);
    });
  };
})(AV);
