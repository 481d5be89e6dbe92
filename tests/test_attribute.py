"""`attnviz attribute` against transformers itself: ablation effects equal hooked transformers
forwards (the head's slice of the output projection's input zeroed or replaced by its mean),
direct logit attribution equals a recomputation from transformers' activations and weights
written here, the decomposition adds up to the metric, and a head planted to copy the target
ranks first by both measures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from helpers import make_family_checkpoint, make_hf_checkpoint
from test_families_ii import CASES, build

from attnviz.analyses.attention import encode_text, load_model
from attnviz.analyses.attribution import attribute
from attnviz.core.config import ModelConfig

TEXT = "When Mary and John went to the store, John gave a drink to"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("attribute")
    found = {"gpt2": make_hf_checkpoint(root / "gpt2", 3, 4, 64, lm_head=True),
             "llama-gqa": make_family_checkpoint(root / "llama", "llama", n_layers=3)}
    for i, name in enumerate(("pythia-parallel", "gemma2-softcap", "gpt-neo-local")):
        make, std, dtype = CASES[name]
        found[name] = build(root / name, make(), std, dtype, seed=10 + i)
    return found


class Reference:
    """transformers' eager float32 model of a checkpoint, with the parts this test reads."""

    def __init__(self, folder: Path):
        self.model = transformers.AutoModelForCausalLM.from_pretrained(
            folder, attn_implementation="eager", dtype=torch.float32).eval().requires_grad_(False)
        config = self.model.config
        kind = config.model_type
        base = self.model.base_model
        if kind in ("gpt2", "gpt_neo"):
            layers, self.final_norm = base.h, base.ln_f
            self.out_proj = [b.attn.c_proj if kind == "gpt2" else b.attn.attention.out_proj
                             for b in layers]
        elif kind == "gpt_neox":
            layers, self.final_norm = base.layers, base.final_layer_norm
            self.out_proj = [b.attention.dense for b in layers]
        else:
            layers, self.final_norm = base.layers, base.norm
            self.out_proj = [b.self_attn.o_proj for b in layers]
        self.post_norm = ([b.post_attention_layernorm for b in layers]
                          if kind.startswith("gemma") else None)
        self.n_heads = config.num_attention_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.n_heads
        self.unembedding = self.model.get_output_embeddings().weight.detach()  # (V, d)
        self.kind = kind

    def run(self, ids: list[int], hooks=()) -> dict:
        """One forward; returns the final norm's input and output at every position and each
        layer's output-projection input and output, ``(T, ·)``."""
        seen: dict = {"proj_in": {}, "proj_out": {}}
        handles = [self.final_norm.register_forward_hook(
            lambda m, a, out: seen.update(resid=a[0][0].clone(), normed=out[0].clone()))]
        # (dict.update returns None: the norm's output is left alone)
        def keep(layer):
            def hook(module, args, out):  # returns None: the output stays as it is
                seen["proj_in"][layer], seen["proj_out"][layer] = args[0][0].clone(), out[0].clone()
            return hook

        handles += [proj.register_forward_hook(keep(layer)) for layer, proj in enumerate(self.out_proj)]
        handles += [proj.register_forward_pre_hook(hook) for proj, hook in hooks]
        with torch.no_grad():
            self.model(torch.tensor([ids]))
        for handle in handles:
            handle.remove()
        return seen

    def metric(self, seen: dict, position: int, direction: torch.Tensor) -> float:
        return float(seen["normed"][position] @ direction.detach())  # before any final softcap

    def ablated(self, ids, layer, head, fill=None):
        """The run with ``head`` of ``layer`` zeroed (or set to ``fill (nh·hd,)``) where it
        enters the output projection."""
        hd = self.head_dim

        def hook(module, args):
            x = args[0].clone()
            x[..., head * hd:(head + 1) * hd] = 0 if fill is None else fill[head * hd:(head + 1) * hd]
            return (x,)

        return self.run(ids, [(self.out_proj[layer], hook)])

    def norm_frozen(self, norm, stream: torch.Tensor, component: torch.Tensor) -> torch.Tensor:
        """``norm`` applied to ``component`` with the statistics of ``stream`` (no bias)."""
        if isinstance(norm, torch.nn.LayerNorm):
            sigma = torch.sqrt(stream.var(unbiased=False) + norm.eps)
            return (component - component.mean()) / sigma * norm.weight
        eps = getattr(norm, "eps", None) or norm.variance_epsilon
        rms = torch.sqrt(stream.pow(2).mean() + eps)
        weight = (1 + norm.weight) if self.kind.startswith("gemma") else norm.weight
        return component / rms * weight

    def dla(self, seen: dict, position: int, direction: torch.Tensor) -> np.ndarray:
        hd, nh = self.head_dim, self.n_heads
        out = np.zeros((len(self.out_proj), nh))
        for layer, proj in enumerate(self.out_proj):
            context = seen["proj_in"][layer][position]
            weight = proj.weight if self.kind != "gpt2" else proj.weight.T  # Conv1D: (in, out)
            for head in range(nh):
                piece = weight[:, head * hd:(head + 1) * hd] @ context[head * hd:(head + 1) * hd]
                if self.post_norm is not None:
                    piece = self.norm_frozen(self.post_norm[layer],
                                             seen["proj_out"][layer][position], piece)
                piece = self.norm_frozen(self.final_norm, seen["resid"][position], piece)
                out[layer, head] = float(piece @ direction)
        return out


