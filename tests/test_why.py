"""`attnviz why` against transformers itself: every component's part of the query and of the
key equals a recomputation from transformers' own activations (hooks: every head's context
and every MLP's output) and weights, with the norm scales frozen, written here; the parts add
up to the score, whose differences between keys are transformers' log-weight differences
(after the softcap, for Gemma 2); the textbook induction circuit is found on a hand-built
model, and a real one on SmolLM2."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from helpers import make_family_checkpoint, write_bpe_tokenizer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_families_ii import CASES, build

from attnviz.analyses.attention import encode_text, load_model
from attnviz.analyses.why import count_components, why
from attnviz.core.config import ModelConfig

TEXT = "When Mary and John went to the store, John gave a drink to Mary. The cat sat on the mat."


def gpt2_checkpoint(folder: Path) -> Path:
    """A tiny GPT-2 whose LayerNorms have weights and biases of their own (the centring and
    the biases are part of the split)."""
    config = transformers.GPT2Config(n_layer=3, n_head=4, n_embd=64, n_positions=128,
                                     vocab_size=300)
    torch.manual_seed(3)
    model = transformers.GPT2LMHeadModel(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".ln_" in name and name.endswith("weight"):
                param.uniform_(0.7, 1.3)
            else:
                param.normal_(0.0, 0.3 if ".ln_" not in name else 0.2)
    model.save_pretrained(folder)
    write_bpe_tokenizer(folder, vocab_size=300, bos=None)
    return folder


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("why")
    found = {"gpt2": gpt2_checkpoint(root / "gpt2"),
             "llama-gqa": make_family_checkpoint(root / "llama", "llama", n_layers=3),
             "qwen3-qk-norm": make_family_checkpoint(root / "qwen3", "qwen3", n_layers=3,
                                                     attention_bias=True)}
    for i, name in enumerate(("pythia-parallel", "gemma2-softcap", "gpt-neo-local",
                              "gemma3-two-bases")):
        make, std, dtype = CASES[name]
        found[name] = build(root / name, make(), std, dtype, seed=20 + i)
    return found


class Reference:
    """transformers' eager float32 model and the split recomputed from its activations and
    weights in float64 (shares nothing with attnviz's code)."""

    def __init__(self, folder: Path):
        self.model = transformers.AutoModelForCausalLM.from_pretrained(
            folder, attn_implementation="eager", dtype=torch.float32).eval().requires_grad_(False)
        config = self.model.config
        self.kind = kind = config.model_type
        base = self.model.base_model
        self.base, self.gemma = base, kind.startswith("gemma")
        self.blocks = base.h if kind in ("gpt2", "gpt_neo") else base.layers
        self.nh = config.num_attention_heads
        self.nkv = getattr(config, "num_key_value_heads", None) or self.nh
        self.hd = getattr(config, "head_dim", None) or config.hidden_size // self.nh
        self.softcap = getattr(config, "attn_logit_softcapping", None)

    def modules(self, layer: int) -> dict:
        block = self.blocks[layer]
        if self.kind == "gpt2":
            found = dict(attn=block.attn, out=block.attn.c_proj, norm=block.ln_1, mlp=block.mlp)
        elif self.kind == "gpt_neo":
            found = dict(attn=block.attn.attention, out=block.attn.attention.out_proj,
                         norm=block.ln_1, mlp=block.mlp)
        elif self.kind == "gpt_neox":
            found = dict(attn=block.attention, out=block.attention.dense,
                         norm=block.input_layernorm, mlp=block.mlp)
        else:
            found = dict(attn=block.self_attn, out=block.self_attn.o_proj,
                         norm=block.input_layernorm,
                         mlp=block.post_feedforward_layernorm if self.gemma else block.mlp)
        found["post"] = block.post_attention_layernorm if self.gemma else None
        return found

    def out_weight(self, out) -> torch.Tensor:
        """``(d, nh·hd)`` (GPT-2's Conv1D stores ``(in, out)``)."""
        return (out.weight.T if self.kind == "gpt2" else out.weight).double()

    def projection(self, attn, which: str, index: int):
        """``(W (hd, d), b (hd,) or None)`` of query head (key head) ``index``."""
        hd, at = self.hd, slice(index * self.hd, (index + 1) * self.hd)
        if self.kind == "gpt2":
            d = attn.c_attn.weight.shape[0]
            offset = 0 if which == "query" else d
            rows = slice(offset + index * hd, offset + (index + 1) * hd)
            return attn.c_attn.weight.T[rows].double(), attn.c_attn.bias[rows].double()
        if self.kind == "gpt_neox":  # per head: [q | k | v]
            weight = attn.query_key_value.weight.view(self.nh, 3, hd, -1)
            bias = attn.query_key_value.bias.view(self.nh, 3, hd)
            part = 0 if which == "query" else 1
            return weight[index, part].double(), bias[index, part].double()
        linear = attn.q_proj if which == "query" else attn.k_proj
        return (linear.weight[at].double(),
                None if linear.bias is None else linear.bias[at].double())

    def norm_weight(self, norm) -> torch.Tensor:
        return (1.0 + norm.weight.double()) if self.gemma else norm.weight.double()

    def frozen(self, norm, stream: torch.Tensor, component: torch.Tensor) -> torch.Tensor:
        """``norm`` applied to ``component (..., n, d)`` with the statistics of ``stream (n, d)``."""
        if isinstance(norm, torch.nn.LayerNorm):
            sigma = torch.sqrt(stream.var(-1, unbiased=False, keepdim=True) + norm.eps)
            return (component - component.mean(-1, keepdim=True)) / sigma * norm.weight.double()
        eps = getattr(norm, "variance_epsilon", None) or norm.eps
        return component / torch.sqrt(stream.pow(2).mean(-1, keepdim=True) + eps) * self.norm_weight(norm)

    def split(self, ids: list[int], layer: int, head: int, query: int, keys: list[int]):
        """``(names, query parts (C, hd), key parts (C, K, hd), weights row (T,))``."""
        seen: dict = {"context": {}, "out": {}, "mlp": {}}
        parts = [self.modules(i) for i in range(layer + 1)]
        handles = []
        def keep(i: int, kind: str):
            def hook(module, args, out):  # returns None: the output stays as it is
                if kind == "out":
                    seen["context"][i] = args[0][0].double()  # (T, nh·hd), into the projection
                seen[kind][i] = out[0].double()  # (T, d)
            return hook

        for i, found in enumerate(parts[:layer]):
            handles.append(found["out"].register_forward_hook(keep(i, "out")))
            handles.append(found["mlp"].register_forward_hook(keep(i, "mlp")))
        handles.append(parts[layer]["attn"].register_forward_pre_hook(
            lambda m, args, kwargs: seen.update(rope=kwargs.get("position_embeddings")),
            with_kwargs=True))
        with torch.no_grad():
            out = self.model(torch.tensor([ids]), output_hidden_states=True, output_attentions=True)
        for handle in handles:
            handle.remove()
        stream = out.hidden_states[layer][0].double()  # (T, d), entering the layer
        names, components = [], []
        first = out.hidden_states[0][0].double()
        if self.kind in ("gpt2", "gpt_neo"):
            positions = self.base.wpe.weight[:len(ids)].double()
            names += ["embed", "pos"]
            components += [first - positions, positions]
        else:
            names.append("embed")
            components.append(first)
        for i, found in enumerate(parts[:layer]):
            w_o = self.out_weight(found["out"]).view(-1, self.nh, self.hd)  # (d, nh, hd)
            context = seen["context"][i].view(len(ids), self.nh, self.hd)
            heads = [context[:, h] @ w_o[:, h].T for h in range(self.nh)]  # (T, d) each
            bias = None if found["out"].bias is None else found["out"].bias.double().expand(len(ids), -1)
            if found["post"] is not None:
                heads = [self.frozen(found["post"], seen["out"][i], h) for h in heads]
                bias = None if bias is None else self.frozen(found["post"], seen["out"][i], bias)
            names += [f"L{i}.H{h}" for h in range(self.nh)]
            components += heads
            if bias is not None:
                names.append(f"bias.out{i}")
                components.append(bias)
            names.append(f"mlp{i}")
            components.append(seen["mlp"][i])
        total = torch.stack(components).sum(0)
        assert torch.allclose(total, stream, atol=1e-4 * float(stream.abs().max()))
        found = parts[layer]
        attn, norm = found["attn"], found["norm"]
        kv_head = head // (self.nh // self.nkv)
        sides = []
        for which, index, at in (("query", head, [query]), ("key", kv_head, keys)):
            weight, bias = self.projection(attn, which, index)
            x = stream[at]
            actual = norm(x.float()).double() @ weight.T + (0 if bias is None else bias)
            qk_norm = getattr(attn, "q_norm" if which == "query" else "k_norm", None)

            def finish(v, qk_norm=qk_norm, actual=actual, at=at, which=which):
                if qk_norm is not None:
                    eps = getattr(qk_norm, "variance_epsilon", None) or qk_norm.eps
                    v = v / torch.sqrt(actual.pow(2).mean(-1, keepdim=True) + eps) * self.norm_weight(qk_norm)
                if seen.get("rope") is not None:
                    cos, sin = (t[:, at].double() for t in seen["rope"])
                    rotate = sys.modules[type(attn).__module__].apply_rotary_pos_emb
                    v = rotate(v[None, None], v[None, None], cos, sin)[0][0, 0]  # (n, hd)
                return v * (self.scale(attn) if which == "query" else 1.0)

            side = [finish(self.frozen(norm, x, c[at]) @ weight.T) for c in components]
            if isinstance(norm, torch.nn.LayerNorm):
                side.append(finish((weight @ norm.bias.double()).expand(len(at), -1)))
            if bias is not None:
                side.append(finish(bias.expand(len(at), -1)))
            sides.append(torch.stack(side))
        if isinstance(norm, torch.nn.LayerNorm):
            names.append(f"bias.norm{layer}")
        if self.projection(attn, "query", head)[1] is not None:
            names.append(f"bias.proj{layer}")
        row = out.attentions[layer][0, head, query].double().numpy()
        return names, sides[0][:, 0].numpy(), sides[1].numpy(), row

    def scale(self, attn) -> float:
        if self.kind == "gpt2":
            return self.hd ** -0.5
        if self.kind == "gpt_neo":
            return 1.0  # GPT-Neo does not scale its scores
        return attn.scaling


def capped(scores: np.ndarray, softcap: float | None) -> np.ndarray:
    return scores if softcap is None else softcap * np.tanh(scores / softcap)


CELLS = [(-1, 1, -1), (1, -1, 9)]  # (layer, head, query); negative: from the end


@pytest.mark.parametrize("name", ["gpt2", "llama-gqa", "qwen3-qk-norm", "gemma2-softcap",
                                  "pythia-parallel", "gpt-neo-local", "gemma3-two-bases"])
def test_every_part_equals_a_transformers_recomputation_and_adds_up_to_the_score(checkpoints, name):
    model = load_model(ModelConfig(), str(checkpoints[name]))
    ref = Reference(checkpoints[name])
    ids = encode_text(model, TEXT)[:24]
    for layer, head, query in CELLS:
        layer, head = layer % model.n_layers, head % model.n_heads
        result = why(model, ids, layer=layer, head=head, query=query)
        names, query_parts, key_parts, row = ref.split(ids, layer, head, result.query, result.keys)
        assert result.components == names
        assert count_components(model, layer) == (len(names), len(names), query_parts.shape[-1])
        scale = float(np.abs(query_parts.sum(0)).max())
        np.testing.assert_allclose(result.query_parts, query_parts, rtol=0, atol=2e-6 * scale)
        scale = float(np.abs(key_parts.sum(0)).max())
        np.testing.assert_allclose(result.key_parts, key_parts, rtol=0, atol=2e-6 * scale)
        # the matrix adds up to the score, the score to the forward pass's own
        matrix = result.contributions()
        assert matrix.shape == (len(names), len(names))
        assert abs(matrix.sum() - result.score) <= 1e-12 * max(1.0, abs(result.score))
        assert abs(result.score - result.model_score) <= 1e-5 * max(1.0, abs(result.score))
        assert result.vector_error < 1e-5
        # differences of (capped) scores are transformers' log-weight differences
        weights = row[result.keys]
        np.testing.assert_allclose(result.weights, weights, atol=1e-5, rtol=0)
        seen = weights > 1e-6
        logs = np.log(weights[seen]) - np.log(weights[seen]).mean()
        scores = capped(result.scores, ref.softcap)[seen]
        np.testing.assert_allclose(scores - scores.mean(), logs, atol=1e-4, rtol=0)
        assert result.key == result.keys[int(np.argmax(weights))]
        assert (result.softcap is not None) == (name == "gemma2-softcap")


@pytest.fixture(scope="module")
def llama(checkpoints):
    model = load_model(ModelConfig(), str(checkpoints["llama-gqa"]))
    return model, encode_text(model, TEXT)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(layer=st.integers(0, 2), head=st.integers(0, 3), query=st.integers(0, 30),
       key_at=st.floats(0, 1))
def test_any_cell_adds_up_to_its_score(llama, layer, head, query, key_at):
    model, ids = llama
    key = int(key_at * query)
    result = why(model, ids, layer=layer, head=head, query=query, key=key)
    assert result.key == key and result.kv_head == head // 2  # 4 heads, 2 key/value heads
    total = result.contributions().sum()
    assert abs(total - result.model_score) <= 1e-4 * max(1.0, abs(total))
    assert abs(result.query_totals().sum() - total) < 1e-9 * max(1.0, abs(total))
    assert abs(result.key_totals().sum() - total) < 1e-9 * max(1.0, abs(total))
    np.testing.assert_allclose(result.key_totals_by_key().sum(0), result.scores, atol=1e-9)
    weights = result.weights.astype(np.float64)
    seen = weights > 1e-6
    logs = np.log(weights[seen])
    np.testing.assert_allclose(result.scores[seen] - result.scores[seen].mean(),
                               logs - logs.mean(), atol=1e-4)


def test_random_mode_splits_into_the_embeddings_and_the_biases():
    config = ModelConfig(n_heads=4, d_model=32, qkv_bias=True)
    model = load_model(config, None)
    ids = encode_text(model, TEXT)
    result = why(model, ids, layer=0, head=2, query=12)
    assert result.components == ["embed", "pos", "bias.proj0"]
    assert count_components(model, 0) == (3, 3, 8)
    tokens, positions = model.embed_parts(ids)
    rows = slice(2 * 8, 3 * 8)
    w_q = model.fused.W_query.weight[rows].detach().double()
    np.testing.assert_allclose(result.query_parts[0], (w_q @ tokens[12].double()).numpy() / 8**0.5,
                               atol=1e-12)
    w_k, b_k = (model.fused.W_key.weight[rows].detach().double(),
                model.fused.W_key.bias[rows].detach().double())
    np.testing.assert_allclose(result.key_parts[1], (positions[:13].double() @ w_k.T).numpy(), atol=1e-12)
    np.testing.assert_allclose(result.key_parts[2], b_k.expand(13, -1).numpy(), atol=0)
    weights = result.weights.astype(np.float64)
    np.testing.assert_allclose(result.scores - result.scores.mean(),
                               np.log(weights) - np.log(weights).mean(), atol=1e-4)
    with pytest.raises(Exception, match="layer 1 is out of range: the model has 1 layer"):
        why(model, ids, layer=1, head=0, query=3)


def test_the_textbook_induction_circuit_is_found(tmp_path):
    """On the hand-built induction model (layer 0: a previous-token head writing the previous
    token into the stream; layer 1: its query, the current token, matched against that copy):
    the query side is the token embedding, the key side layer 0's head."""
    from test_generate import make_induction_model

    model = load_model(None, str(make_induction_model(tmp_path / "induction")))
    first = np.random.default_rng(5).choice(np.arange(2, 300), size=12, replace=False).tolist()
    ids = first + first
    for query in (14, 18, 23):
        result = why(model, ids, layer=1, head=0, query=query)
        assert result.key == query - 11 and result.weight > 0.99  # after the earlier occurrence
        assert result.top_pairs(1)[0][:2] == ("embed", "L0.H0")
        assert result.top_components("key", 1)[0][0] == "L0.H0"
        assert result.top_components("query", 1)[0][0] == "embed"
        assert result.top_pairs(1)[0][2] > 0.95 * result.score


def test_smollm2s_induction_head_reads_its_previous_token_head(smollm2_gguf):
    """Measured first (docs/why.md): on 50 random tokens repeated, L18 H6 attends from each
    query of the repeat to the token after the earlier occurrence, and at that key the
    largest key-side component is L16 H0, the model's previous-token head
    (test_real_model.py), with the largest pair the query's mlp0 (its own token) × that
    head's output: K-composition, found by the tool."""
    from attnviz.analyses.induction import probe_tokens

    model = load_model(None, str(smollm2_gguf))
    first = probe_tokens(model, np.random.default_rng(0), 50)
    ids = first + first
    for query in (59, 75, 91):
        result = why(model, ids, layer=18, head=6, query=query)
        assert result.key == query - 49 and result.weight > 0.9
        component, total = result.top_components("key", 1)[0]
        assert component == "L16.H0" and total > 0.5 * result.score
        assert result.top_pairs(1)[0][:2] == ("mlp0", "L16.H0")
        by_key = result.key_totals_by_key()
        column = result.keys.index(result.key)
        lift = by_key[:, column] - np.delete(by_key, column, axis=1).mean(1)
        assert result.components[int(np.argmax(lift))] == "L16.H0"
        assert abs(result.score - result.model_score) < 1e-4 * abs(result.score)


# --- the command ---------------------------------------------------------------------------

def run_json(cli, *args):
    done = cli("why", *args, "--format", "json", "-q")
    assert done.exit_code == 0, done.stderr
    return json.loads(done.stdout)


def test_cli_json_csv_npz_and_pictures(cli, checkpoints, tmp_path):
    folder = checkpoints["gpt2"]
    doc = run_json(cli, TEXT, "--weights", folder, "--layer", "2", "--head", "1", "--query", "12",
                   "--plot", tmp_path / "maps", "-o", tmp_path / "why.npz", "--top", "3")
    assert doc["layer"] == 2 and doc["head"] == 1 and doc["query"]["position"] == 12
    names = doc["query_components"]
    assert names == doc["key_components"] and names[:3] == ["embed", "pos", "L0.H0"]
    assert names[-2:] == ["bias.norm2", "bias.proj2"] and "mlp1" in names and "bias.out0" in names
    matrix = np.array(doc["contributions"])
    assert matrix.shape == (len(names), len(names))
    assert abs(matrix.sum() - doc["score"]) < 1e-9 and abs(doc["score"] - doc["model_score"]) < 1e-4
    assert doc["softcap"] is None and doc["capped_score"] == doc["score"]
    assert len(doc["top_pairs"]) == 3 and "keys" not in doc
    assert abs(sum(doc["query_totals"]) - doc["score"]) < 1e-9
    assert [Path(f).name for f in doc["files"]] == ["contributions.png", "keys.png", "why.npz"]
    assert all(Path(f).read_bytes().startswith(b"\x89PNG") for f in doc["files"][:2])
    arrays = np.load(tmp_path / "why.npz")
    np.testing.assert_allclose(arrays["contributions"], matrix, atol=1e-12)
    assert list(arrays["components"]) == names and arrays["key_parts"].shape[:2] == (len(names), 13)
    assert list(arrays["head"]) == [2, 1, 12, doc["key"]["position"]]

    every = run_json(cli, TEXT, "--weights", folder, "--layer", "2", "--head", "1",
        "--query", "12", "--key", "all")
    keys = every["keys"]
    assert keys["positions"] == list(range(13)) and len(keys["key_totals"]) == len(names)
    totals = np.array(keys["key_totals"])
    np.testing.assert_allclose(totals.sum(0), keys["scores"], atol=1e-9)
    assert abs(sum(keys["weights"]) - 1) < 1e-5
    chosen = run_json(cli, TEXT, "--weights", folder, "--layer", "2", "--head", "1",
        "--query", "12", "--key", "3")
    assert chosen["key"]["position"] == 3
    assert abs(chosen["score"] - keys["scores"][3]) < 1e-9

    csv = cli("why", TEXT, "--weights", folder, "--layer", "2", "--head", "1",
        "--query", "12", "--format", "csv")
    assert csv.exit_code == 0, csv.stderr
    lines = csv.stdout.splitlines()
    assert lines[0] == "query_component," + ",".join(names) and len(lines) == 1 + len(names)
    csv = cli("why", TEXT, "--weights", folder, "--layer", "2", "--head", "1",
        "--query", "12", "--key", "all",
              "--format", "csv")
    lines = csv.stdout.splitlines()
    assert lines[0] == "component," + ",".join(f"key_{j}" for j in range(13))

    table = cli("why", TEXT, "--weights", folder, "--layer", "2", "--head", "1",
        "--query", "12", "--key", "all")
    assert table.exit_code == 0, table.stderr
    out = table.stdout
    assert out.startswith("L2 H1, query 12 (") and "Top pairs" in out and "Keys by weight" in out
    assert f"the sum of {len(names)} x {len(names)} contributions" in out


def test_the_softcap_is_named(cli, checkpoints):
    doc = run_json(cli, TEXT, "--weights", checkpoints["gemma2-softcap"], "--layer", "3", "--head", "0",
                   "--query", "10")
    assert doc["softcap"] == 20.0
    assert abs(doc["capped_score"] - 20 * np.tanh(doc["score"] / 20)) < 1e-9
    table = cli("why", TEXT, "--weights", checkpoints["gemma2-softcap"], "--layer", "3", "--head", "0",
                "--query", "10")
    assert "split before the softcap: 20·tanh(score/20)" in table.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["--head", "3"], "--head 3 needs its layer: add --layer L"),
    (["--layer", "3", "--head", "0"], "--layer 3 is out of range: the checkpoint has 3 layers (0-2)"),
    (["--layer", "1", "--head", "4"], "--head 4: head 4 is out of range: layer 1 has 4 heads (0-3)"),
    (["--layer", "1,2", "--head", "1"], "why explains one head of one layer: give a single --layer L"),
    (["--layer", "1", "--head", "1", "--query", "99"], "--query 99 is out of range: the text has {n} tokens "
     "(0-{last}; negative numbers count from the end)"),
    (["--layer", "1", "--head", "1", "--query", "5", "--key", "6"], "--key 6 is after the query 5: under the "
     "causal mask query 5 sees keys 0-5"),
    (["--layer", "1", "--head", "1", "--query", "5", "--key", "-1"],
     "--key -1 is out of range: query 5 sees keys 0-5"),
    (["--layer", "1", "--head", "1", "--key", "first"],
     "--key must be a key position (0, 1, …) or all, got 'first'"),
    (["--layer", "1", "--head", "1", "-o", "why.txt"],
     "-o why.txt: the file is an .npz archive; name it .npz"),
])
def test_bad_input_is_one_error_line_and_nothing_is_written(cli, checkpoints, tmp_path, args, message,
                                                            monkeypatch):
    monkeypatch.chdir(tmp_path)
    n = len(encode_text(load_model(None, str(checkpoints["gpt2"])), TEXT))
    result = cli("why", TEXT, "--weights", checkpoints["gpt2"], *args, "--plot", tmp_path / "maps")
    assert result.exit_code == 2
    assert result.stderr == f"Error: {message.format(n=n, last=n - 1)}\n" and result.stdout == ""
    assert not (tmp_path / "maps").exists() and list(tmp_path.iterdir()) == []


