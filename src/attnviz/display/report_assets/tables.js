/* Tables: head statistics (sortable; a row click selects its head), the similarity
   matrix of the selected layer, the tokens and the model configuration. */
(function (AV) {
  "use strict";
  var stats = AV.payload.stats;
  var sort = { column: null, desc: false };

  function cell(tag, text, className) {
    var el = document.createElement(tag);
    el.textContent = text;
    if (className) el.className = className;
    return el;
  }

  function number(value) {
    if (value === null || value === undefined) return "\u2014";
    return Number.isInteger(value) ? String(value) : value.toFixed(4);
  }

  function sortedRows() {
    var rows = stats.heads.slice();
    if (sort.column === null) return rows;
    var known = rows.filter(function (r) { return r[sort.column] !== null; });
    var unknown = rows.filter(function (r) { return r[sort.column] === null; });
    known.sort(function (a, b) { /* stable; nulls last either way, as compare-heads --sort-by */
      return sort.desc ? b[sort.column] - a[sort.column] : a[sort.column] - b[sort.column];
    });
    return known.concat(unknown);
  }

  function fillStats() {
    var table = document.getElementById("stats-table");
    table.textContent = "";
    var head = table.createTHead().insertRow();
    stats.columns.forEach(function (column) {
      var th = document.createElement("th");
      th.scope = "col";
      th.dataset.column = column;
      th.setAttribute("aria-sort", sort.column === column ? (sort.desc ? "descending" : "ascending") : "none");
      var button = cell("button", column);
      button.type = "button";
      button.addEventListener("click", function () {
        sort.desc = sort.column === column ? !sort.desc : false;
        sort.column = column;
        fillStats();
      });
      th.appendChild(button);
      head.appendChild(th);
    });
    var body = table.createTBody();
    sortedRows().forEach(function (row) {
      var tr = body.insertRow();
      var li = AV.layers.indexOf(row.layer);
      tr.dataset.layer = row.layer;
      tr.dataset.head = row.head;
      tr.tabIndex = 0;
      tr.classList.toggle("selected", li === AV.state.layer && row.head === AV.state.head);
      stats.columns.forEach(function (column) {
        var td = cell("td", number(row[column]));
        if (row[column] !== null && !Number.isInteger(row[column])) td.title = String(row[column]);
        tr.appendChild(td);
      });
      var choose = function () { AV.select(li, row.head); };
      tr.addEventListener("click", choose);
      tr.addEventListener("keydown", function (event) {
        if (event.key === "Enter" || event.key === " ") {
          event.preventDefault();
          choose();
        }
      });
    });
  }

  function fillSimilarity() {
    var st = AV.state, matrix = stats.similarity[st.layer];
    document.getElementById("similarity-title").textContent =
      "Similarity of the heads of layer " + AV.layers[st.layer] + " (Jensen-Shannon divergence, bits: 0 = same pattern)";
    var table = document.getElementById("similarity-table");
    table.textContent = "";
    var head = table.createTHead().insertRow();
    head.appendChild(cell("th", "head"));
    for (var g = 0; g < AV.nHeads; g++) head.appendChild(cell("th", String(g), g === st.head ? "hl" : ""));
    var body = table.createTBody();
    var largest = Math.max.apply(null, matrix.map(function (r) { return Math.max.apply(null, r); })) || 1;
    matrix.forEach(function (values, h) {
      var tr = body.insertRow();
      tr.appendChild(cell("th", String(h), h === st.head ? "hl" : ""));
      values.forEach(function (value, g) {
        var td = cell("td", value.toFixed(2), h === st.head || g === st.head ? "hl" : "");
        td.title = "head " + h + " vs head " + g + ": " + value;
        /* darker = more alike, relative to the most different pair of this layer */
        td.style.background = "hsl(215, 65%, " + (96 - 46 * (1 - value / largest)).toFixed(0) + "%)";
        tr.appendChild(td);
      });
    });
  }

  function fillTokens() {
    var table = document.getElementById("tokens-table");
    var head = table.createTHead().insertRow();
    ["position", "id", "token", "bytes"].forEach(function (name) {
      head.appendChild(cell("th", name, name === "token" ? "text" : ""));
    });
    /* [generation] */
    head.appendChild(cell("th", "probability (generated)"));
    /* [/generation] */
    var body = table.createTBody();
    AV.tokens.forEach(function (t) {
      var tr = body.insertRow();
      tr.appendChild(cell("td", String(t.position)));
      tr.appendChild(cell("td", String(t.id)));
      tr.appendChild(cell("td", t.label, "text"));
      tr.appendChild(cell("td", String(t.bytes)));
      /* [generation] */
      if (t.bytes === null || t.bytes === undefined) tr.lastChild.textContent = "\u2014";
      var generated = AV.isGenerated(t.position);
      tr.classList.toggle("generated", generated);
      tr.appendChild(cell("td", generated ?
        AV.generation.steps[t.position - AV.promptLength].probability.toFixed(4) : ""));
      /* [/generation] */
    });
  }

  function fillConfig() {
    var table = document.getElementById("config-table");
    var body = table.createTBody();
    var config = AV.payload.config;
    Object.keys(config).forEach(function (key) {
      var value = config[key];
      var tr = body.insertRow();
      tr.appendChild(cell("th", key, "text"));
      /* an object one key a line; a list on one line, wrapped where the panel ends */
      var shown = value !== null && typeof value === "object" ?
        JSON.stringify(value, null, Array.isArray(value) ? undefined : 1) : String(value);
      tr.appendChild(cell("td", shown, "text"));
    });
    var tr = body.insertRow();
    tr.appendChild(cell("th", "report encoding", "text"));
    tr.appendChild(cell("td", AV.encoding, "text"));
  }

  AV.initTables = function () {
    fillTokens();
    fillConfig();
    /* [norms] */
    /* the value-weighted switch: the statistics of the norms' rows renormalised to sum 1 */
    AV.on(function (what) {
      if (what !== "weighting") return;
      stats = AV.weighting === "norm" ? AV.payload.norms.stats : AV.payload.stats;
      fillStats();
      fillSimilarity();
    });
    /* [/norms] */
    AV.on(function (what) {
      if (what !== "select") return;
      fillStats();
      fillSimilarity();
    });
  };
})(AV);