@pytest.mark.parametrize("name", ["gpt2", "llama-gqa", "pythia-parallel", "gemma2-softcap",
                                  "gpt-neo-local"])
def test_ablation_and_dla_equal_transformers(checkpoints, name):
    model = load_model(ModelConfig(), str(checkpoints[name]))
    ids = encode_text(model, TEXT)[:12]
    target, contrast = ids[3], ids[5]
    ref = Reference(checkpoints[name])
    direction = ref.unembedding[target] - ref.unembedding[contrast]
    position = len(ids) - 2  # not the last: the positions after it must not matter
    result = attribute(model, ids, position=position, target=target, contrast=contrast)
    clean = ref.run(ids)
    assert result.metric == pytest.approx(ref.metric(clean, position, direction), abs=1e-4)
    expected = np.array([[ref.metric(ref.ablated(ids, layer, head), position, direction)
                          for head in range(ref.n_heads)] for layer in range(len(ref.out_proj))])
    expected -= ref.metric(clean, position, direction)
    assert np.abs(expected).max() > 0.05  # the heads matter: a real comparison
    np.testing.assert_allclose(result.ablation, expected, atol=1e-4)
    np.testing.assert_allclose(result.dla, ref.dla(clean, position, direction), atol=1e-4)
    # every component together is the metric
    assert result.decomposition_total() == pytest.approx(result.metric, abs=1e-4)
    # each head's attention row at the position, as transformers gives it
    with torch.no_grad():
        attentions = ref.model(torch.tensor([ids]), output_attentions=True).attentions
    for layer, weights in enumerate(attentions):
        np.testing.assert_allclose(result.attention[layer], weights[0, :, position, :position + 1],
                                   atol=1e-5)


@pytest.mark.parametrize("name", ["gpt2", "llama-gqa"])
def test_mean_ablation_equals_transformers(checkpoints, name):
    model = load_model(ModelConfig(), str(checkpoints[name]))
    ids = encode_text(model, TEXT)
    baseline = [encode_text(model, t) for t in ("The cat sat on the mat.", "Mary went home")]
    ref = Reference(checkpoints[name])
    target = ids[3]
    direction = ref.unembedding[target]
    for prompts in (None, baseline):
        result = attribute(model, ids, target=target, ablate="mean", baseline=prompts)
        runs = [ref.run(p) for p in (prompts or [ids])]
        means = {layer: torch.cat([r["proj_in"][layer] for r in runs]).mean(0)
                 for layer in range(len(ref.out_proj))}
        clean = ref.metric(ref.run(ids), len(ids) - 1, direction)
        expected = np.array([[ref.metric(ref.ablated(ids, layer, head, means[layer]),
                                         len(ids) - 1, direction) - clean
                              for head in range(ref.n_heads)] for layer in range(len(ref.out_proj))])
        np.testing.assert_allclose(result.ablation, expected, atol=1e-4)
    assert result.baseline_prompts == 2


