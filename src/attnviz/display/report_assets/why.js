/* attnviz why: the head's heatmap; a click splits that cell's score (docs/why.md).
   The data holds each component's part of the scaled query and of the key at every position,
   [components, T, head_dim] for the queries and [key components, T_k, head_dim] for the keys
   (row-major; cross-attention's keys are another text's); the matrix of cell (i, j) is
   query_parts[:, i] . key_parts[:, j], each entry summed over head_dim in double precision,
   and the score adds T5's relative position bias [T, T_k] where there is one.
   Nothing is precomputed per cell. */
(function () {
  "use strict";
  var P = JSON.parse(document.getElementById("why-data").textContent);
  var T = P.n_tokens, TK = P.n_keys, C = P.components.length, CK = P.key_components.length;
  var D = P.head_dim;

  /* base64url -> a typed array (little-endian, as the page was written) */
  function decode(text, dtype) {
    var binary = atob(text.replace(/-/g, "+").replace(/_/g, "/"));
    var bytes = new Uint8Array(binary.length);
    for (var k = 0; k < binary.length; k++) bytes[k] = binary.charCodeAt(k);
    return dtype === "float64" ? new Float64Array(bytes.buffer) : new Float32Array(bytes.buffer);
  }
  var weights = decode(P.weights, "float32");
  var Q = decode(P.query_parts, P.dtype), K = decode(P.key_parts, P.dtype);
  var bias = P.position_bias === null ? null : decode(P.position_bias, "float64");

  function visible(i, j) {
    if (P.attention === "cross") return true;
    if (P.attention === "encoder") return P.window === null || Math.abs(j - i) < P.window;
    return j <= i && (P.window === null || j > i - P.window);
  }
  function capped(s) {
    return P.softcap === null ? s : P.softcap * Math.tanh(s / P.softcap);
  }
  function label(t) {
    return t + " (" + P.tokens[t] + ")";
  }
  function keyLabel(t) {
    return t + " (" + P.key_tokens[t] + ")";
  }

  /* The C x CK matrix of cell (i, j), row-major: entry (a, b) = u_a(i) . v_b(j). */
  function matrix(i, j) {
    var out = new Float64Array(C * CK);
    for (var a = 0; a < C; a++) {
      var qa = (a * T + i) * D;
      for (var b = 0; b < CK; b++) {
        var kb = (b * TK + j) * D, sum = 0;
        for (var d = 0; d < D; d++) sum += Q[qa + d] * K[kb + d];
        out[a * CK + b] = sum;
      }
    }
    return out;
  }

  /* ---------------------------------------------------------------- the heatmap */
  var heatmap = document.getElementById("heatmap");
  var cell = Math.max(2, Math.min(22, Math.floor(720 / Math.max(T, TK))));
  heatmap.width = TK * cell;
  heatmap.height = T * cell;
  heatmap.dataset.cell = String(cell);
  heatmap.tabIndex = 0;
  var selected = null;

  function shade(w) { /* white -> dark blue, square-root scale */
    var v = Math.sqrt(Math.max(0, Math.min(1, w)));
    return "rgb(" + Math.round(255 - v * 247) + "," + Math.round(255 - v * 207) + "," +
      Math.round(255 - v * 148) + ")";
  }
  function drawHeatmap() {
    var g = heatmap.getContext("2d");
    for (var i = 0; i < T; i++) {
      for (var j = 0; j < TK; j++) {
        g.fillStyle = visible(i, j) ? shade(weights[i * TK + j]) : "#d0d0d0";
        g.fillRect(j * cell, i * cell, cell, cell);
      }
    }
    if (selected) {
      g.strokeStyle = "#e08a00";
      g.lineWidth = Math.max(1, cell / 6);
      g.strokeRect(selected[1] * cell + 0.5, selected[0] * cell + 0.5, cell - 1, cell - 1);
    }
  }

  /* ---------------------------------------------------------------- the split */
  function fill(table, columns, rows) {
    var caption = table.querySelector("caption");
    table.textContent = "";
    table.appendChild(caption);
    var head = table.insertRow();
    columns.forEach(function (c) {
      var th = document.createElement("th");
      th.textContent = c;
      head.appendChild(th);
    });
    rows.forEach(function (row) {
      var tr = table.insertRow();
      row.forEach(function (value) {
        var td = tr.insertCell();
        td.textContent = typeof value === "number" ? value.toFixed(4) : String(value);
        if (typeof value === "number") td.className = "number";
      });
    });
  }
  function largest(values, n) {
    var order = [];
    for (var k = 0; k < values.length; k++) order.push(k);
    order.sort(function (x, y) { return Math.abs(values[y]) - Math.abs(values[x]) || x - y; });
    return order.slice(0, n);
  }
  function drawMatrix(m, top) {
    var canvas = document.getElementById("matrix");
    var size = Math.max(2, Math.min(16, Math.floor(720 / Math.max(C, CK))));
    canvas.width = CK * size;
    canvas.height = C * size;
    var g = canvas.getContext("2d");
    for (var a = 0; a < C; a++) {
      for (var b = 0; b < CK; b++) {
        var t = top > 0 ? m[a * CK + b] / top : 0, v = Math.min(1, Math.abs(t));
        var colour = t >= 0 ? [178, 24, 43] : [33, 102, 172];
        g.fillStyle = "rgb(" + Math.round(255 - v * (255 - colour[0])) + "," +
          Math.round(255 - v * (255 - colour[1])) + "," + Math.round(255 - v * (255 - colour[2])) + ")";
        g.fillRect(b * size, a * size, size, size);
      }
    }
  }

  var explain = document.getElementById("explain");
  function select(i, j) {
    selected = [i, j];
    drawHeatmap();
    document.getElementById("cell-name").textContent = "query " + label(i) + " \u2192 " +
      (P.attention === "cross" ? "source key " : "key ") + keyLabel(j);
    explain.dataset.query = String(i);
    explain.dataset.key = String(j);
    if (!visible(i, j)) {
      explain.dataset.score = "";
      explain.textContent = "Query " + i + " does not see key " + j +
        (P.attention === "decoder" && j > i ? " (the causal mask)" : P.attention === "encoder" ?
          " (layer " + P.layer + "'s local window of \u00b1" + (P.window - 1) + " positions)" :
          " (layer " + P.layer + "'s sliding window of " + P.window + " tokens)") + ": no score.";
      return;
    }
    var m = matrix(i, j), score = 0, top = 0;
    var rows = new Float64Array(C), columns = new Float64Array(CK);
    for (var a = 0; a < C; a++) {
      for (var b = 0; b < CK; b++) {
        var value = m[a * CK + b];
        score += value;
        rows[a] += value;
        columns[b] += value;
        top = Math.max(top, Math.abs(value));
      }
    }
    var extra = bias === null ? 0 : bias[i * TK + j];
    score += extra;
    explain.dataset.score = String(score);
    explain.dataset.weight = String(weights[i * TK + j]);
    var text = "score " + score.toFixed(4) + " = the sum of " + C + " \u00d7 " + CK +
      " contributions" + (bias === null ? "" : " + the relative position bias " + extra.toFixed(4)) +
      "; weight " + weights[i * TK + j].toFixed(4);
    if (P.softcap !== null) {
      text += "; split before the softcap: " + P.softcap + "\u00b7tanh(score/" + P.softcap + ") = " +
        capped(score).toFixed(4);
    }
    explain.textContent = text;
    fill(document.getElementById("pairs"), ["query component", "key component", "contribution"],
      largest(m, 10).map(function (k) {
        return [P.components[Math.floor(k / CK)], P.key_components[k % CK], m[k]];
      }));
    fill(document.getElementById("query-totals"), ["component", "total"],
      largest(rows, 10).map(function (k) { return [P.components[k], rows[k]]; }));
    fill(document.getElementById("key-totals"), ["component", "total"],
      largest(columns, 10).map(function (k) { return [P.key_components[k], columns[k]]; }));
    document.getElementById("matrix-top").textContent = top.toPrecision(3);
    drawMatrix(m, top);
  }

  heatmap.addEventListener("click", function (event) {
    var i = Math.floor(event.offsetY / cell), j = Math.floor(event.offsetX / cell);
    if (i >= 0 && i < T && j >= 0 && j < TK) select(i, j);
  });
  heatmap.addEventListener("keydown", function (event) {
    var move = {ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1]}[event.key];
    if (!move || !selected) return;
    event.preventDefault();
    select(Math.max(0, Math.min(T - 1, selected[0] + move[0])),
      Math.max(0, Math.min(TK - 1, selected[1] + move[1])));
  });

  document.getElementById("head-name").textContent = (P.attention === "decoder" ? "" :
    P.attention + " attention, ") + "layer " + P.layer + ", head " + P.head;
  document.getElementById("summary").textContent = (TK === T && P.attention !== "cross" ?
    T + " tokens \u00b7 " : T + " query tokens \u00d7 " + TK + " source tokens \u00b7 ") +
    (C === CK ? C + " components per side" : C + " query-side and " + CK + " key-side components") +
    " \u00b7 key/value head " + P.kv_head +
    (P.window !== null ? (P.attention === "encoder" ? " \u00b7 local window of \u00b1" +
      (P.window - 1) + " positions" : " \u00b7 sliding window of " + P.window + " tokens") : "") +
    (bias !== null ? " \u00b7 scores include the relative position bias" : "") +
    (P.softcap !== null ? " \u00b7 scores softcapped at " + P.softcap + " (split before the cap)" : "") +
    " \u00b7 parts stored as " + P.dtype;
  select(P.query, P.key);
  document.body.dataset.ready = "true";
})();
