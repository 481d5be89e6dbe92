"""`attnviz why` for encoders (BERT with a sentence pair, RoBERTa, DistilBERT, ModernBERT),
encoder–decoders (T5, BART, Marian: encoder self, decoder self, cross) and random mode's
--bidirectional and --cross, against transformers' eager float32 model and torch: the parts
add up to the forward's own pre-softmax score, whose softmax (with the mask) is
transformers' attention row; single components are recomputed from transformers' own
modules through hooks (BERT's heads through the post-norm LayerNorms, T5's relative position
bias, T5's encoder output through its final norm)."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest
import torch
import transformers
from helpers import make_encoder_checkpoint
from seq2seq_checkpoints import SOURCE, TARGET, make_bart, make_t5

from attnviz.analyses.attention import encode_inputs, load_model
from attnviz.analyses.seq2seq import encode_texts
from attnviz.analyses.why import count_components, why
from attnviz.core.config import ModelConfig
from attnviz.core.errors import InputError

TEXT = "the cat sat on the mat and the dog sat by the door"
PAIR = "it was tired of the rain"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("why-enc")
    found = {name: make_encoder_checkpoint(root / name, name, n_layers=3, seed=i, std=0.5)
             for i, name in enumerate(("bert", "roberta", "distilbert", "modernbert"))}
    found["t5"] = make_t5(root / "t5", layers=3, decoder_layers=2)
    found["bart"] = make_bart(root / "bart")
    found["marian"] = make_bart(root / "marian", marian=True)
    return found


def softmax(scores: np.ndarray) -> np.ndarray:
    e = np.exp(scores - scores.max())
    return e / e.sum()


def check_exact(result, row: np.ndarray) -> None:
    """The parts add up to the forward's own score (1e-4 relative; in fact about 1e-7), and
    that score's softmax over the keys the query sees is ``row``, transformers' attention of
    the query (every other key 0: the mask)."""
    scale = max(1.0, float(np.abs(result.model_scores).max()))
    assert np.abs(result.scores - result.model_scores).max() <= 1e-4 * scale
    matrix = result.contributions()
    assert matrix.shape == (len(result.query_components), len(result.key_components))
    assert abs(matrix.sum() + result.bias_at() - result.score) <= 1e-9 * scale
    assert result.vector_error < 1e-5
    np.testing.assert_allclose(softmax(result.model_scores), row[result.keys], atol=2e-5, rtol=0)
    hidden = np.delete(row, result.keys)
    assert hidden.size == 0 or hidden.max() < 1e-6
    assert result.weight == pytest.approx(row[result.key], abs=2e-5)
    return float(row.max())


def check_peaked(largest: list[float]) -> None:
    """Peaked checkpoints (a wrong score would show): rows far from uniform."""
    assert max(largest) > 0.8 and np.mean(largest) > 0.3


# --- encoders ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["bert", "roberta", "distilbert", "modernbert"])
def test_an_encoders_parts_add_up_to_the_score_transformers_softmaxes(folders, name):
    model = load_model(ModelConfig(), str(folders[name]))
    inputs = encode_inputs(model, TEXT, pair=PAIR)
    ids, types = inputs["token_ids"], inputs["token_types"]
    reference = transformers.AutoModel.from_pretrained(
        folders[name], attn_implementation="eager", dtype=torch.float32).eval()
    extra = {"token_type_ids": torch.tensor([types])} if name == "bert" else {}
    with torch.no_grad():
        attentions = reference(torch.tensor([ids]), output_attentions=True, **extra).attentions
    n, largest = len(ids), []
    for layer in range(3):
        for head, query in ((1, 3), (2, n - 2), (3, 0)):
            result = why(model, ids, layer=layer, head=head, query=query, token_types=types)
            assert result.attention == "encoder" and result.key_names is None
            largest.append(check_exact(result, attentions[layer][0, head, query].numpy()))
            if model.window(layer) is None:  # every key, also those after the query
                assert result.keys == list(range(n))
            else:  # ModernBERT's local layers: |j - i| <= local_attention / 2
                assert result.keys == [j for j in range(n) if abs(j - query) <= 2]
            count = count_components(model, layer, "encoder")
            assert count[0] >= len(result.components) and count[2] == result.query_parts.shape[-1]
    check_peaked(largest)
    names = why(model, ids, layer=2, head=0, query=4, token_types=types).components
    if name in ("bert", "roberta"):  # post-norm: every LayerNorm's β is a component
        assert names[:4] == ["embed", "pos", "type", "bias.ln_emb"]
        assert names[4:12] == ["L0.H0", "L0.H1", "L0.H2", "L0.H3", "bias.out0", "bias.ln_attn0",
                               "mlp0", "bias.ln_mlp0"]
        assert names[-1] == "bias.proj2" and len(names) == 4 + 2 * 8 + 1
    elif name == "distilbert":  # no token types
        assert names[:3] == ["embed", "pos", "bias.ln_emb"] and "type" not in names
    else:  # ModernBERT: pre-norm, RoPE, no biases
        assert names == ["embed", "L0.H0", "L0.H1", "L0.H2", "L0.H3", "mlp0",
                         "L1.H0", "L1.H1", "L1.H2", "L1.H3", "mlp1"]


def test_the_pairs_token_types_are_a_component_of_their_own(folders):
    """BERT: the segment embedding is ``type``: in a pair its part differs between the two
    sentences, and without the pair the text's score changes."""
    model = load_model(ModelConfig(), str(folders["bert"]))
    inputs = encode_inputs(model, TEXT, pair=PAIR)
    ids, types, start = inputs["token_ids"], inputs["token_types"], inputs["pair_start"]
    result = why(model, ids, layer=1, head=2, query=start + 1, token_types=types)
    type_part = result.key_parts[result.components.index("type")]  # (K, hd)
    # the first sentence's keys share one type row, the second's another (through the
    # frozen LayerNorms they differ by their σ only): not the same vector
    assert not np.allclose(type_part[1] / np.linalg.norm(type_part[1]),
                           type_part[start + 1] / np.linalg.norm(type_part[start + 1]), atol=1e-3)
    plain = why(model, ids, layer=1, head=2, query=start + 1, token_types=[0] * len(ids))
    assert abs(plain.score - result.score) > 1e-4 or plain.key != result.key