def test_a_key_outside_the_sliding_window_is_refused(cli, checkpoints):
    result = cli("why", TEXT, "--weights", checkpoints["gpt-neo-local"], "--layer", "1", "--head", "0",
                 "--query", "12", "--key", "2")
    assert result.exit_code == 2
    assert result.stderr == ("Error: --key 2 is outside layer 1's sliding window of 7 tokens: "
                             "query 12 sees keys 6-12\n")
    doc = run_json(cli, TEXT, "--weights", checkpoints["gpt-neo-local"], "--layer", "1", "--head", "0",
                   "--query", "12", "--key", "all")
    assert doc["keys"]["positions"] == list(range(6, 13))


def test_random_mode_and_the_python_api_agree_with_the_command(cli, checkpoints):
    import attnviz

    doc = run_json(cli, TEXT, "--layer", "0", "--head", "3", "--query", "7", "--heads", "4",
                   "--d-model", "32")
    assert doc["query_components"] == ["embed", "pos"]
    result = attnviz.why(TEXT, None, head=(0, 3), query=7, heads=4, d_model=32)
    assert abs(result.score - doc["score"]) < 1e-12 and result.key == doc["key"]["position"]
    model = attnviz.load(str(checkpoints["llama-gqa"]))
    result = attnviz.why(TEXT, model, head=(2, 1), query=-1)
    assert repr(result).startswith("<attnviz why: L2 H1, query ")
    bundle = result._repr_mimebundle_()
    assert "Top pairs" in bundle["text/html"] and bundle["image/png"]
    with pytest.raises(Exception, match=r"head must be \(layer, head\)"):
        attnviz.why(TEXT, model, head=3)


