/* attnviz encoder report: what the page of an encoder model (BERT, RoBERTa, DistilBERT,
   ModernBERT, random --bidirectional) adds to seq2seq.js, run after it: one text, the one
   kind "encoder", no decoder. With a sentence pair (payload.pair_start, the second
   sentence's first position) the boundary is drawn as a rule over the heatmap (between
   the two sentences' rows and between their columns) and across the lines view, and the
   second sentence's tokens are marked (class "second", the Tokens table's "sentence"
   column). The rules are elements over the canvases, so seq2seq.js's drawing is untouched:
   they follow its heatmap (its data-margin, data-cell) whenever it is redrawn. */
(function () {
  "use strict";
  var payload = JSON.parse(document.getElementById("attnviz-data").textContent);
  var n = payload.tokens.length, boundary = payload.pair_start;
  var pair = typeof boundary === "number" && boundary > 0 && boundary < n;
  var spec = payload.kinds.encoder, config = payload.config;

  var style = document.createElement("style");
  style.textContent = "#heatmap-wrap, #lines-view { position: relative; }\n" +
    ".pair-rule { position: absolute; pointer-events: none; border: 0 dashed var(--accent); }\n" +
    ".pair-rule.rows, #lines-view .pair-rule { border-top-width: 2px; height: 0; }\n" +
    ".pair-rule.columns { border-left-width: 2px; width: 0; }\n" +
    ".token-column .tok.second:not(.hot) { color: var(--accent); font-style: italic; }\n";
  document.head.appendChild(style);

  /* one text: no decoder's tokens, the summary of an encoder */
  var decoderTable = document.getElementById("decoder-table").parentNode;
  decoderTable.hidden = true;
  decoderTable.previousElementSibling.hidden = true;
  var sourceTable = document.getElementById("source-table");
  sourceTable.parentNode.previousElementSibling.textContent = pair ?
    "The sentence pair (the encoder's input)" : "The text (the encoder's input)";
  document.getElementById("summary").textContent = n + " tokens" +
    (pair ? " (a sentence pair: the second sentence from position " + boundary + ")" : "") +
    " \u00b7 encoder " + spec.layers.length + " layer(s) \u00d7 " + spec.shape[1] + " heads \u00b7 " +
    (config.family || "") + " " + (config.weights || "");
  var leftColumn = document.getElementById("lines-left"), rightColumn = document.getElementById("lines-right");
  function captions() {
    document.getElementById("left-caption").textContent = "tokens (queries)";
    document.getElementById("right-caption").textContent = "tokens (keys)";
  }
  new MutationObserver(captions).observe(leftColumn, { childList: true });
  captions();
  if (!pair) return;

  /* the Tokens table: which sentence each token is in */
  var header = sourceTable.querySelector("thead tr"), th = document.createElement("th");
  th.scope = "col";
  th.className = "text";
  th.textContent = "sentence";
  header.appendChild(th);
  Array.prototype.forEach.call(sourceTable.querySelectorAll("tbody tr"), function (row, pos) {
    var td = document.createElement("td");
    td.className = "text";
    td.textContent = pos >= boundary ? "second" : "first";
    row.appendChild(td);
  });

  function rule(parent, className) {
    var line = document.createElement("div");
    line.className = "pair-rule " + className;
    line.setAttribute("aria-hidden", "true");
    line.dataset.boundary = boundary;
    parent.appendChild(line);
    return line;
  }

  /* the heatmap: a rule between the sentences' rows, another between their columns */
  var canvas = document.getElementById("heatmap-canvas"), wrap = document.getElementById("heatmap-wrap");
  var rows = rule(wrap, "rows"), columns = rule(wrap, "columns");
  function placeHeatmap() {
    var margin = Number(canvas.dataset.margin), cell = Number(canvas.dataset.cell);
    var left = canvas.offsetLeft + margin, top = canvas.offsetTop + margin, side = cell * n;
    rows.style.left = left + "px";
    rows.style.width = side + "px";
    rows.style.top = (top + boundary * cell - 1) + "px";
    columns.style.top = top + "px";
    columns.style.height = side + "px";
    columns.style.left = (left + boundary * cell - 1) + "px";
  }

  /* the lines view: a rule across it before the second sentence, its tokens marked */
  var view = document.getElementById("lines-view"), across = rule(view, "");
  function markLines() {
    [leftColumn, rightColumn].forEach(function (column) {
      Array.prototype.forEach.call(column.children, function (tok, pos) {
        var second = pos >= boundary;
        if (tok.classList.contains("second") === second && tok.dataset.sentence) return;
        tok.classList.toggle("second", second);
        tok.dataset.sentence = second ? "second" : "first";
        if (second) tok.title += " \u00b7 second sentence";
      });
    });
    var first = leftColumn.children[boundary];
    if (first) {
      across.style.left = "0";
      across.style.right = "0";
      across.style.top = (first.offsetTop - 1) + "px";
    }
  }

  new MutationObserver(placeHeatmap).observe(canvas, { attributes: true });
  new MutationObserver(markLines).observe(leftColumn, { childList: true });
  window.addEventListener("resize", placeHeatmap);
  placeHeatmap();
  markLines();
})();
