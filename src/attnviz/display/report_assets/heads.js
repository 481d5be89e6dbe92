/* Heads view (after bertviz's head view): the window's tokens in two columns, a line from
   each query (left) to each key (right) with opacity proportional to the weight, one
   colour per head. Chips toggle heads; hovering a token keeps only its lines. */
(function (AV) {
  "use strict";
  var LEVELS = 32; /* opacity steps; weights under 1/(2 * LEVELS) draw nothing */
  var canvas = document.getElementById("heads-canvas");
  var left = document.getElementById("heads-left");
  var right = document.getElementById("heads-right");
  var chips = document.getElementById("head-chips");
  var layerSelect = document.getElementById("layer-select");
  var ctx = canvas.getContext("2d");
  var active = [];
  var layer = 0;
  var focus = null; /* { side: "query" | "key", pos } while a token is hovered */

  function rowHeight() {
    return parseFloat(AV.cssVar("--row")) || 20;
  }

  function draw() {
    var st = AV.state, n = st.winSize, start = st.winStart, row = rowHeight();
    var dpr = window.devicePixelRatio || 1, width = canvas.clientWidth || 160, height = n * row;
    canvas.style.height = height + "px";
    canvas.width = Math.round(width * dpr);
    canvas.height = Math.round(height * dpr);
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, width, height);
    ctx.lineWidth = 1.5;
    for (var h = 0; h < AV.nHeads; h++) {
      if (!active[h]) continue;
      var paths = []; /* one path per opacity level: a few strokes instead of thousands */
      for (var i = start; i < start + n; i++) {
        if (focus && focus.side === "query" && focus.pos !== i) continue;
        /* [generation] */
        if (!AV.known(i)) continue;
        /* [/generation] */
        var base = AV.rowStart(layer, h, i);
        for (var j = start; j <= i; j++) {
          if (focus && focus.side === "key" && focus.pos !== j) continue;
          var level = Math.round(AV.values[base + j] * LEVELS);
          if (level === 0) continue;
          var path = paths[level] || (paths[level] = new Path2D());
          path.moveTo(0, (i - start + 0.5) * row);
          path.lineTo(width, (j - start + 0.5) * row);
        }
      }
      ctx.strokeStyle = AV.headColor(h);
      for (var k = 1; k <= LEVELS; k++) {
        if (!paths[k]) continue;
        ctx.globalAlpha = k / LEVELS;
        ctx.stroke(paths[k]);
      }
    }
    ctx.globalAlpha = 1;
  }

  function fillTokens() {
    var st = AV.state;
    [left, right].forEach(function (column) {
      column.textContent = "";
      for (var pos = st.winStart; pos < st.winStart + st.winSize; pos++) {
        var tok = document.createElement("div");
        tok.className = "tok";
        tok.dataset.pos = pos;
        tok.dataset.side = column === left ? "query" : "key";
        tok.textContent = AV.tokens[pos].label;
        tok.title = pos + ": " + AV.tokens[pos].label + " (id " + AV.tokens[pos].id + ")";
        /* [generation] */
        if (AV.isGenerated(pos)) {
          tok.classList.add("generated");
          tok.title += ", generated with probability " +
            AV.generation.steps[pos - AV.promptLength].probability.toFixed(4);
        }
        /* [/generation] */
        column.appendChild(tok);
      }
    });
  }

  function hover(event) {
    var tok = event.target.closest(".tok");
    var next = tok ? { side: tok.dataset.side, pos: Number(tok.dataset.pos) } : null;
    /* [generation] */
    if (!next) next = stepFocus(); /* back to the chosen step's row */
    /* [/generation] */
    if (JSON.stringify(next) === JSON.stringify(focus)) return;
    document.querySelectorAll("#heads-view .tok.hot").forEach(function (el) { el.classList.remove("hot"); });
    if (tok) tok.classList.add("hot");
    focus = next;
    draw();
  }

  /* [generation] */
  /* attnviz generate: the step slider. Choosing generated token g keeps only the lines of
     its row (the query at position P + g - 1, in every head shown) and says what the model
     wrote there: the token, its probability, the top-k alternatives, and each head's
     strongest keys. "all rows" goes back to every row. */
  var step = null; /* the chosen generated token, or null */
  var stepInput, stepLabel, stepInfo, stepTopk, stepHeads;
  var STRONGEST = 3, LEAST = 0.005; /* keys listed per head: at most 3, none under 0.005 */

  function stepFocus() {
    return step === null ? null : { side: "query", pos: AV.promptLength - 1 + step };
  }

  function tableCell(row, tag, text, className) {
    var el = document.createElement(tag);
    el.textContent = text;
    if (className) el.className = className;
    row.appendChild(el);
    return el;
  }

  function quotedToken(pos) {
    return "\u201c" + AV.tokens[pos].label + "\u201d";
  }

  function fillTopk(s) {
    stepTopk.textContent = "";
    stepTopk.createCaption().textContent = "What the model expected (top " + s.top_k.length + ")";
    var head = stepTopk.createTHead().insertRow();
    ["rank", "token", "id", "probability"].forEach(function (name) {
      tableCell(head, "th", name, name === "token" ? "text" : "");
    });
    var body = stepTopk.createTBody();
    var rows = s.top_k.map(function (alt, k) { return [String(k + 1), alt]; });
    if (!s.top_k.some(function (alt) { return alt.id === s.id; })) {
      rows.push(["\u2014", s]); /* sampled outside the top k */
    }
    rows.forEach(function (entry) {
      var alt = entry[1], tr = body.insertRow();
      tr.dataset.id = alt.id;
      tr.dataset.probability = alt.probability;
      if (alt.id === s.id) tr.classList.add("chosen");
      tableCell(tr, "td", entry[0]);
      tableCell(tr, "td", alt.label, "text");
      tableCell(tr, "td", String(alt.id));
      tableCell(tr, "td", alt.probability.toFixed(4));
    });
  }

  function fillStepHeads() {
    stepHeads.textContent = "";
    if (step === null) return;
    var query = AV.promptLength - 1 + step;
    stepHeads.createCaption().textContent = "layer " + AV.layers[layer] + ": each head's strongest keys";
    var head = stepHeads.createTHead().insertRow();
    tableCell(head, "th", "head");
    tableCell(head, "th", "strongest keys (position, weight)", "text");
    var body = stepHeads.createTBody();
    for (var h = 0; h < AV.nHeads; h++) {
      var base = AV.rowStart(layer, h, query), keys = [];
      for (var j = 0; j <= query; j++) keys.push(j);
      keys.sort(function (a, b) { return AV.values[base + b] - AV.values[base + a] || a - b; });
      keys = keys.slice(0, STRONGEST).filter(function (j, k) {
        return k === 0 || AV.values[base + j] >= LEAST;
      });
      var tr = body.insertRow();
      tr.dataset.head = h;
      tr.dataset.keys = keys.join(",");
      tr.dataset.weights = keys.map(function (j) { return AV.values[base + j]; }).join(",");
      tableCell(tr, "td", String(h)).style.color = AV.headColor(h);
      tableCell(tr, "td", keys.map(function (j) {
        return quotedToken(j) + " (" + j + ") " + AV.values[base + j].toFixed(3);
      }).join(", "), "text");
    }
  }

  function markStep() {
    document.querySelectorAll("#heads-view .tok.step-query, #heads-view .tok.step-token")
      .forEach(function (el) { el.classList.remove("step-query", "step-token"); });
    if (step === null) return;
    var pos = AV.promptLength + step;
    var query = left.querySelector('.tok[data-pos="' + (pos - 1) + '"]');
    var written = right.querySelector('.tok[data-pos="' + pos + '"]');
    if (query) query.classList.add("step-query");
    if (written) written.classList.add("step-token");
  }

  function showStep(g) {
    step = g;
    stepInfo.dataset.step = g === null ? "" : String(g);
    if (g === null) {
      stepLabel.textContent = "all " + AV.nSteps + " generated rows";
      stepInfo.textContent = "Move the slider to choose a generated token: its row alone, what the " +
        "model wrote there, with which probability, and what else it expected.";
      stepTopk.textContent = "";
    } else {
      var s = AV.generation.steps[g], pos = AV.promptLength + g, st = AV.state;
      stepLabel.textContent = (g + 1) + " of " + AV.nSteps + " (position " + pos + ")";
      stepInfo.dataset.position = pos;
      stepInfo.dataset.id = s.id;
      stepInfo.dataset.probability = s.probability;
      stepInfo.textContent = "Generated token " + (g + 1) + " of " + AV.nSteps + " (position " + pos +
        "): wrote \u201c" + s.label +
        "\u201d (id " + s.id + ") with probability " + s.probability.toFixed(4) +
        ", from the query at position " + (pos - 1) + " " + quotedToken(pos - 1) + ".";
      fillTopk(s);
      if (pos - 1 < st.winStart || pos >= st.winStart + st.winSize) {
        AV.setWindow(pos + 1 - st.winSize, st.winSize); /* the query and the token in view */
      }
    }
    fillStepHeads();
    focus = stepFocus();
    markStep();
    draw();
  }

  function buildSteps() {
    var controls = document.createElement("div");
    controls.className = "controls step-controls";
    var label = document.createElement("label");
    label.textContent = "Generated token ";
    stepInput = document.createElement("input");
    stepInput.type = "range";
    stepInput.id = "step";
    stepInput.min = "0";
    stepInput.max = String(AV.nSteps - 1);
    stepInput.step = "1";
    stepInput.value = "0";
    label.appendChild(stepInput);
    stepLabel = document.createElement("output");
    stepLabel.id = "step-label";
    stepLabel.htmlFor = "step";
    var all = document.createElement("button");
    all.type = "button";
    all.id = "step-all";
    all.textContent = "all rows";
    controls.append(label, stepLabel, all);
    var panel = document.createElement("div");
    panel.id = "step-panel";
    panel.className = "step-panel";
    stepInfo = document.createElement("p");
    stepInfo.id = "step-info";
    stepInfo.className = "readout";
    stepInfo.setAttribute("aria-live", "polite");
    stepTopk = document.createElement("table");
    stepTopk.id = "step-topk";
    stepHeads = document.createElement("table");
    stepHeads.id = "step-heads";
    panel.appendChild(stepInfo);
    [stepTopk, stepHeads].forEach(function (table) {
      var scroll = document.createElement("div");
      scroll.className = "table-scroll";
      scroll.appendChild(table);
      panel.appendChild(scroll);
    });
    document.querySelector("#heads-section .hint").after(controls, panel);
    stepInput.addEventListener("input", function () { showStep(Number(stepInput.value)); });
    all.addEventListener("click", function () { showStep(null); });
  }

  /* [/generation] */
  function syncChips() {
    chips.querySelectorAll(".chip").forEach(function (chip) {
      var h = Number(chip.dataset.head);
      chip.setAttribute("aria-pressed", active[h] ? "true" : "false");
      chip.classList.toggle("selected", layer === AV.state.layer && h === AV.state.head);
    });
  }

  function setAll(on) {
    for (var h = 0; h < AV.nHeads; h++) active[h] = on;
    syncChips();
    draw();
  }

  AV.initHeads = function () {
    AV.layers.forEach(function (number, li) {
      var option = document.createElement("option");
      option.value = li;
      option.textContent = "layer " + number;
      layerSelect.appendChild(option);
    });
    layerSelect.addEventListener("change", function () {
      layer = Number(layerSelect.value);
      /* [generation] */
      fillStepHeads();
      /* [/generation] */
      syncChips();
      draw();
    });
    /* [families] */
    var kvGroup = null; /* the chips' current kv group (grouped-query heads) */
    /* [/families] */
    for (var h = 0; h < AV.nHeads; h++) {
      active[h] = true;
      var chip = document.createElement("button");
      chip.type = "button";
      chip.className = "chip";
      chip.dataset.head = h;
      chip.textContent = h;
      chip.title = "head " + h + ": show or hide its lines";
      chip.setAttribute("aria-label", "head " + h);
      chip.style.setProperty("--chip", AV.headColor(h));
      /* [families] */
      if (AV.kvHeads) {
        chip.dataset.kv = AV.kvHeads[h];
        chip.title = "head " + h + " (kv head " + AV.kvHeads[h] + "): show or hide its lines";
        if (h === 0 || AV.kvHeads[h] !== AV.kvHeads[h - 1]) {
          /* a kv group's chips stay together behind its name */
          kvGroup = document.createElement("span");
          kvGroup.className = "kv-group";
          kvGroup.dataset.kv = AV.kvHeads[h];
          var kvLabel = document.createElement("span");
          kvLabel.className = "kv-label";
          kvLabel.textContent = "kv " + AV.kvHeads[h] + ":";
          kvGroup.appendChild(kvLabel);
          chips.appendChild(kvGroup);
        }
      }
      /* [/families] */
      chip.addEventListener("click", function (event) {
        var which = Number(event.currentTarget.dataset.head);
        active[which] = !active[which];
        syncChips();
        draw();
      });
      chips.appendChild(chip);
      /* [families] */
      if (AV.kvHeads) kvGroup.appendChild(chip);
      /* [/families] */
    }
    document.getElementById("heads-all").addEventListener("click", function () { setAll(true); });
    document.getElementById("heads-none").addEventListener("click", function () { setAll(false); });
    var view = document.getElementById("heads-view");
    view.addEventListener("mouseover", hover);
    view.addEventListener("mouseleave", hover);
    fillTokens();
    /* [generation] */
    buildSteps();
    showStep(null);
    /* [/generation] */
    AV.on(function (what) {
      if (what === "select") {
        /* a head chosen elsewhere: show its layer and that head alone */
        layer = AV.state.layer;
        layerSelect.value = layer;
        for (var h = 0; h < AV.nHeads; h++) active[h] = h === AV.state.head;
        /* [generation] */
        fillStepHeads();
        /* [/generation] */
      }
      if (what === "window") {
        focus = null;
        fillTokens();
        /* [generation] */
        focus = stepFocus();
        markStep();
        /* [/generation] */
      }
      if (what === "scale") return;
      syncChips();
      draw();
    });
    var pending = 0;
    window.addEventListener("resize", function () {
      cancelAnimationFrame(pending);
      pending = requestAnimationFrame(draw);
    });
  };
})(AV);