def test_pictures_name_their_scales_and_group_by_layer():
    from attnviz.pictures.why import component_groups, keys_bytes, matrix_bytes

    names = (["embed", "pos"]
             + [n for i in range(8) for n in [f"L{i}.H{h}" for h in range(6)] + [f"bias.out{i}", f"mlp{i}"]]
             + ["bias.norm8"])
    groups = component_groups(names)
    assert [g[0] for g in groups] == ["emb"] + [f"L{i}" for i in range(8)] + ["bias"]
    assert groups[1] == ("L0", 2, 10)
    rng = np.random.default_rng(0)
    matrix = rng.normal(size=(len(names), len(names)))
    svg = matrix_bytes(matrix, names, "Why L8 H0", fmt="svg").decode()
    assert "contribution to the score (linear, symmetric about 0)" in svg
    assert all(f">L{i}<" in svg for i in range(8))  # more than 48 components: the groups named
    few = names[:12]
    svg = matrix_bytes(matrix[:12, :12], few, "Why L1 H0", fmt="svg").decode()
    assert all(f">{n}<" in svg for n in few)
    totals = rng.normal(size=(12, 5))
    svg = keys_bytes(totals, few, ["a", "b", "c", "d", "e"], [3, 4, 5, 6, 7], 5,
                     np.array([0.1, 0.2, 1.0, 0.0, 0.0]), "Why L1 H0", fmt="svg").decode()
    assert "key-side total (linear, symmetric about 0)" in svg
    # the weights' short bar: its name wrapped to the bar's length, the scale on its own line
    assert ">attention" in svg and "weight<" in svg and ">linear scale<" in svg
    assert ">5 c<" in svg


