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
        column.appendChild(tok);
      }
    });
  }

  function hover(event) {
    var tok = event.target.closest(".tok");
    var next = tok ? { side: tok.dataset.side, pos: Number(tok.dataset.pos) } : null;
    if (JSON.stringify(next) === JSON.stringify(focus)) return;
    document.querySelectorAll("#heads-view .tok.hot").forEach(function (el) { el.classList.remove("hot"); });
    if (tok) tok.classList.add("hot");
    focus = next;
    draw();
  }

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
    AV.on(function (what) {
      if (what === "select") {
        /* a head chosen elsewhere: show its layer and that head alone */
        layer = AV.state.layer;
        layerSelect.value = layer;
        for (var h = 0; h < AV.nHeads; h++) active[h] = h === AV.state.head;
      }
      if (what === "window") {
        focus = null;
        fillTokens();
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
