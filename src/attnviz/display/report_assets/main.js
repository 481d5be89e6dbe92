/* Start-up: build every view, select the first head, and mark the page ready
   (body[data-ready="true"], data-ready-ms: when, in ms since navigation) once the model
   view's thumbnails are drawn. */
(function (AV) {
  "use strict";
  var config = AV.payload.config;
  var mode = config.mode === "pretrained" ? "checkpoint " + config.weights : "random weights, seed " + config.seed;
  var cut = AV.payload.window; /* --tokens A:B */
  var tokens = cut ? "tokens " + cut.start + "\u2013" + (cut.stop - 1) +
    " of the text (attention computed on the whole text: rows sum to less than 1 when keys before " +
    cut.start + " are cut)" : AV.nTokens + " tokens";
  document.getElementById("summary").textContent = tokens + " \u00b7 " + AV.nLayers +
    " layer(s) \u00d7 " + AV.nHeads + " heads \u00b7 " + mode;
  /* [generation] */
  var generated = AV.generation;
  document.getElementById("summary").textContent = AV.nTokens + " tokens: " + AV.promptLength +
    " of the prompt, " + AV.nSteps + " generated (in colour; stopped: " +
    String(generated.stopped).replace(/_/g, " ") + "; only the rows that wrote them are stored) \u00b7 " +
    AV.nLayers + " layer(s) \u00d7 " + AV.nHeads + " heads \u00b7 " + mode;
  /* [/generation] */
  /* [families] */
  var families = [];
  if (AV.kvHeads) families.push(AV.nHeads + " heads share " + AV.kvGroups().length + " kv heads");
  AV.layers.forEach(function (number, li) {
    if (AV.windowOf(li) !== null) families.push("layer " + number + ": " + AV.windowNote(li));
  });
  document.getElementById("summary").textContent += families.map(function (f) { return " \u00b7 " + f; }).join("");
  /* [/families] */
  AV.on(function (what) {
    if (what !== "select") return;
    var selected = document.getElementById("selected-head");
    selected.textContent = AV.headName(AV.state.layer, AV.state.head);
    selected.dataset.layer = AV.layers[AV.state.layer];
    selected.dataset.head = AV.state.head;
  });
  AV.initTables();
  AV.initHeatmap();
  AV.initHeads();
  AV.initModel(function () {
    document.body.dataset.readyMs = String(Math.round(performance.now()));
    document.body.dataset.ready = "true";
  });
  AV.select(0, 0);
})(AV);