# --- the report: the head's heatmap, each clicked cell split in the page --------------------

def page_payload(path: Path) -> dict:
    import re

    data = re.search(r'<script type="application/json" id="why-data">(.*?)</script>',
                     path.read_text(), re.S).group(1)
    return json.loads(data)


def test_the_report_holds_every_cells_parts(cli, checkpoints, tmp_path):
    import base64

    folder = checkpoints["gemma2-softcap"]
    done = cli("why", TEXT, "--weights", folder, "--layer", "3", "--head", "1", "--query", "12",
               "--report", tmp_path / "why.html", "--format", "json", "-q")
    assert done.exit_code == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["files"] == [str(tmp_path / "why.html")]
    payload = page_payload(tmp_path / "why.html")
    assert payload["format"] == "attnviz-why" and payload["dtype"] == "float64"
    assert payload["softcap"] == 20.0 and payload["window"] is None  # layer 3 is global
    model = load_model(None, str(folder))
    ids = encode_text(model, TEXT)
    result = why(model, ids, layer=3, head=1, query=12, every_query=True)
    shape = (len(result.components), len(ids), payload["head_dim"])
    parts = np.frombuffer(base64.urlsafe_b64decode(payload["query_parts"]), "<f8").reshape(shape)
    np.testing.assert_array_equal(parts, result.cells.query_parts)
    keys = np.frombuffer(base64.urlsafe_b64decode(payload["key_parts"]), "<f8").reshape(shape)
    assert abs((parts[:, 12] @ keys[:, doc["key"]["position"]].T).sum() - doc["score"]) < 1e-9
    # every cell of the page is the cell `why` explains when asked for it
    other = why(model, ids, layer=3, head=1, query=20, key=5)
    assert abs((parts[:, 20] @ keys[:, 5].T).sum() - other.score) < 1e-5 * max(1, abs(other.score))