def _bert_hooks(folder, ids, types):
    """transformers' BERT with hooks: each layer's context (before the output dense), and
    what each LayerNorm reads."""
    bert = transformers.AutoModel.from_pretrained(folder, attn_implementation="eager",
                                                  dtype=torch.float32).eval()
    seen: dict = {}

    def keep(key, output=False):
        def hook(module, args, result=None):
            seen[key] = (result[0] if output else args[0])[0].detach().double()
        return hook

    seen_ln = bert.embeddings.LayerNorm.register_forward_pre_hook(keep("emb_ln"))
    handles = [seen_ln]
    for i, layer in enumerate(bert.encoder.layer):
        handles += [layer.attention.self.register_forward_hook(keep(("context", i), True)),
                    layer.attention.output.LayerNorm.register_forward_pre_hook(keep(("ln1", i))),
                    layer.output.LayerNorm.register_forward_pre_hook(keep(("ln2", i)))]
    with torch.no_grad():
        bert(torch.tensor([ids]), token_type_ids=torch.tensor([types]))
    for h in handles:
        h.remove()
    return bert, seen


def _frozen_ln(ln, read: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """LayerNorm ``ln`` frozen at what it ``read`` (T, d), applied to ``c (T, d)``."""
    sigma = torch.sqrt(read.var(-1, unbiased=False, keepdim=True) + ln.eps)
    return (c - c.mean(-1, keepdim=True)) / sigma * ln.weight.double()


def test_berts_parts_equal_a_recomputation_through_transformers_layernorms(folders):
    """Independent of attnviz's code: a head's output of layer 0 and the embedding terms,
    recomputed from transformers' BERT (hooks) through every LayerNorm after them, frozen
    at what each read, then through layer 2's key and query projections."""
    model = load_model(ModelConfig(), str(folders["bert"]))
    inputs = encode_inputs(model, TEXT, pair=PAIR)
    ids, types = inputs["token_ids"], inputs["token_types"]
    bert, seen = _bert_hooks(folders["bert"], ids, types)
    layer, head, query = 2, 1, 5
    result = why(model, ids, layer=layer, head=head, query=query, token_types=types)
    hd = 8
    rows = slice(head * hd, (head + 1) * hd)
    attention = bert.encoder.layer[layer].attention.self
    w_k = attention.key.weight[rows].double()
    w_q = attention.query.weight[rows].double()

    def through(c, first):  # c (T, d) entering the LayerNorm sequence at ``first``
        lns = [("emb", None)] + [(k, i) for i in range(layer) for k in ("ln1", "ln2")]
        for kind, i in lns[first:]:
            if kind == "emb":
                c = _frozen_ln(bert.embeddings.LayerNorm, seen["emb_ln"], c)
            else:
                module = (bert.encoder.layer[i].attention.output.LayerNorm if kind == "ln1"
                          else bert.encoder.layer[i].output.LayerNorm)
                c = _frozen_ln(module, seen[(kind, i)], c)
        return c

    for h in range(4):  # layer 0's heads: context slice through the output dense's slice
        dense = bert.encoder.layer[0].attention.output.dense.weight.double()
        out = seen[("context", 0)][:, h * hd:(h + 1) * hd] @ dense[:, h * hd:(h + 1) * hd].T
        part = through(out, 1)  # ln1 of layer 0 onwards
        c = result.components.index(f"L0.H{h}")
        np.testing.assert_allclose(result.key_parts[c], (part @ w_k.T).detach().numpy()[result.keys],
                                   atol=1e-7, rtol=1e-5)
        scale = bert.encoder.layer[layer].attention.self.scaling
        np.testing.assert_allclose(result.query_parts[c], (part[query] @ w_q.T).detach().numpy() * scale,
                                   atol=1e-7, rtol=1e-5)
    embeddings = bert.embeddings
    terms = {"embed": embeddings.word_embeddings.weight[ids],
             "pos": embeddings.position_embeddings.weight[:len(ids)],
             "type": embeddings.token_type_embeddings.weight[types]}
    for name, term in terms.items():
        part = through(term.detach().double(), 0)
        np.testing.assert_allclose(result.key_parts[result.components.index(name)],
                                   (part @ w_k.T).detach().numpy()[result.keys], atol=1e-7,
                                   rtol=1e-5)


# --- encoder–decoders --------------------------------------------------------------------

def _seq2seq_reference(folder, source, target):
    config = transformers.AutoConfig.from_pretrained(folder)
    cls = {"t5": transformers.T5ForConditionalGeneration,
           "bart": transformers.BartForConditionalGeneration,
           "marian": transformers.MarianMTModel}[config.model_type]
    model = cls.from_pretrained(folder, attn_implementation="eager", dtype=torch.float32).eval()
    with torch.no_grad():
        out = model(input_ids=torch.tensor([source]), decoder_input_ids=torch.tensor([target]),
                    output_attentions=True)
    return model, {"encoder": out.encoder_attentions, "decoder": out.decoder_attentions,
                   "cross": out.cross_attentions}


@pytest.mark.parametrize("name", ["t5", "bart", "marian"])
def test_each_kind_of_an_encoder_decoder_adds_up_to_the_score_transformers_softmaxes(folders,
                                                                                     name):
    model = load_model(ModelConfig(), str(folders[name]), seq2seq=True)
    source, target = encode_texts(model, SOURCE, TARGET)
    _, attentions = _seq2seq_reference(folders[name], source, target)
    largest = []
    for kind in ("encoder", "decoder", "cross"):
        n_layers = model.n_layers if kind == "encoder" else model.n_decoder_layers
        queries = len(source) if kind == "encoder" else len(target)
        for layer in range(n_layers):
            for head, query in ((0, queries - 1), (2, 3), (3, 1)):
                result = why(model, source, layer=layer, head=head, query=query, attention=kind,
                             decoder_ids=target)
                assert result.attention == kind
                largest.append(check_exact(result, attentions[kind][layer][0, head, query].numpy()))
                n_keys = len(source) if kind != "decoder" else query + 1
                assert result.keys == list(range(n_keys))
                assert (result.position_bias is not None) == (name == "t5" and kind != "cross")
                q, k, _ = count_components(model, layer, kind)
                assert q >= len(result.query_components) and k >= len(result.key_components)
    check_peaked(largest)
    cross = why(model, source, layer=1, head=1, query=2, attention="cross", decoder_ids=target)
    assert cross.token_ids == target and cross.key_token_ids == source
    sizes = f"{len(cross.query_components)} x {len(cross.key_components)} contributions"
    assert sizes in repr(cross) and "Top pairs" in cross._repr_mimebundle_()["text/html"]
    own = [n for n in cross.key_components if not n.startswith("enc.")]
    assert own == (["bias.proj1"] if name != "t5" else [])  # the key projection's bias
    assert cross.query_components[:1] == ["embed"] and "L1.H0" in cross.query_components
    assert "L1.X0" not in cross.query_components and "L0.X0" in cross.query_components
    if name == "bart":  # post-norm: the embedding norm's and every LayerNorm's β
        assert cross.query_components[:3] == ["embed", "pos", "bias.ln_emb"]
        assert "bias.ln_cross0" in cross.query_components and "bias.ln_attn1" in cross.query_components
        assert cross.key_components[-3:] == ["enc.mlp1", "enc.bias.ln_mlp1", "bias.proj1"]
        assert cross.query_components[-1] == "bias.proj1"


def test_t5s_relative_position_bias_is_transformers_own(folders):
    """The bias is a term of the score beside the matrix: equal to what transformers'
    T5Attention.compute_bias gives (bidirectional buckets in the encoder, causal in the
    decoder)."""
    model = load_model(ModelConfig(), str(folders["t5"]), seq2seq=True)
    source, target = encode_texts(model, SOURCE, TARGET)
    t5, _ = _seq2seq_reference(folders["t5"], source, target)
    for kind, stack, ids in (("encoder", t5.encoder, source), ("decoder", t5.decoder, target)):
        n = len(ids)
        with torch.no_grad():
            bias = stack.block[0].layer[0].SelfAttention.compute_bias(n, n)[0]  # (nh, n, n)
        for layer, head, query in ((0, 1, n - 1), (1, 3, 2)):
            result = why(model, source, layer=layer, head=head, query=query, attention=kind,
                         decoder_ids=target)
            np.testing.assert_allclose(result.position_bias, bias[head, query, result.keys].numpy(),
                                       atol=1e-6)
            assert abs(result.contributions().sum() + result.bias_at() - result.score) < 1e-9
            assert abs(result.score - result.model_score) < 1e-4 * max(1, abs(result.score))


def test_t5s_cross_attention_keys_are_the_encoder_output_through_its_final_norm(folders):
    """The key side's ``enc.embed``: T5's shared embedding rows through the encoder's final
    RMSNorm frozen at what it read (a hook), through the cross-attention's key rows."""
    model = load_model(ModelConfig(), str(folders["t5"]), seq2seq=True)
    source, target = encode_texts(model, SOURCE, TARGET)
    t5, _ = _seq2seq_reference(folders["t5"], source, target)
    seen = {}
    handle = t5.encoder.final_layer_norm.register_forward_pre_hook(
        lambda module, args: seen.update(read=args[0][0].detach().double()))
    with torch.no_grad():
        t5(input_ids=torch.tensor([source]), decoder_input_ids=torch.tensor([target]))
    handle.remove()
    layer, head, query = 1, 2, 3
    result = why(model, source, layer=layer, head=head, query=query, attention="cross",
                 decoder_ids=target)
    norm = t5.encoder.final_layer_norm
    rms = torch.sqrt(seen["read"].pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    embed = t5.shared.weight[source].detach().double() / rms * norm.weight.double()
    rows = slice(head * 8, (head + 1) * 8)
    w_k = t5.decoder.block[layer].layer[1].EncDecAttention.k.weight[rows].double()
    np.testing.assert_allclose(result.key_parts[result.key_components.index("enc.embed")],
                               (embed @ w_k.T).detach().numpy(), atol=1e-7, rtol=1e-5)
    # the key side adds up to the whole encoder output's key: the parts are the encoder's
    with torch.no_grad():
        memory = t5.encoder(input_ids=torch.tensor([source])).last_hidden_state[0].double()
    np.testing.assert_allclose(result.key_parts.sum(0), (memory @ w_k.T).detach().numpy(),
                               atol=1e-5 * float(memory.abs().max()))


# --- random mode --------------------------------------------------------------------------

def test_random_bidirectional_and_cross_split_into_the_embeddings():
    config = ModelConfig(n_heads=4, d_model=32, qkv_bias=True, bidirectional=True)
    model = load_model(config, None)
    ids = encode_inputs(model, TEXT)["token_ids"]
    result = why(model, ids, layer=0, head=1, query=3)
    assert result.attention == "encoder" and result.keys == list(range(len(ids)))
    assert result.components == ["embed", "pos", "bias.proj0"]
    with torch.no_grad():
        _, weights = model.attention(model.embed(ids)[None], return_weights=True)
    check_exact(result, weights[0, 1, 3].double().numpy())  # random rows: not peaked

    config = ModelConfig(n_heads=4, d_model=32, cross_d_in=24)
    model = load_model(config, None)
    found = encode_inputs(model, TEXT, cross="a dog slept by the door")
    ids, key_ids = found["token_ids"], found["key_ids"]
    result = why(model, ids, layer=0, head=2, query=4, key_ids=key_ids)
    assert result.attention == "cross" and result.keys == list(range(len(key_ids)))
    assert result.key_token_ids == key_ids and result.key_parts.shape[:2] == (2, len(key_ids))
    module = model.cross_module
    tokens, positions = model.embed_parts(key_ids, 24)
    rows = slice(16, 24)
    w_k = module.W_key.weight[rows].detach().double()
    np.testing.assert_allclose(result.key_parts[0], (tokens.double() @ w_k.T).numpy(), atol=1e-12)
    np.testing.assert_allclose(result.key_parts[1], (positions.double() @ w_k.T).numpy(), atol=1e-12)
    # torch's own cross-attention gives the weights the scores softmax to
    with torch.no_grad():
        x, context = model.embed(ids)[None], model.embed_keys(key_ids)[None]
        mha = torch.nn.MultiheadAttention(32, 4, kdim=24, vdim=24, bias=False, batch_first=True)
        mha.q_proj_weight.copy_(module.W_query.weight)
        mha.k_proj_weight.copy_(module.W_key.weight)
        mha.v_proj_weight.copy_(module.W_value.weight)
        _, reference = mha(x, context, context, average_attn_weights=False)
    check_exact(result, reference[0, 2, 4].double().numpy())


# --- the command ----------------------------------------------------------------------------

def run_json(cli, *args):
    done = cli("why", *args, "--format", "json", "-q")
    assert done.exit_code == 0, done.stderr
    return json.loads(done.stdout)


def test_the_command_of_an_encoder_with_a_pair(cli, folders, tmp_path):
    folder = folders["bert"]
    doc = run_json(cli, TEXT, "--weights", folder, "--pair", PAIR, "--layer", "2", "--head", "1",
                   "--query", "4", "--key", "all", "-o", tmp_path / "why.npz")
    assert doc["attention"] == "encoder" and doc["position_bias"] is None
    assert doc["query_components"] == doc["key_components"]
    assert {t["sentence"] for t in doc["tokens"]} == {0, 1}
    assert doc["tokens"][0]["special"] is True  # [CLS]
    n = len(doc["tokens"])
    assert doc["keys"]["positions"] == list(range(n))  # keys after the query too
    np.testing.assert_allclose(np.array(doc["keys"]["key_totals"]).sum(0), doc["keys"]["scores"],
                               atol=1e-9)
    arrays = np.load(tmp_path / "why.npz")
    assert str(arrays["attention"]) == "encoder"
    assert list(arrays["key_components"]) == doc["key_components"]
    table = cli("why", TEXT, "--weights", folder, "--pair", PAIR, "--layer", "2", "--head", "1",
                "--query", "4")
    assert table.exit_code == 0 and table.stdout.startswith("L2 H1, query 4 (")
    assert "the sum of 21 x 21 contributions" in table.stdout


def test_the_command_of_cross_attention_is_rectangular(cli, folders, tmp_path):
    folder = folders["t5"]
    doc = run_json(cli, SOURCE, "--weights", folder, "--decoder-text", TARGET, "--layer", "1",
                   "--head", "2", "--query", "3", "--plot", tmp_path / "maps")
    assert doc["attention"] == "cross"  # the default of an encoder–decoder
    matrix = np.array(doc["contributions"])
    assert matrix.shape == (len(doc["query_components"]), len(doc["key_components"]))
    assert matrix.shape[0] != matrix.shape[1]
    assert abs(matrix.sum() - doc["score"]) < 1e-9
    assert [t["id"] for t in doc["key_tokens"]] != [t["id"] for t in doc["tokens"]]
    assert doc["key"]["label"] == [t["label"] for t in doc["key_tokens"]][doc["key"]["position"]]
    assert all((tmp_path / "maps" / f).read_bytes().startswith(b"\x89PNG")
               for f in ("contributions.png", "keys.png"))
    csv = cli("why", SOURCE, "--weights", folder, "--decoder-text", TARGET, "--layer", "1",
              "--head", "2", "--query", "3", "--format", "csv")
    lines = csv.stdout.splitlines()
    assert lines[0] == "query_component," + ",".join(doc["key_components"])
    assert len(lines) == 1 + len(doc["query_components"])
    own = run_json(cli, SOURCE, "--weights", folder, "--decoder-text", TARGET, "--attention",
                   "decoder", "--layer", "1", "--head", "2", "--query", "5", "--key", "all")
    assert own["attention"] == "decoder" and own["keys"]["positions"] == list(range(6))
    bias = np.array(own["keys"]["position_bias"])
    np.testing.assert_allclose(np.array(own["keys"]["key_totals"]).sum(0) + bias,
                               own["keys"]["scores"], atol=1e-9)
    table = cli("why", SOURCE, "--weights", folder, "--decoder-text", TARGET, "--attention",
                "decoder", "--layer", "1", "--head", "2", "--query", "5", "--key", "all")
    assert table.stdout.startswith("decoder L1 H2, query 5 (")
    assert "+ the relative position bias " in table.stdout and "position bias" in table.stdout


def test_the_python_api_explains_an_encoder_pair_and_each_kind_of_an_encoder_decoder(
        cli, folders, tmp_path):
    import attnviz

    bert = attnviz.why(TEXT, folders["bert"], pair=PAIR, head=(2, 1), query=4)
    doc = run_json(cli, TEXT, "--weights", folders["bert"], "--pair", PAIR, "--layer", "2",
                   "--head", "1", "--query", "4")
    assert bert.attention == "encoder" and bert.key == doc["key"]["position"]
    np.testing.assert_allclose(bert.contributions(), doc["contributions"], atol=1e-12)
    t5 = attnviz.load(folders["t5"])
    for kind in ("cross", "decoder", "encoder"):
        ours = attnviz.why(SOURCE, t5, decoder_text=TARGET, attention=kind, head=(1, 2),
                           query=3, report=tmp_path / f"{kind}.html" if kind == "cross" else None)
        doc = run_json(cli, SOURCE, "--weights", folders["t5"], "--decoder-text", TARGET,
                       "--attention", kind, "--layer", "1", "--head", "2", "--query", "3")
        assert ours.attention == kind == doc["attention"]
        assert ours.score == pytest.approx(doc["score"], abs=1e-12)
        np.testing.assert_allclose(ours.contributions(), doc["contributions"], atol=1e-12)
    assert page_payload(tmp_path / "cross.html")["attention"] == "cross"
    with pytest.raises(InputError, match="--pair is not supported for encoder–decoder models"):
        attnviz.why(SOURCE, t5, pair=PAIR, head=(0, 0))
    with pytest.raises(InputError, match="layer 9 is out of range: the model has 2 layers"):
        attnviz.why(SOURCE, t5, decoder_text=TARGET, attention="decoder", head=(9, 0))


def page_payload(path):
    data = re.search(r'<script type="application/json" id="why-data">(.*?)</script>',
                     path.read_text(), re.S).group(1)
    return json.loads(data)


def test_the_report_of_cross_attention_holds_both_sides(cli, folders, tmp_path):
    folder = folders["t5"]
    path = tmp_path / "why.html"
    done = cli("why", SOURCE, "--weights", folder, "--decoder-text", TARGET, "--layer", "1",
               "--head", "2", "--query", "3", "--report", path, "-q")
    assert done.exit_code == 0, done.stderr
    payload = page_payload(path)
    model = load_model(ModelConfig(), str(folder), seq2seq=True)
    source, target = encode_texts(model, SOURCE, TARGET)
    assert payload["attention"] == "cross" and payload["position_bias"] is None
    assert (payload["n_tokens"], payload["n_keys"]) == (len(target), len(source))
    shape_q = (len(payload["components"]), len(target), payload["head_dim"])
    shape_k = (len(payload["key_components"]), len(source), payload["head_dim"])
    queries = np.frombuffer(base64.urlsafe_b64decode(payload["query_parts"]), "<f8").reshape(shape_q)
    keys = np.frombuffer(base64.urlsafe_b64decode(payload["key_parts"]), "<f8").reshape(shape_k)
    for query, key in ((3, 2), (0, len(source) - 1)):
        expected = why(model, source, layer=1, head=2, query=query, key=key, attention="cross",
                       decoder_ids=target)
        assert abs((queries[:, query] @ keys[:, key].T).sum() - expected.score) < 1e-9 * max(
            1, abs(expected.score))


@pytest.mark.browser
def test_clicking_a_cell_of_t5s_decoder_report_adds_the_position_bias(cli, folders, tmp_path):
    """In Debian's chromium: the page's score of a clicked cell is `why`'s, the relative
    position bias included; a key after the query is the causal mask's."""
    from playwright.sync_api import sync_playwright
    from test_report_browser import CHROMIUM, CHROMIUM_ARGS

    folder, path = folders["t5"], tmp_path / "why.html"
    done = cli("why", SOURCE, "--weights", folder, "--decoder-text", TARGET, "--attention",
               "decoder", "--layer", "1", "--head", "1", "--query", "4", "--report", path, "-q")
    assert done.exit_code == 0, done.stderr
    model = load_model(ModelConfig(), str(folder), seq2seq=True)
    source, target = encode_texts(model, SOURCE, TARGET)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: m.type in ("error", "warning") and errors.append(m.text))
        page.goto(path.resolve().as_uri())
        page.wait_for_selector("body[data-ready=true]", timeout=30_000)

        def click(query, key):
            cell = float(page.eval_on_selector("#heatmap", "c => c.dataset.cell"))
            page.locator("#heatmap").click(position={"x": (key + 0.5) * cell,
                                                     "y": (query + 0.5) * cell})
            return page.eval_on_selector("#explain", "e => ({...e.dataset, text: e.textContent})")

        for query, key in ((4, 2), (6, 6), (2, 0)):
            expected = why(model, source, layer=1, head=1, query=query, key=key,
                           attention="decoder", decoder_ids=target)
            seen = click(query, key)
            assert abs(float(seen["score"]) - expected.score) < 1e-9 * max(1, abs(expected.score))
            assert "relative position bias" in seen["text"]
        assert "(the causal mask)" in click(2, 5)["text"]
        assert errors == []
        browser.close()


@pytest.mark.parametrize(("args", "message"), [
    (["--weights", "t5", "--decoder-text", TARGET, "--attention", "all", "--layer", "0",
      "--head", "0"], "--attention all: this command shows encoder or decoder or cross attention"),
    (["--weights", "t5", "--pair", PAIR, "--layer", "0", "--head", "0"],
     "--pair is not supported for encoder–decoder models"),
    (["--weights", "t5", "--layer", "2", "--head", "0"],
     "--layer 2 is out of range: the checkpoint has 2 layers (0-1)"),
    (["--weights", "t5", "--decoder-text", TARGET, "--layer", "0", "--head", "0", "--query", "1",
      "--key", "99"], "--key 99 is out of range: query 1 sees keys 0-{last_source} (the "
     "source's {n_source} tokens)"),
    (["--weights", "bert", "--decoder-text", TARGET, "--layer", "0", "--head", "0"],
     "--decoder-text needs an encoder–decoder model (t5, bart, marian): bert is an encoder "
     "(bidirectional, no decoder)"),
    (["--weights", "bert", "--layer", "0", "--head", "0", "--query", "2", "--key", "40"],
     "--key 40 is out of range: query 2 sees keys 0-{last_text} (the text's {n_text} tokens)"),
    (["--weights", "modernbert", "--layer", "1", "--head", "0", "--query", "6", "--key", "1"],
     "--key 1 is outside layer 1's local window of ±2 positions: query 6 sees keys 4-8"),
    (["--bidirectional", "--cross", "x", "--layer", "0", "--head", "0"],
     "--cross has no causal mask to remove: give --cross or --bidirectional"),
    (["--cross", "", "--layer", "0", "--head", "0"],
     "--cross is empty: give the second text, whose tokens are the keys"),
])
def test_bad_input_is_one_error_line_naming_the_option(cli, folders, tmp_path, args, message,
                                                       monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [str(folders[a]) if a in folders else a for a in args]
    t5 = load_model(ModelConfig(), str(folders["t5"]), seq2seq=True)
    n_source = len(encode_texts(t5, TEXT, None)[0])
    n_text = len(encode_inputs(load_model(ModelConfig(), str(folders["bert"])), TEXT)["token_ids"])
    done = cli("why", TEXT, *args, "--plot", tmp_path / "maps", "-o", tmp_path / "why.npz")
    assert done.exit_code == 2, done.stdout
    expected = message.format(last_source=n_source - 1, n_source=n_source, last_text=n_text - 1,
                              n_text=n_text)
    assert done.stderr == f"Error: {expected}\n" and done.stdout == ""
    assert list(tmp_path.iterdir()) == []