def planted_checkpoint(folder: Path, head: int = 1) -> Path:
    """A GPT-2 whose heads all write almost nothing, but for ``head`` of layer 1: uniform
    attention (no query/key weights) and an OV circuit that copies the token embeddings
    (value: 32 orthonormal directions; output: the same directions, scaled), so the
    tokens of the prompt get pushed up through the tied unembedding."""
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=64, n_positions=64)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    hd = 32
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "ln_" not in name:
                param.normal_(0.0, 0.01)
        model.transformer.wte.weight.normal_(0.0, 1.0)
        attn = model.transformer.h[1].attn
        basis, _ = torch.linalg.qr(torch.randn(64, hd))  # (64, 32), orthonormal columns
        qkv = attn.c_attn.weight  # Conv1D (in 64, out 3·64): q | k | v
        qkv[:, head * hd:(head + 1) * hd] = 0
        qkv[:, 64 + head * hd:64 + (head + 1) * hd] = 0
        qkv[:, 128 + head * hd:128 + (head + 1) * hd] = basis
        attn.c_attn.bias.zero_()
        attn.c_proj.weight[head * hd:(head + 1) * hd] = 8.0 * basis.T  # (in 32 of 64, out 64)
    model.save_pretrained(folder)
    return folder


def test_the_planted_head_ranks_first(tmp_path):
    folder = planted_checkpoint(tmp_path / "planted", head=1)
    model = load_model(ModelConfig(), str(folder))
    ids = encode_text(model, " Mary Mary Mary went to the store and")
    target = ids[0]
    result = attribute(model, ids, target=target)
    assert result.top_heads("dla", 1)[0][:2] == (1, 1)
    assert result.top_heads("ablation", 1)[0][:2] == (1, 1)
    assert result.dla[1, 1] > 10 * np.abs(np.delete(result.dla.ravel(), 3)).max()
    assert result.ablation[1, 1] < 0  # removing the copier lowers the target's logit