def test_a_report_too_large_is_refused_before_anything_is_written(cli, checkpoints, tmp_path,
                                                                 monkeypatch):
    from attnviz.display import why_report

    monkeypatch.setattr(why_report, "MAX_BYTES", 1000)
    done = cli("why", TEXT, "--weights", checkpoints["gpt2"], "--layer", "1", "--head", "1", "--report",
               tmp_path / "why.html", "-o", tmp_path / "why.npz", "--plot", tmp_path / "maps")
    assert done.exit_code == 2 and done.stderr.startswith("Error: --report would hold ")
    assert "shorten the text or drop --report" in done.stderr and list(tmp_path.iterdir()) == []


@pytest.mark.browser
def test_clicking_a_cell_of_the_report_shows_its_split(cli, checkpoints, tmp_path):
    """In Debian's chromium (as tests/test_report_browser.py): the page computes the clicked
    cell's matrix itself, equal to `why` asked for that cell."""
    from playwright.sync_api import sync_playwright
    from test_report_browser import CHROMIUM, CHROMIUM_ARGS

    folder = checkpoints["gpt-neo-local"]
    path = tmp_path / "why.html"
    done = cli("why", TEXT, "--weights", folder, "--layer", "1", "--head", "2", "--query", "14",
               "--report", path, "-q")
    assert done.exit_code == 0, done.stderr
    model = load_model(None, str(folder))
    ids = encode_text(model, TEXT)
    first = why(model, ids, layer=1, head=2, query=14)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors, requests = [], []
        page.on("console", lambda m: m.type in ("error", "warning") and errors.append(m.text))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: requests.append(r.url))
        page.goto(path.resolve().as_uri())
        page.wait_for_selector("body[data-ready=true]", timeout=30_000)

        def shown():
            return page.eval_on_selector("#explain", "e => ({...e.dataset, text: e.textContent})")

        def click(query, key):
            cell = float(page.eval_on_selector("#heatmap", "c => c.dataset.cell"))
            page.locator("#heatmap").click(position={"x": (key + 0.5) * cell, "y": (query + 0.5) * cell})
            return shown()

        start = shown()
        assert (int(start["query"]), int(start["key"])) == (14, first.key)
        # the page's text is the whole text, `first`'s its first 15 tokens: float32 rounding apart
        assert abs(float(start["score"]) - first.score) < 1e-5 * max(1, abs(first.score))
        for query, key in ((20, 17), (9, 9), (25, 19)):
            expected = why(model, ids, layer=1, head=2, query=query, key=key)
            seen = click(query, key)
            assert (int(seen["query"]), int(seen["key"])) == (query, key)
            assert abs(float(seen["score"]) - expected.score) < 1e-5 * max(1, abs(expected.score))
            assert abs(float(seen["weight"]) - expected.weight) < 1e-5
            pairs = page.eval_on_selector_all(
                "#pairs tr", "rs => rs.slice(1).map(r => r.cells[0].textContent + ' ' + "
                "r.cells[1].textContent)")
            assert pairs[0] == " ".join(expected.top_pairs(1)[0][:2])
        assert "does not see key 21 (the causal mask)" in click(20, 21)["text"]
        assert "sliding window of 7 tokens" in click(20, 3)["text"]  # layer 1 is local
        assert errors == [] and requests == [path.resolve().as_uri()]
        browser.close()
