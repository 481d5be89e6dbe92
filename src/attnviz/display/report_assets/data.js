/* attnviz report: the embedded data, decoded once, and the shared selection.
   Every view registers with AV.on(listener) and is told when the selected head, the
   token window or the colour scale changes. Schema and encodings: docs/report.md. */
var AV = (function () {
  "use strict";

  var payload = JSON.parse(document.getElementById("attnviz-data").textContent);
  var spec = payload.weights;
  var nLayers = spec.shape[0], nHeads = spec.shape[1], nTokens = spec.shape[2];
  var perHead = nTokens * (nTokens + 1) / 2;
  /* [generation] */
  /* attnviz generate: only the generated rows are stored (layout "generated-rows", shape
     [L, H, N, P + N]): row g is the query at position P + g - 1 that wrote generated token g,
     over keys 0 .. P + g - 1. Views index rows by query position as for any report; the
     other queries (the prompt's, and the last token's) were not computed. */
  var generation = payload.generation;
  var promptLength = generation.prompt_length, nSteps = generation.steps.length;
  nTokens = spec.shape[3];
  perHead = nSteps * promptLength + nSteps * (nSteps - 1) / 2;
  /* Whether query position i has a stored row (it wrote generated token i - P + 1). */
  function known(i) {
    return i >= promptLength - 1 && i <= promptLength + nSteps - 2;
  }
  /* [/generation] */

  /* base64url (RFC 4648 section 5, "-" and "_") -> bytes */
  function base64urlBytes(text) {
    var alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    var lookup = new Uint8Array(128);
    for (var k = 0; k < 64; k++) lookup[alphabet.charCodeAt(k)] = k;
    var end = text.length;
    while (end > 0 && text.charCodeAt(end - 1) === 61) end--; /* "=" padding */
    var out = new Uint8Array(Math.floor(end * 3 / 4));
    var o = 0, buffer = 0, bits = 0;
    for (var c = 0; c < end; c++) {
      buffer = ((buffer << 6) | lookup[text.charCodeAt(c)]) & 0xffffff;
      bits += 6;
      if (bits >= 8) {
        bits -= 8;
        out[o++] = (buffer >> bits) & 255;
      }
    }
    return out;
  }

  /* The stored lower triangles as weights in [0, 1]. */
  function decode(text, encoding) {
    var bytes = base64urlBytes(text);
    var values, i;
    if (encoding === "u16") {
      values = new Float32Array(bytes.length / 2);
      for (i = 0; i < values.length; i++) values[i] = (bytes[2 * i] | (bytes[2 * i + 1] << 8)) / 65535;
    } else if (encoding === "sqrt-u8") {
      var table = new Float32Array(256);
      for (i = 0; i < 256; i++) table[i] = (i / 255) * (i / 255);
      values = new Float32Array(bytes.length);
      for (i = 0; i < bytes.length; i++) values[i] = table[bytes[i]];
    } else {
      throw new Error("unknown weight encoding " + encoding);
    }
    if (values.length !== nLayers * nHeads * perHead) throw new Error("weight data has the wrong length");
    return values;
  }

  var values = decode(spec.data, spec.encoding);
  /* [norms] */
  /* --weighting norm: the value-weighted norms, a second matrix in the same layout, stored as
     norm / norms.scale. setWeighting (below) puts them in place of the weights for every
     view; top is what a stored value is multiplied by (1 for the weights). */
  var attentionValues = values, normValues = decode(payload.norms.data, payload.norms.encoding);
  var top = 1;
  /* [/norms] */

  /* Index of the first stored weight of row i of head h in layer index li. */
  function rowStart(li, h, i) {
    /* [generation] */
    var g = i - promptLength + 1; /* the generated token query i wrote */
    return (li * nHeads + h) * perHead + g * promptLength + g * (g - 1) / 2;
    /* [/generation] */
    return (li * nHeads + h) * perHead + i * (i + 1) / 2;
  }
  /* Weight of query i on key j, or NaN for the masked future (j > i). */
  function weight(li, h, i, j) {
    /* [generation] */
    if (!known(i)) return NaN;
    /* [/generation] */
    /* [norms] */
    if (top !== 1) return j > i ? NaN : values[rowStart(li, h, i) + j] * top;
    /* [/norms] */
    return j > i ? NaN : values[rowStart(li, h, i) + j];
  }
  /* [families] */
  /* Sliding windows (payload.windows, per layer index) and grouped-query heads
     (payload.kv_heads, per head): present only in reports of models that have them. */
  var windows = payload.windows || [], kvHeads = payload.kv_heads || null;
  /* The window W of layer index li, or null: query i sees keys i-W+1 .. i. */
  function windowOf(li) {
    return windows[li] === undefined ? null : windows[li];
  }
  /* The first key query i sees in layer index li (0 without a window). */
  function firstKey(li, i) {
    var w = windowOf(li);
    return w === null ? 0 : Math.max(0, i - w + 1);
  }
  /* "window 4", or "window 4096 \u2265 18 tokens" when no key is outside it; "" without. */
  function windowNote(li) {
    var w = windowOf(li);
    if (w === null) return "";
    return "window " + w + (w >= nTokens ? " \u2265 " + nTokens + " token" + (nTokens === 1 ? "" : "s") : "");
  }
  /* What the heatmap's heading adds for head h of layer index li: " \u00b7 kv 1 \u00b7 window 4". */
  function familyNote(li, h) {
    var parts = [];
    if (kvHeads) parts.push("kv " + kvHeads[h]);
    if (windowOf(li) !== null) parts.push(windowNote(li));
    return parts.map(function (part) { return " \u00b7 " + part; }).join("");
  }
  /* The kv groups in kv order: [{kv, heads: [...]}]. */
  function kvGroups() {
    var groups = {}, order = [];
    for (var h = 0; h < nHeads; h++) {
      var kv = kvHeads[h];
      if (!groups[kv]) { groups[kv] = { kv: kv, heads: [] }; order.push(kv); }
      groups[kv].heads.push(h);
    }
    order.sort(function (a, b) { return a - b; });
    return order.map(function (kv) { return groups[kv]; });
  }
  /* [/families] */

  /* viridis, sampled from matplotlib at nine stops and interpolated to 256 entries */
  var stops = [[68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 140],
    [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37]];
  var palette = new Uint8Array(256 * 3);
  for (var p = 0; p < 256; p++) {
    var x = p / 255 * (stops.length - 1), lo = Math.min(Math.floor(x), stops.length - 2), f = x - lo;
    for (var ch = 0; ch < 3; ch++) palette[p * 3 + ch] = Math.round(stops[lo][ch] * (1 - f) + stops[lo + 1][ch] * f);
  }

  var state = {
    layer: 0, /* index into payload.layers */
    head: 0,
    scale: "sqrt",
    winStart: 0,
    winSize: nTokens <= 256 ? nTokens : 256
  };
  var listeners = [];

  function emit(what) {
    for (var k = 0; k < listeners.length; k++) listeners[k](what);
  }

  return {
    payload: payload,
    nLayers: nLayers,
    nHeads: nHeads,
    nTokens: nTokens,
    layers: payload.layers,
    tokens: payload.tokens,
    encoding: spec.encoding,
    weight: weight,
    /* [families] */
    windowOf: windowOf,
    firstKey: firstKey,
    windowNote: windowNote,
    familyNote: familyNote,
    kvHeads: kvHeads,
    kvGroups: kvGroups,
    /* [/families] */
    rowStart: rowStart,
    /* [generation] */
    generation: generation,
    promptLength: promptLength,
    nSteps: nSteps,
    known: known,
    /* the generated tokens: positions P .. P + N - 1 */
    isGenerated: function (pos) { return pos >= promptLength; },
    /* [/generation] */
    values: values,
    /* [norms] */
    weighting: "attention", /* what the views show: "attention" or "norm" */
    top: 1, /* the value of the top colour: 1, or norms.scale */
    /* The attention weight of query i on key j, whatever is shown. */
    attentionWeight: function (li, h, i, j) {
      return j > i ? NaN : attentionValues[rowStart(li, h, i) + j];
    },
    /* Show the weights ("attention") or the value-weighted norms ("norm") in every view. */
    setWeighting: function (name) {
      values = name === "norm" ? normValues : attentionValues;
      top = name === "norm" ? payload.norms.scale : 1;
      this.values = values;
      this.top = top;
      this.weighting = name;
      emit("weighting");
    },
    /* [/norms] */
    palette: palette,
    state: state,
    on: function (listener) { listeners.push(listener); },
    select: function (li, h) {
      state.layer = li;
      state.head = h;
      emit("select");
    },
    setWindow: function (start, size) {
      state.winSize = Math.max(1, Math.min(size, nTokens));
      state.winStart = Math.max(0, Math.min(start, nTokens - state.winSize));
      emit("window");
    },
    setScale: function (scale) {
      state.scale = scale;
      emit("scale");
    },
    /* palette index of a weight under a colour scale (sqrt shows small weights better) */
    level: function (w, scale) {
      return Math.round((scale === "linear" ? w : Math.sqrt(w)) * 255);
    },
    headColor: function (h) {
      return "hsl(" + Math.round(h * 360 / nHeads) + ", 70%, 45%)";
    },
    cssVar: function (name) {
      return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
    },
    /* "#rrggbb" -> [r, g, b] */
    rgb: function (hex) {
      var n = parseInt(hex.replace("#", ""), 16);
      return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
    },
    headName: function (li, h) {
      return "layer " + payload.layers[li] + ", head " + h;
    }
  };
})();
