/* The value-weighted switch (attnviz report --weighting norm): attention weights, or the
   norms ||alpha_ij f(x_j)|| of Kobayashi et al. 2020 (each weight times the length of its key's
   value sent through the head's output projection), in every view: model view, heatmap,
   heads view, statistics (of the norms' rows renormalised to sum 1) and rollout. Only in
   reports that hold the norms: the script is left out of the others. */
(function (AV) {
  "use strict";
  var norms = AV.payload.norms;
  if (!norms) return;
  var NORM = "\u2016\u03b1\u00b7f(x)\u2016";

  var box = document.createElement("p");
  box.id = "weighting";
  box.className = "controls weighting";
  box.setAttribute("role", "radiogroup");
  box.setAttribute("aria-label", "What the views show");
  box.appendChild(document.createTextNode("Show: "));
  [["attention", "attention weights"], ["norm", "value-weighted " + NORM]].forEach(function (choice) {
    var label = document.createElement("label");
    var input = document.createElement("input");
    input.type = "radio";
    input.name = "weighting";
    input.value = choice[0];
    input.id = "weighting-" + choice[0];
    input.checked = choice[0] === "attention";
    input.addEventListener("change", function () {
      if (input.checked) AV.setWeighting(choice[0]);
    });
    label.append(input, " " + choice[1]);
    box.appendChild(label);
  });
  var note = document.createElement("span");
  note.id = "weighting-note";
  note.className = "muted";
  box.appendChild(note);
  document.querySelector("header .selection").after(box);

  var statsNote = document.createElement("p");
  statsNote.id = "stats-weighting";
  statsNote.className = "hint";
  document.querySelector("#stats-section .hint").after(statsNote);

  function describe() {
    var on = AV.weighting === "norm";
    document.body.dataset.weighting = AV.weighting;
    note.textContent = on ? " each weight times the length of its key's value through the head's " +
      "output projection (Kobayashi et al. 2020); colours 0 to " + norms.scale + ", the largest norm of the " +
      "report rounded up; lines in the heads view: opacity = norm / " + norms.scale + "." : "";
    statsNote.textContent = on ? "Value-weighted: the statistics of each row of norms divided by its " +
      "sum (compare-heads --weighting norm)." : "";
  }

  describe();
  AV.on(function (what) {
    if (what === "weighting") describe();
  });
})(AV);