def run_json(cli, *args):
    result = cli("attribute", *args, "--format", "json", "-q")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_cli_json_csv_and_pictures(cli, checkpoints, tmp_path):
    weights = str(checkpoints["gpt2"])
    maps = tmp_path / "maps"
    doc = run_json(cli, TEXT, "--weights", weights, "--target", " Mary", "--contrast", " John",
                   "--plot", maps, "--top-k", 3)
    assert doc["metric"]["kind"] == "logit_difference"
    assert doc["metric"]["target"]["text"] == " Mary" and doc["metric"]["contrast"]["text"] == " John"
    assert len(doc["predictions"]) == 3
    probabilities = [p["probability"] for p in doc["predictions"]]
    assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1
    assert len(doc["heads"]) == 3 * 4
    position = doc["position"]
    assert position == len(doc["tokens"]) - 1
    for row in doc["heads"]:
        assert len(row["attention"]) == position + 1
        assert sum(row["attention"]) == pytest.approx(1, abs=1e-5)
    total = sum(r["dla"] for r in doc["heads"]) + sum(doc["components"].values())
    assert total == pytest.approx(doc["metric"]["value"], abs=1e-4)
    assert doc["decomposition_total"] == pytest.approx(doc["metric"]["value"], abs=1e-4)
    assert sorted(Path(f).name for f in doc["files"]) == ["ablation.png", "dla.png", "top_heads.png"]
    for f in doc["files"]:
        assert Path(f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # CSV: the same numbers, one row per layer x head
    csv = cli("attribute", TEXT, "--weights", weights, "--target", " Mary", "--contrast", " John",
              "--format", "csv", "-q")
    lines = csv.stdout.strip().splitlines()
    header = lines[0].split(",")
    assert header[:4] == ["layer", "head", "dla", "ablation"]
    assert header[4:] == [f"key_{k}" for k in range(position + 1)]
    assert len(lines) == 1 + 12
    first = dict(zip(header, lines[1].split(",")))
    assert float(first["dla"]) == pytest.approx(doc["heads"][0]["dla"], abs=1e-6)
    assert float(first["ablation"]) == pytest.approx(doc["heads"][0]["ablation"], abs=1e-6)
    # the default target is the top prediction; the table names it
    table = cli("attribute", TEXT, "--weights", weights, "--position", "3")
    assert table.exit_code == 0, table.stderr
    default = run_json(cli, TEXT, "--weights", weights, "--position", "3")
    assert default["metric"]["target"]["id"] == default["predictions"][0]["id"]
    assert default["position"] == 3
    assert "Top heads by direct logit attribution" in table.stdout
    assert f"logit({default['predictions'][0]['label']})" in table.stdout


@pytest.mark.parametrize("args, message", [
    (["--target", " Maryland and"], "is 2 tokens, not one"),
    (["--position", "99"], "--position 99 is out of range"),
    (["--target", " Mary", "--contrast", " Mary"], "--contrast is the target token itself"),
    (["--baseline-file", "PROMPTS"], "--baseline-file gives the means of --ablate mean"),
    (["--ablate", "random"], "--ablate must be zero or mean"),
    (["--ablate", "mean", "--baseline-file", "LONG"], "longer than the context length"),
])
def test_bad_input_is_refused(cli, checkpoints, tmp_path, args, message):
    (tmp_path / "PROMPTS").write_text("The cat sat\n")
    (tmp_path / "LONG").write_text("fine\n" + "word " * 200 + "\n")
    args = [str(tmp_path / a) if a in ("PROMPTS", "LONG") else a for a in args]
    maps = tmp_path / "maps"
    result = cli("attribute", TEXT, "--weights", str(checkpoints["gpt2"]), *args, "--plot", maps)
    assert result.exit_code == 2, result.stdout
    assert result.stderr.startswith("Error: ") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not maps.exists()


def test_random_mode_is_refused(cli):
    result = cli("attribute", TEXT)
    assert result.exit_code == 2
    assert "pass --weights" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("kind", ["Qwen3Model", "Gemma3Model"])
def test_the_book_classes_ablation_equals_their_independent_implementation(tmp_path, kind):
    """The book's own classes (written in tests/test_book_models.py), their logits read from
    ``out_head``, the head zeroed by a pre-hook on ``att.out_proj``."""
    import warnings

    from test_book_models import book_model, save

    book, cfg = book_model(kind)
    path, cfg_path, tokenizer = save(tmp_path, book, cfg)
    config = ModelConfig(book_config=str(cfg_path), tokenizer=str(tokenizer))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # what came from the config is said
        model = load_model(config, str(path))
    ids = encode_text(model, TEXT)
    blocks = book.blocks if hasattr(book, "blocks") else book.trf_blocks
    hd = blocks[0].att.head_dim
    target = ids[4]

    def metric(hooks=()):
        handles = [module.register_forward_pre_hook(hook) for module, hook in hooks]
        with torch.no_grad():
            value = float(book(torch.tensor([ids]))[0, -1, target])
        for handle in handles:
            handle.remove()
        return value

    def zero(head):
        def hook(module, args):
            x = args[0].clone()
            x[..., head * hd:(head + 1) * hd] = 0
            return (x,)
        return hook

    clean = metric()
    expected = np.array([[metric([(block.att.out_proj, zero(h))]) - clean
                          for h in range(cfg["n_heads"])] for block in blocks])
    result = attribute(model, ids, target=target)
    assert result.metric == pytest.approx(clean, abs=1e-4)
    assert np.abs(expected).max() > 0.05
    np.testing.assert_allclose(result.ablation, expected, atol=1e-4)
    assert result.decomposition_total() == pytest.approx(result.metric, abs=1e-4)


def test_report_with_a_target_carries_the_attribution(cli, checkpoints, tmp_path):
    from attnviz.display.report import read_payload

    weights = str(checkpoints["gpt2"])
    page = tmp_path / "r.html"
    done = cli("report", TEXT, "--weights", weights, "--target", " Mary", "--contrast", " John",
               "-o", page, "-q")
    assert done.exit_code == 0, done.stderr
    data = read_payload(page)["attribution"]
    doc = run_json(cli, TEXT, "--weights", weights, "--target", " Mary", "--contrast", " John")
    assert data["metric"] == doc["metric"] and data["predictions"] == doc["predictions"]
    assert data["dla"] == [[r["dla"] for r in doc["heads"] if r["layer"] == layer] for layer in range(3)]
    assert data["ablation"] == [[r["ablation"] for r in doc["heads"] if r["layer"] == layer]
                                for layer in range(3)]
    plain = tmp_path / "plain.html"
    assert cli("report", TEXT, "--weights", weights, "-o", plain, "-q").exit_code == 0
    assert "attribution" not in read_payload(plain)
    assert "Heads that matter" not in plain.read_text() and "Heads that matter" in page.read_text()


@pytest.mark.parametrize("args, message", [
    (["--target", " Mary and"], "is 2 tokens, not one"),
    (["--target", " Mary", "--ablate", "half"], "--ablate must be zero or mean"),
    (["--target", " Mary", "--position", "-40"], "--position -40 is out of range"),
])
def test_report_refuses_a_bad_target_before_writing(cli, checkpoints, tmp_path, args, message):
    page = tmp_path / "r.html"
    done = cli("report", TEXT, "--weights", str(checkpoints["gpt2"]), *args, "-o", page)
    assert done.exit_code == 2 and message in done.stderr and not page.exists()
    random_mode = cli("report", TEXT, "--target", " Mary", "-o", page)
    assert random_mode.exit_code == 2 and "pass --weights" in random_mode.stderr
