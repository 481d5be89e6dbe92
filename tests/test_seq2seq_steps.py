"""`attnviz steps` of encoder–decoders (T5, flan-t5, mT5, BART, Marian): one head of each
kind of attention step by step. The weights are transformers' eager float32 attentions;
every intermediate matrix (Q, K, V, T5's relative position bias, the scores before the
softmax, the context) is recomputed from transformers' own modules on the hidden states
transformers' own forward pass handed them (caught by forward hooks)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers
from helpers import make_hf_checkpoint
from seq2seq_checkpoints import SOURCE, TARGET, make_bart, make_t5

from attnviz.analyses.attention import load_model
from attnviz.analyses.seq2seq import encode_texts
from attnviz.analyses.seq2seq_steps import seq2seq_head_steps
from attnviz.core.config import ModelConfig
from attnviz.pictures.steps import steps_figure

FAMILIES = ("t5", "flan", "mt5", "bart", "marian")
KINDS = ("encoder", "decoder", "cross")
LONG_SOURCE = " ".join([SOURCE] * 2)  # 76 T5 tokens: past max_distance 20, the log buckets


def _make(family: str, folder):
    if family in ("t5", "flan", "mt5"):
        return make_t5(folder, flan=family == "flan", mt5=family == "mt5", seed=3)
    return make_bart(folder, marian=family == "marian", seed=3)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return {family: _make(family, tmp_path_factory.mktemp(family)) for family in FAMILIES}


class Transformers:
    """transformers' eager float32 model on one source and target, with every attention
    module's input, key/value input and output-projection input caught by hooks."""

    def __init__(self, folder, source: list[int], target: list[int]):
        self.model = transformers.AutoModelForSeq2SeqLM.from_pretrained(
            folder, attn_implementation="eager").eval()
        self.t5 = self.model.config.model_type in ("t5", "mt5")
        self.seen: dict = {}
        handles = []
        for kind in KINDS:
            for layer, module in enumerate(self.modules(kind)):
                handles.append(module.register_forward_pre_hook(
                    self._catch(kind, layer), with_kwargs=True))
                out = module.o if self.t5 else module.out_proj
                handles.append(out.register_forward_pre_hook(self._catch_context(kind, layer)))
        try:
            with torch.no_grad():
                self.out = self.model(input_ids=torch.tensor([source]),
                                      decoder_input_ids=torch.tensor([target]),
                                      output_attentions=True, use_cache=False)
        finally:
            for handle in handles:
                handle.remove()

    def modules(self, kind: str) -> list:
        if self.t5:
            blocks = (self.model.encoder if kind == "encoder" else self.model.decoder).block
            return [b.layer[1].EncDecAttention if kind == "cross" else b.layer[0].SelfAttention
                    for b in blocks]
        stack = self.model.model.encoder if kind == "encoder" else self.model.model.decoder
        return [layer.encoder_attn if kind == "cross" else layer.self_attn
                for layer in stack.layers]

    def _catch(self, kind, layer):
        def catch(_module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            self.seen[kind, layer] = (hidden, kwargs.get("key_value_states"))
        return catch

    def _catch_context(self, kind, layer):
        def catch(_module, args):
            self.seen[kind, layer, "context"] = args[0]  # (1, T, nh·d_k): the heads' contexts
        return catch

    def weights(self, kind: str, layer: int) -> np.ndarray:
        attentions = {"encoder": self.out.encoder_attentions,
                      "decoder": self.out.decoder_attentions,
                      "cross": self.out.cross_attentions}[kind]
        return attentions[layer][0].numpy()  # (H, Tq, Tk)

    def projections(self, kind: str, layer: int, head: int) -> dict[str, np.ndarray]:
        """This head's Q, K, V and context from transformers' modules, float64."""
        module = self.modules(kind)[layer]
        hidden, key_value = self.seen[kind, layer]
        source = hidden if key_value is None else key_value
        names = ("q", "k", "v") if self.t5 else ("q_proj", "k_proj", "v_proj")
        d_k = (module.key_value_proj_dim if self.t5 else module.head_dim)
        cols = slice(head * d_k, (head + 1) * d_k)
        with torch.no_grad():
            q, k, v = (getattr(module, name)(x)[0, :, cols].double().numpy()
                       for name, x in zip(names, (hidden, source, source)))
        context = self.seen[kind, layer, "context"][0, :, cols].double().numpy()
        return {"queries": q, "keys": k, "values": v, "context": context}

    def bias(self, kind: str, n_queries: int, n_keys: int, head: int) -> np.ndarray | None:
        """T5's relative position bias of the stack's first layer (the one with the table),
        by T5Attention.compute_bias; None for cross-attention and BART/Marian."""
        if not self.t5 or kind == "cross":
            return None
        first = self.modules(kind)[0]
        assert first.has_relative_attention_bias
        assert not any(m.has_relative_attention_bias for m in self.modules(kind)[1:])
        with torch.no_grad():
            return first.compute_bias(n_queries, n_keys)[0, head].double().numpy()

    def scaling(self, kind: str, layer: int) -> float:
        return float(self.modules(kind)[layer].scaling)


def softmax(scores: np.ndarray, causal: bool) -> np.ndarray:
    s = scores.copy()
    if causal:
        s[np.triu_indices(len(s), 1)] = -np.inf
    e = np.exp(s - s.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


# --- the numbers ------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_every_step_of_every_head_equals_transformers(checkpoints, family):
    folder = checkpoints[family]
    model = load_model(ModelConfig(), str(folder), seq2seq=True)
    source, target = encode_texts(model, LONG_SOURCE if family == "t5" else SOURCE, TARGET)
    theirs = Transformers(folder, source, target)
    for kind in KINDS:
        for layer in range(2):
            expected_weights = theirs.weights(kind, layer)
            assert expected_weights.max(-1).mean() > 0.3, "rows are not peaked: a weak test"
            for head in range(model.n_heads):
                steps, result = seq2seq_head_steps(model, source, target, kind=kind,
                                                   layer=layer, head=head)
                where = f"{family} {kind} layer {layer} head {head}"
                # the final weights: transformers' attentions, and attnviz's own
                np.testing.assert_allclose(steps.weights, expected_weights[head], atol=1e-5,
                                           err_msg=where)
                np.testing.assert_allclose(steps.weights, result.of(kind).weights[0, head],
                                           atol=1e-6, rtol=0)  # another path's float32 rounding
                # Q, K, V and the context: transformers' Linear layers on its own states
                for name, expected in theirs.projections(kind, layer, head).items():
                    np.testing.assert_allclose(getattr(steps, name), expected, atol=2e-5,
                                               rtol=1e-5, err_msg=f"{where} {name}")
                # the scores before the softmax, recomputed in float64
                q, k = (theirs.projections(kind, layer, head)[n] for n in ("queries", "keys"))
                scaled = q @ k.T * theirs.scaling(kind, layer)
                bias = theirs.bias(kind, len(q), len(k), head)
                before = scaled if bias is None else scaled + bias
                last = steps.biased_scores if bias is not None else (
                    steps.scaled if steps.scaled is not None else steps.scores)
                np.testing.assert_allclose(last, before, atol=1e-4, rtol=1e-5, err_msg=where)
                np.testing.assert_allclose(softmax(before, kind == "decoder"),
                                           expected_weights[head], atol=1e-5, err_msg=where)
                if bias is not None:  # the table's numbers: exact
                    np.testing.assert_array_equal(steps.position_bias, bias.astype(np.float32))
                else:
                    assert steps.position_bias is None and steps.biased_scores is None
                assert (steps.masked is not None) == (kind == "decoder")
                assert steps.scores.shape == (len(q), len(k))


def test_t5_has_no_scale_step_and_its_bias_is_the_first_layers(checkpoints):
    model = load_model(ModelConfig(), str(checkpoints["t5"]), seq2seq=True)
    source, target = encode_texts(model, SOURCE, TARGET)
    encoder, _ = seq2seq_head_steps(model, source, target, kind="encoder", layer=1, head=2)
    assert encoder.scale == 1.0 and encoder.scaled is None
    assert list(encoder.matrices()) == ["queries", "keys", "scores", "position_bias",
                                        "biased_scores", "weights", "values", "context"]
    formulas = encoder.formulas()
    assert formulas["weights"] == "A = softmax(S + B)" and "√" not in "".join(formulas.values())
    assert encoder.relative == {"num_buckets": 8, "max_distance": 20, "bidirectional": True,
                                "layer": 0}
    np.testing.assert_allclose(encoder.biased_scores, encoder.scores + encoder.position_bias,
                               rtol=1e-6, atol=1e-5)
    # layer 1's bias is layer 0's: the same matrix, a different head's column of the table
    first, _ = seq2seq_head_steps(model, source, target, kind="encoder", layer=0, head=2)
    np.testing.assert_array_equal(first.position_bias, encoder.position_bias)
    other, _ = seq2seq_head_steps(model, source, target, kind="encoder", layer=1, head=1)
    assert not np.array_equal(other.position_bias, encoder.position_bias)
    # the encoder's buckets tell left from right; the decoder's only look back
    assert not np.array_equal(encoder.position_bias, encoder.position_bias.T)
    decoder, _ = seq2seq_head_steps(model, source, target, kind="decoder", layer=1, head=2)
    assert decoder.relative["bidirectional"] is False
    assert decoder.formulas()["weights"] == "A = softmax(mask(S + B))"
    future = np.triu_indices(decoder.n_tokens, 1)
    assert np.isneginf(decoder.masked[future]).all()
    assert len(set(decoder.position_bias[future])) == 1  # every future key: bucket 0
    cross, _ = seq2seq_head_steps(model, source, target, kind="cross", layer=1, head=2)
    assert list(cross.matrices()) == ["queries", "keys", "scores", "weights", "values",
                                      "context"]
    assert cross.formulas()["weights"] == "A = softmax(S)"
    assert cross.formulas()["keys"] == "K = X₂·W_K" and cross.cross


@pytest.mark.parametrize("family", ["bart", "marian"])
def test_bart_and_marian_scale_by_one_over_root_d_k(checkpoints, family):
    model = load_model(ModelConfig(), str(checkpoints[family]), seq2seq=True)
    source, target = encode_texts(model, SOURCE, TARGET)
    for kind in KINDS:
        steps, _ = seq2seq_head_steps(model, source, target, kind=kind, layer=0, head=1)
        assert steps.scale == pytest.approx(8 ** -0.5) and steps.divides_by_sqrt_dk
        np.testing.assert_allclose(steps.scaled, steps.scores * 8 ** -0.5, rtol=1e-6, atol=1e-6)
        assert steps.position_bias is None and steps.biased  # BART's projections have biases
        assert steps.formulas()["queries"] == "Q = X·W_Q + b_Q"
        assert steps.formulas()["scaled"] == "S / √d_k"


# --- the command ------------------------------------------------------------------------

def run_json(cli, *args) -> dict:
    result = cli("steps", *args, "--format", "json", "-q")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_json_of_each_kind_names_it_and_gives_both_texts(cli, checkpoints, tmp_path):
    folder = checkpoints["t5"]
    theirs_tokens = transformers.AutoTokenizer.from_pretrained(folder)(SOURCE)["input_ids"]
    documents = {}
    for kind in KINDS:
        out = tmp_path / f"{kind}.png"
        documents[kind] = doc = run_json(cli, SOURCE, "--weights", folder, "--decoder-text",
                                         TARGET, "--attention", kind, "--layer", "1", "--head",
                                         "3", "-o", out)
        assert doc["attention"] == kind and doc["layer"] == 1 and doc["head"] == 3
        assert out.is_file() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert [t["id"] for t in doc["tokens"]] == theirs_tokens
        assert doc["decoder_tokens"][0]["id"] == 0  # T5's start token, <pad>
        assert doc["scale"] == 1.0 and "scaled" not in doc["matrices"]
    n_source, n_decoder = len(theirs_tokens), len(documents["cross"]["decoder_tokens"])
    assert documents["encoder"]["shapes"]["weights"] == [n_source, n_source]
    assert documents["decoder"]["shapes"]["masked"] == [n_decoder, n_decoder]
    assert documents["cross"]["shapes"]["weights"] == [n_decoder, n_source]
    assert documents["cross"]["shapes"]["keys"] == [n_source, 8]
    assert documents["encoder"]["relative_attention"]["bidirectional"] is True
    assert documents["decoder"]["relative_attention"]["bidirectional"] is False
    assert "relative_attention" not in documents["cross"]
    # the JSON's matrices are the model's: transformers' cross-attention of layer 1, head 3
    expected = Transformers(folder, theirs_tokens,
                            [t["id"] for t in documents["cross"]["decoder_tokens"]])
    for kind in KINDS:
        np.testing.assert_allclose(np.array(documents[kind]["matrices"]["weights"]),
                                   expected.weights(kind, 1)[3], atol=1e-5)
    masked = documents["decoder"]["matrices"]["masked"]
    assert masked[0][1:] == [None] * (n_decoder - 1)  # -inf is null


def test_default_kind_is_cross_and_csv_rows_carry_it(cli, checkpoints, tmp_path):
    result = cli("steps", SOURCE, "--weights", checkpoints["bart"], "--decoder-text", TARGET,
                 "--head", "0", "-o", tmp_path / "s.png", "--format", "csv")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "attention,step,matrix,formula,shape,min,max"
    assert [line.split(",")[2] for line in lines[1:]] == [
        "queries", "keys", "scores", "scaled", "weights", "values", "context"]
    assert {line.split(",")[0] for line in lines[1:]} == {"cross"}
    table = cli("steps", SOURCE, "--weights", checkpoints["bart"], "--attention", "decoder",
                "--head", "0", "-o", tmp_path / "d.png")
    assert table.exit_code == 0, table.stderr
    assert "Decoder self-attention, layer 0, head 0: 1 decoder token, d_k = 8" in table.stdout
    assert "mask(S / √d_k)" in table.stdout  # the start token alone: still the causal mask


BAD = [
    (["--weights", "{t5}", "--attention", "all"],
     "Error: --attention all: this command shows encoder or decoder or cross attention"),
    (["--weights", "{t5}", "--attention", "both"],
     "Error: --attention must be one of encoder, decoder, cross, all"),
    (["--weights", "{gpt2}", "--decoder-text", "x"],
     "Error: --decoder-text needs an encoder–decoder model (t5, bart, marian): gpt2 is "
     "decoder-only"),
    (["--weights", "{gpt2}", "--attention", "cross"],
     "Error: --attention cross: gpt2 is decoder-only; it has no cross attention"),
    (["--weights", "{t5}", "--tokens", "0:3"],
     "Error: --tokens is not supported for encoder–decoder models"),
    (["--weights", "{t5}", "--pair", "x"], "Error: --pair is not supported for encoder–decoder"),
    (["--weights", "{t5}", "--layer", "2", "--attention", "cross"],
     "Error: --layer 2 is out of range: the checkpoint has 2 layers (0-1) of the decoder"),
    (["--weights", "{t5}", "--head", "4"], "Error: --head 4 is out of range: the model has 4"),
    (["--weights", "{t5}", "--decoder-text", " ".join([TARGET] * 22)],
     "Error: --decoder-text is 133 tokens; the steps figure draws every cell and is limited "
     "to 128 tokens"),
    (["--weights", "{t5}", "--decoder-text", ""], "Error: --decoder-text is empty"),
    (["--weights", "{t5}", "--dropout", "0.1"], "Error: --dropout shows the training-time step"),
]


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    return make_hf_checkpoint(tmp_path_factory.mktemp("gpt2"), n_layer=1, n_head=2, n_embd=16)


@pytest.mark.parametrize("args, message", BAD, ids=[" ".join(a[2:4]) for a, _ in BAD])
def test_bad_input_is_one_error_line_and_no_file(cli, checkpoints, gpt2, tmp_path, args,
                                                 message):
    args = [a.format(t5=checkpoints["t5"], gpt2=gpt2) for a in args]
    head = [] if "--head" in args else ["--head", "0"]
    out = tmp_path / "s.png"
    result = cli("steps", SOURCE, *head, *args, "-o", out)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert result.stderr.startswith(message) and result.stderr.count("\n") == 1, result.stderr
    assert result.stdout == "" and not out.exists()


# --- the figure -------------------------------------------------------------------------

def axes_by_name(fig):
    return {ax.get_label(): ax for ax in fig.axes}


def test_t5_figure_draws_the_bias_on_a_row_of_its_own(checkpoints):
    model = load_model(ModelConfig(), str(checkpoints["t5"]), seq2seq=True)
    source, target = encode_texts(model, "The cat sat.", "Die Katze.")
    steps, result = seq2seq_head_steps(model, source, target, kind="decoder", layer=1, head=0)
    shown = result.of("decoder")
    fig, canvas = steps_figure(steps, shown.token_labels)
    axes = axes_by_name(fig)
    panels = [n for n in axes if not n.endswith("colorbar")]
    assert panels == ["queries", "keys", "scores", "position_bias", "biased_scores", "masked",
                      "weights", "values", "context"]
    assert axes["scores"].get_title().startswith("S = Q·Kᵀ\nscores, not scaled by 1/√d_k")
    assert axes["position_bias"].get_title().startswith("B = b_h[bucket(j − i)]\nrelative "
                                                        "position bias, layer 0's table")
    assert axes["biased_scores"].get_title().startswith("S + B")
    assert axes["weights"].get_title().startswith("A = softmax(mask(S + B))")
    # the bias on a scale of its own (a few units, where the scores may be tens)
    assert {"scores colorbar", "position_bias colorbar", "masked colorbar"} <= set(axes)
    # three rows: Q K S / B S+B mask / A V Z
    y = {name: round(axes[name].get_position().y0, 6) for name in panels}
    assert y["queries"] == y["scores"] > y["position_bias"] == y["masked"] > y["weights"] == \
        y["context"]
    assert "Decoder self-attention, layer 1, head 0" in fig.texts[0].get_text()


def test_cross_figure_labels_every_source_token_along_wider_panels(checkpoints):
    model = load_model(ModelConfig(), str(checkpoints["t5"]), seq2seq=True)
    source, target = encode_texts(model, f"{SOURCE} {SOURCE}", TARGET)
    steps, result = seq2seq_head_steps(model, source, target, kind="cross", layer=0, head=1)
    shown = result.of("cross")
    assert steps.n_keys > 3 * steps.n_tokens  # many more source tokens than decoder tokens
    fig, canvas = steps_figure(steps, shown.token_labels, key_labels=shown.key_labels)
    canvas.draw()
    axes = axes_by_name(fig)
    assert [n for n in axes if not n.endswith("colorbar")] == [
        "queries", "keys", "scores", "weights", "values", "context"]
    columns = [t.get_text() for t in axes["weights"].get_xticklabels()]
    assert columns == shown.key_labels  # every source token names its column
    rows = [t.get_text() for t in axes["weights"].get_yticklabels()]
    assert rows == shown.token_labels
    weights, keys = axes["weights"].get_position(), axes["keys"].get_position()
    width, height = fig.get_size_inches()
    cell_w = weights.width * width / steps.n_keys
    cell_h = weights.height * height / steps.n_tokens
    assert weights.width * width > 1.5 * weights.height * height  # wider than tall ...
    assert 0.5 < cell_w / cell_h <= 1.0  # ... so that the cells stay near square
    renderer = canvas.get_renderer()
    labels = [t.get_window_extent(renderer) for t in axes["weights"].get_xticklabels()]
    assert all(not a.overlaps(b) for a, b in zip(labels, labels[1:]))
    assert not fig.legends  # nothing is masked: no legend of masked cells
    assert "Cross-attention, decoder layer 0, head 1" in fig.texts[0].get_text()
    assert keys.height == pytest.approx(weights.height)  # every panel: one height
