/* "Heads that matter" (attnviz report --target ...): the predictions at the position and
   two layers x heads maps, direct logit attribution and ablation effect, on a diverging
   scale centred on 0 (red raises the metric, blue lowers it). Each cell is a button with
   data-layer and data-head; clicking one selects that head in every other view (when the
   report holds its layer). Only in reports written with a target: the script is left out
   of the others. */
(function (AV) {
  "use strict";
  var a = AV.payload.attribution;
  if (!a) return;
  var cells = []; /* every map cell: {el, layer, head} */

  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    for (var k in attrs) node.setAttribute(k, attrs[k]);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  /* RdBu: blue (#2166ac) - white (#f7f7f7) - red (#b2182b), t in [-1, 1] */
  function diverging(t) {
    var end = t < 0 ? [33, 102, 172] : [178, 24, 43], mid = [247, 247, 247], f = Math.min(1, Math.abs(t));
    var c = [0, 1, 2].map(function (i) { return Math.round(mid[i] + (end[i] - mid[i]) * f); });
    return { css: "rgb(" + c.join(",") + ")", dark: f > 0.6 };
  }

  function format(v) {
    return Math.abs(v) >= 9.995 ? v.toFixed(1) : v.toFixed(2);
  }

  function map(values, title, measure) {
    var top = 0;
    values.forEach(function (row) { row.forEach(function (v) { top = Math.max(top, Math.abs(v)); }); });
    top = top || 1;
    var box = el("div", { "class": "attribution-map" });
    box.appendChild(el("h3", {}, title));
    var table = el("table", { "class": "matrix heat", id: measure + "-map", "aria-label": title });
    var head = el("tr");
    head.appendChild(el("th", { scope: "col" }, "layer \\ head"));
    for (var h = 0; h < values[0].length; h++) head.appendChild(el("th", { scope: "col" }, String(h)));
    table.appendChild(head);
    values.forEach(function (row, layer) {
      var tr = el("tr");
      tr.appendChild(el("th", { scope: "row" }, String(a.layers[layer])));
      row.forEach(function (v, h) {
        var colour = diverging(v / top), li = AV.layers.indexOf(a.layers[layer]);
        var td = el("td", {
          "data-layer": a.layers[layer], "data-head": h, "data-value": String(v),
          title: "layer " + a.layers[layer] + ", head " + h + ": " + measure + " " + v.toPrecision(4) +
            (li < 0 ? " (this layer is not in the report's other views)" : "")
        }, format(v));
        td.style.background = colour.css;
        td.style.color = colour.dark ? "#ffffff" : "#111111";
        if (li >= 0) {
          td.tabIndex = 0;
          td.classList.add("pick");
          var pick = function () { AV.select(li, h); };
          td.addEventListener("click", pick);
          td.addEventListener("keydown", function (e) {
            if (e.key === "Enter" || e.key === " ") { e.preventDefault(); pick(); }
          });
        }
        cells.push({ el: td, layer: li, head: h });
        tr.appendChild(td);
      });
      table.appendChild(tr);
    });
    var scroll = el("div", { "class": "table-scroll" });
    scroll.appendChild(table);
    box.appendChild(scroll);
    return box;
  }

  var section = el("section", { id: "attribution-section", "class": "wide",
                                "aria-labelledby": "attribution-title" });
  section.appendChild(el("h2", { id: "attribution-title" }, "Heads that matter"));
  var metric = "logit(" + a.metric.target.label + ")" +
    (a.metric.contrast ? " \u2212 logit(" + a.metric.contrast.label + ")" : "");
  var query = AV.payload.tokens.filter(function (t) { return t.position === a.position; })[0];
  section.appendChild(el("p", { id: "attribution-summary" },
    "Metric: " + metric + " = " + a.metric.value.toFixed(4) + ", predicting the token after position " +
    a.position + (query ? " (" + query.label + ")" : "") + ". Direct logit attribution: what each head " +
    "writes straight to the metric; ablation: the metric's change when the head is " +
    (a.ablate === "zero" ? "zeroed" : "replaced by its mean") + " and every later layer recomputed " +
    "(docs/attribution.md). Click a head to select it in the other views."));
  var predictions = el("table", { id: "attribution-predictions" });
  var hr = el("tr");
  ["rank", "token", "probability", "logit"].forEach(function (c) { hr.appendChild(el("th", { scope: "col" }, c)); });
  predictions.appendChild(hr);
  a.predictions.forEach(function (p) {
    var tr = el("tr");
    [String(p.rank), p.label, p.probability.toFixed(4), p.logit.toFixed(3)].forEach(function (c, i) {
      tr.appendChild(el("td", i === 1 ? { "class": "text" } : {}, c));
    });
    predictions.appendChild(tr);
  });
  var row = el("div", { "class": "attribution-row" });
  var left = el("div", { "class": "attribution-map" });
  left.appendChild(el("h3", {}, "Predictions"));
  left.appendChild(predictions);
  row.appendChild(left);
  row.appendChild(map(a.dla, "Direct logit attribution", "dla"));
  row.appendChild(map(a.ablation, "Ablation effect", "ablation"));
  section.appendChild(row);

  var style = el("style", {}, ".attribution-row { display: flex; flex-wrap: wrap; gap: 24px; " +
    "align-items: flex-start; } #attribution-section td.pick { cursor: pointer; } " +
    "#attribution-section td.hl { outline: 2px solid var(--fg); outline-offset: -2px; font-weight: bold; }");
  document.head.appendChild(style);
  var main = document.querySelector("main");
  main.insertBefore(section, main.firstChild);
  var nav = document.querySelector("nav");
  var link = el("a", { href: "#attribution-section" }, "Heads that matter");
  nav.insertBefore(link, nav.firstChild);

  AV.on(function (what) {
    if (what !== "select") return;
    cells.forEach(function (c) {
      c.el.classList.toggle("hl", c.layer === AV.state.layer && c.head === AV.state.head);
    });
  });
})(AV);
