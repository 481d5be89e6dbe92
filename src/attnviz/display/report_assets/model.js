/* Model view: one thumbnail per head, layers as rows. Each is a button carrying
   data-layer and data-head; clicking one (or Enter / Space) selects that head in every
   view, and the arrow keys move between them. Thumbnails pool blocks of cells by their
   maximum and are drawn a layer per animation frame, so the page paints first. */
(function (AV) {
  "use strict";
  var PIXELS = 48; /* thumbnail resolution, at most */
  var grid = document.getElementById("model-view");
  var buttons = []; /* [layer index][head] */

  function drawThumb(target, li, h) {
    var n = AV.nTokens, pool = Math.ceil(n / PIXELS), size = Math.ceil(n / pool);
    var masked = AV.rgb(AV.cssVar("--masked") || "#d0d0d0");
    /* [families] */
    var outsideRgb = AV.rgb(AV.cssVar("--outside") || "#808080");
    var outside = new Uint8Array(size * size); /* blocks holding keys outside the window */
    /* [/families] */
    /* [generation] */
    var unknownRgb = AV.rgb(AV.cssVar("--unknown") || "#ffffff");
    var computed = new Uint8Array(size); /* block rows holding a row generation computed */
    /* [/generation] */
    target.width = size;
    target.height = size;
    var tctx = target.getContext("2d"), data = tctx.createImageData(size, size), px = data.data;
    var best = new Float32Array(size * size).fill(-1);
    for (var i = 0; i < n; i++) {
      /* [generation] */
      if (!AV.known(i)) continue;
      computed[Math.floor(i / pool)] = 1;
      /* [/generation] */
      var base = AV.rowStart(li, h, i), bi = Math.floor(i / pool) * size;
      /* [families] */
      var first = AV.firstKey(li, i);
      /* [/families] */
      for (var j = 0; j <= i; j++) {
        var k = bi + Math.floor(j / pool);
        /* [families] */
        if (j < first) { outside[k] = 1; continue; }
        /* [/families] */
        if (AV.values[base + j] > best[k]) best[k] = AV.values[base + j];
      }
    }
    for (var c = 0; c < size * size; c++) {
      var rgb = masked;
      if (best[c] >= 0) {
        var p = AV.level(best[c], "sqrt") * 3;
        rgb = [AV.palette[p], AV.palette[p + 1], AV.palette[p + 2]];
      }
      /* [families] */
      if (best[c] < 0 && outside[c]) rgb = outsideRgb;
      /* [/families] */
      /* [generation] */
      if (!computed[Math.floor(c / size)]) rgb = unknownRgb;
      /* [/generation] */
      px.set([rgb[0], rgb[1], rgb[2], 255], c * 4);
    }
    tctx.putImageData(data, 0, 0);
  }

  function build() {
    grid.style.gridTemplateColumns = "max-content repeat(" + AV.nHeads + ", max-content)";
    /* [families] */
    /* grouped-query heads: a row naming each kv group over its heads, a gap between groups */
    if (AV.kvHeads) {
      grid.classList.add("grouped");
      grid.appendChild(document.createElement("span"));
      AV.kvGroups().forEach(function (group) {
        var label = document.createElement("span");
        label.className = "kv-label";
        label.dataset.kv = group.kv;
        label.textContent = "kv " + group.kv;
        label.title = "heads " + group.heads.join(", ") + " share key/value head " + group.kv;
        label.style.gridColumn = (group.heads[0] + 2) + " / span " + group.heads.length;
        grid.appendChild(label);
      });
    }
    /* [/families] */
    grid.appendChild(document.createElement("span"));
    for (var h = 0; h < AV.nHeads; h++) {
      var head = document.createElement("span");
      head.className = "head-label";
      head.textContent = "h" + h;
      /* [families] */
      if (AV.kvHeads) {
        head.title = "head " + h + ", kv head " + AV.kvHeads[h];
        head.classList.toggle("group-start", h > 0 && AV.kvHeads[h] !== AV.kvHeads[h - 1]);
      }
      /* [/families] */
      grid.appendChild(head);
    }
    AV.layers.forEach(function (number, li) {
      var label = document.createElement("span");
      label.className = "layer-label";
      label.textContent = "layer " + number;
      grid.appendChild(label);
      buttons[li] = [];
      for (var h = 0; h < AV.nHeads; h++) {
        var button = document.createElement("button");
        button.type = "button";
        button.className = "thumb";
        button.dataset.layer = number;
        button.dataset.head = h;
        button.dataset.index = li;
        button.setAttribute("aria-label", "layer " + number + ", head " + h);
        /* [families] */
        if (AV.kvHeads) {
          button.dataset.kv = AV.kvHeads[h];
          button.setAttribute("aria-label", "layer " + number + ", head " + h + ", kv head " + AV.kvHeads[h]);
          button.classList.toggle("group-start", h > 0 && AV.kvHeads[h] !== AV.kvHeads[h - 1]);
        }
        if (AV.windowOf(li) !== null) button.title = "layer " + number + ", head " + h + " \u00b7 " + AV.windowNote(li);
        /* [/families] */
        button.setAttribute("aria-pressed", "false");
        button.tabIndex = -1; /* one tab stop for the grid; arrows move inside */
        button.appendChild(document.createElement("canvas"));
        button.addEventListener("click", function (event) {
          var b = event.currentTarget;
          AV.select(Number(b.dataset.index), Number(b.dataset.head));
        });
        buttons[li].push(button);
        grid.appendChild(button);
      }
    });
    grid.addEventListener("keydown", function (event) {
      var moves = { ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1] };
      var move = moves[event.key], b = event.target.closest(".thumb");
      if (!move || !b) return;
      event.preventDefault();
      var li = Math.max(0, Math.min(AV.nLayers - 1, Number(b.dataset.index) + move[0]));
      var h = Math.max(0, Math.min(AV.nHeads - 1, Number(b.dataset.head) + move[1]));
      b.tabIndex = -1;
      buttons[li][h].tabIndex = 0;
      buttons[li][h].focus();
    });
  }

  function drawLayers(done) {
    var li = 0;
    function next() {
      for (var h = 0; h < AV.nHeads; h++) drawThumb(buttons[li][h].firstChild, li, h);
      li += 1;
      if (li < AV.nLayers) requestAnimationFrame(next);
      else done();
    }
    requestAnimationFrame(next);
  }

  AV.initModel = function (done) {
    build();
    AV.on(function (what) {
      if (what !== "select") return;
      buttons.forEach(function (row, li) {
        row.forEach(function (b, h) {
          var on = li === AV.state.layer && h === AV.state.head;
          b.setAttribute("aria-pressed", on ? "true" : "false");
          if (on) b.tabIndex = 0;
          else if (document.activeElement !== b) b.tabIndex = -1;
        });
      });
    });
    drawLayers(done);
    /* [norms] */
    /* the value-weighted switch: every thumbnail drawn again; data-weighting says when done */
    AV.on(function (what) {
      if (what !== "weighting") return;
      delete grid.dataset.weighting;
      drawLayers(function () { grid.dataset.weighting = AV.weighting; });
    });
    /* [/norms] */
  };
})(AV);
