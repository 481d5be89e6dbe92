"""`attnviz generate` against transformers' own generate and against one full forward:
greedy ids equal, cached rows equal the full forward's, seeded sampling reproducible."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers
from helpers import make_family_checkpoint

from attnviz.analyses.attention import analyze_ids, load_model
from attnviz.analyses.generation import Sampling, generate

PROMPT = "When Mary and John went to the store, John gave a drink to"


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return make_family_checkpoint(tmp_path_factory.mktemp("gen") / "llama", "llama", std=0.2)


@pytest.fixture(scope="module")
def gemma2(tmp_path_factory):
    import transformers as tf
    from helpers import write_bpe_tokenizer

    folder = tmp_path_factory.mktemp("gen") / "gemma2"
    config = tf.Gemma2Config(vocab_size=300, hidden_size=64, intermediate_size=128,
                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                             head_dim=16, query_pre_attn_scalar=16, sliding_window=4,
                             final_logit_softcapping=10.0, pad_token_id=None, bos_token_id=None,
                             eos_token_id=None)
    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.uniform_(-0.3, 0.3) if "norm" in name else param.normal_(0.0, 0.25)
    model.save_pretrained(folder)
    write_bpe_tokenizer(folder, vocab_size=300, bos="<bos>")
    return folder


def transformers_greedy(folder, prompt_ids, n, model_class=transformers.AutoModelForCausalLM):
    model = model_class.from_pretrained(folder, attn_implementation="eager", dtype=torch.float32).eval()
    with torch.no_grad():
        ids = torch.tensor([prompt_ids])  # every position real: an explicit mask, no padding
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                             do_sample=False, pad_token_id=model.config.vocab_size - 1,
                             eos_token_id=None)
    return out[0, len(prompt_ids):].tolist()


@pytest.mark.parametrize("which", ["gpt2", "gpt2-untied", "llama", "gemma2"])
def test_greedy_ids_equal_transformers_generate(which, hf_checkpoint, llama, gemma2, tmp_path):
    if which == "gpt2":  # transformers' GPT2LMHeadModel ties its head to wte, as attnviz reads it
        model_class = transformers.GPT2LMHeadModel
        folder = tmp_path / "lm"
        model_class.from_pretrained(hf_checkpoint).save_pretrained(folder)
    elif which == "gpt2-untied":  # tie_word_embeddings: false, as `attnviz train` writes
        model_class = transformers.GPT2LMHeadModel
        folder = tmp_path / "untied"
        tied = model_class.from_pretrained(hf_checkpoint)
        config = tied.config
        config.tie_word_embeddings = False
        untied = model_class(config)
        untied.transformer.load_state_dict(tied.transformer.state_dict())
        torch.manual_seed(3)
        with torch.no_grad():  # a head unlike wte: reading wte instead changes every logit
            untied.lm_head.weight.copy_(torch.randn_like(untied.lm_head.weight))
        untied.save_pretrained(folder)
    else:
        folder, model_class = {"llama": llama, "gemma2": gemma2}[which], transformers.AutoModelForCausalLM
    model = load_model(None, str(folder))
    prompt_ids = model.tokenizer.encode(PROMPT)
    result = generate(model, prompt_ids, 12, ignore_eos=True)
    assert result.new_ids == transformers_greedy(folder, prompt_ids, 12, model_class)
    assert which == "gemma2" or len(set(result.new_ids)) > 1  # not a degenerate repetition
    # the probabilities too (Gemma 2's final softcap changes them, not the argmax)
    reference = model_class.from_pretrained(folder, attn_implementation="eager", dtype=torch.float32)
    with torch.no_grad():
        probs = reference(torch.tensor([prompt_ids])).logits[0, -1].softmax(-1)
    assert result.probabilities[0] == pytest.approx(float(probs[result.new_ids[0]]), abs=1e-5)
    top = [i for i, _ in result.alternatives[0]]
    assert top == torch.topk(probs, len(top)).indices.tolist()


@pytest.mark.parametrize("which", ["llama", "gemma2"])
def test_every_generated_row_equals_one_full_forward(which, llama, gemma2):
    folder = {"llama": llama, "gemma2": gemma2}[which]
    model = load_model(None, str(folder))
    prompt_ids = model.tokenizer.encode(PROMPT)
    result = generate(model, prompt_ids, 15, ignore_eos=True)
    p, n = result.prompt_length, len(result.new_ids)
    assert result.rows.shape == (model.n_layers, model.n_heads, n, p + n)
    full = analyze_ids(result.token_ids, weights=str(folder), layer="all").weights  # (L, H, T, T)
    for g in range(n):  # token g was written by the query at position p + g - 1
        np.testing.assert_allclose(result.rows[:, :, g, : p + g], full[:, :, p + g - 1, : p + g],
                                   atol=1e-5)
        assert not result.rows[:, :, g, p + g:].any()  # nothing after it: not written yet
    np.testing.assert_allclose(result.rows.sum(-1), 1.0, atol=1e-5)


def test_seeded_sampling_is_reproducible_and_the_seed_matters(llama):
    model = load_model(None, str(llama))
    prompt_ids = model.tokenizer.encode(PROMPT)
    runs = [generate(model, prompt_ids, 20, ignore_eos=True,
                     sampling=Sampling(True, temperature=1.5, top_k=50, top_p=0.95, seed=s)).new_ids
            for s in (7, 7, 8)]
    assert runs[0] == runs[1] and runs[0] != runs[2]


def test_top_k_one_sampling_is_greedy(llama):
    model = load_model(None, str(llama))
    prompt_ids = model.tokenizer.encode(PROMPT)
    greedy = generate(model, prompt_ids, 10, ignore_eos=True).new_ids
    assert generate(model, prompt_ids, 10, ignore_eos=True,
                    sampling=Sampling(True, top_k=1, seed=3)).new_ids == greedy


def test_stops_at_eos_and_at_the_context(tmp_path):
    folder = make_family_checkpoint(tmp_path / "small-context", "llama", max_position_embeddings=24)
    model = load_model(None, str(folder))
    prompt_ids = model.tokenizer.encode("the cat sat on the mat")
    result = generate(model, prompt_ids, 100, ignore_eos=True)
    assert result.stopped == "context" and len(result.token_ids) == 24
    first = generate(model, prompt_ids, 1).new_ids[0]
    model.tokenizer.eos_id = first  # whatever it writes first is the end of the sequence
    try:
        stopped = generate(model, prompt_ids, 10)
    finally:
        model.tokenizer.eos_id = 1
    assert stopped.stopped == "eos" and stopped.new_ids == [first]


def test_the_cli_writes_json_npz_and_the_text(cli, llama, tmp_path):
    npz = tmp_path / "rows.npz"
    result = cli("generate", PROMPT, "--weights", llama, "-n", 6, "--ignore-eos", "--format",
                 "json", "-o", npz, "--head", 1, "--top-k-report", 3)
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    model = load_model(None, str(llama))
    prompt_ids = model.tokenizer.encode(PROMPT)
    expected = generate(model, prompt_ids, 6, ignore_eos=True, top_k_report=3)
    assert [s["id"] for s in document["generated"]] == expected.new_ids
    assert [t["id"] for t in document["prompt"]["tokens"]] == prompt_ids
    assert document["prompt"]["tokens"][0]["bos"] is True and document["heads"] == [1]
    step = document["generated"][2]
    assert len(step["top_k"]) == 3 and step["top_k"][0]["probability"] >= step["top_k"][1]["probability"]
    assert len(step["attention"]) == model.n_layers and len(step["attention"][0]) == 1
    np.testing.assert_allclose(step["attention"][0][0], expected.rows[0, 1, 2, : len(prompt_ids) + 2])
    arrays = np.load(npz)
    np.testing.assert_array_equal(arrays["rows"], expected.rows)
    assert int(arrays["prompt_length"]) == len(prompt_ids)
    assert arrays["token_ids"].tolist() == expected.token_ids
    quiet = cli("generate", PROMPT, "--weights", llama, "-n", 6, "--ignore-eos", "-q")
    assert quiet.exit_code == 0 and quiet.stdout.strip() == document["text"].strip()
    piped = cli("generate", PROMPT, "--weights", llama, "-n", 6, "--ignore-eos")
    assert piped.stdout.startswith(PROMPT) and piped.stdout.rstrip("\n").endswith(document["text"])


@pytest.mark.parametrize("args, words", [
    (["--max-new-tokens", "0"], "--max-new-tokens"),
    (["--sample", "--temperature", "0"], "--temperature must be above 0"),
    (["--sample", "--top-p", "1.5"], "--top-p must be in (0, 1]"),
    ([], None),  # placeholder: random mode, below
])
def test_bad_generation_options_are_one_error_and_write_nothing(cli, llama, tmp_path, args, words):
    npz = tmp_path / "rows.npz"
    if words is None:
        result = cli("generate", PROMPT, "-n", 3, "-o", npz)
        words = "generation needs trained weights"
    else:
        result = cli("generate", PROMPT, "--weights", llama, *args, "-o", npz)
    assert result.exit_code == 2, result.stderr
    assert words in result.stderr and result.stderr.startswith("Error: ")
    assert len(result.stderr.strip().splitlines()) == 1 and not npz.exists()


def test_a_prompt_at_the_context_length_is_refused(cli, tmp_path):
    folder = make_family_checkpoint(tmp_path / "tiny-context", "llama", max_position_embeddings=8)
    result = cli("generate", "the cat sat on the mat and the dog", "--weights", folder)
    assert result.exit_code == 2 and "no room to generate" in result.stderr


def make_induction_model(folder, vocab: int = 300, n_positions: int = 64, seed: int = 0):
    """A two-layer GPT-Neo (no score scaling, learned positions) built by hand: layer 0's
    head looks at the previous position and copies that token's embedding into a second
    block of the residual stream; layer 1's head matches the current token against it
    (finding the position after its previous occurrence) and copies that position's token
    into the first block, which the tied unembedding reads. It predicts the token that
    followed the current one last time: an induction model. MLPs are zero."""
    from safetensors.torch import save_file

    e, p = 256, n_positions  # e: token block (and its copy), p: one-hot positions
    d = 2 * e + p
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randn(vocab, e, generator=generator) / e**0.5  # ~unit, nearly orthogonal
    wte = torch.zeros(vocab, d)
    wte[:, :e] = tokens
    wpe = torch.zeros(n_positions, d)
    wpe[:, 2 * e:] = torch.eye(p)
    token_block, copy_block, position_block = slice(0, e), slice(e, 2 * e), slice(2 * e, d)

    def linear(rows: slice, cols: slice, matrix: torch.Tensor) -> torch.Tensor:
        w = torch.zeros(d, d)
        w[rows, cols] = matrix
        return w

    shift = torch.zeros(p, p)
    shift[torch.arange(p - 1), torch.arange(1, p)] = 1.0  # position i -> i - 1
    tensors = {"transformer.wte.weight": wte, "transformer.wpe.weight": wpe,
               "transformer.ln_f.weight": torch.ones(d), "transformer.ln_f.bias": torch.zeros(d)}
    layers = {
        # layer 0: the query at i is position i-1, the keys are positions: the previous token
        0: dict(q=linear(position_block, position_block, shift),
                k=linear(position_block, position_block, torch.eye(p)),
                v=linear(copy_block, token_block, torch.eye(e)), o=torch.eye(d) / 16),
        # layer 1: the query is the current token (moved to the copy block), the keys are the
        # copies of the previous tokens: the position after the previous occurrence
        1: dict(q=linear(copy_block, token_block, torch.eye(e)),
                k=linear(copy_block, copy_block, torch.eye(e)),
                v=linear(token_block, token_block, torch.eye(e)), o=torch.eye(d) * 0.4),
    }
    for i, w in layers.items():
        h = f"transformer.h.{i}."
        tensors |= {h + "ln_1.weight": torch.ones(d), h + "ln_1.bias": torch.zeros(d),
                    h + "ln_2.weight": torch.ones(d), h + "ln_2.bias": torch.zeros(d),
                    h + "attn.attention.q_proj.weight": w["q"], h + "attn.attention.k_proj.weight": w["k"],
                    h + "attn.attention.v_proj.weight": w["v"], h + "attn.attention.out_proj.weight": w["o"],
                    h + "attn.attention.out_proj.bias": torch.zeros(d),
                    h + "mlp.c_fc.weight": torch.zeros(4 * d, d), h + "mlp.c_fc.bias": torch.zeros(4 * d),
                    h + "mlp.c_proj.weight": torch.zeros(d, 4 * d), h + "mlp.c_proj.bias": torch.zeros(d)}
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({
        "model_type": "gpt_neo", "hidden_size": d, "num_heads": 1, "num_layers": 2,
        "attention_types": [[["global"], 2]], "window_size": 256, "vocab_size": vocab,
        "max_position_embeddings": n_positions, "intermediate_size": 4 * d,
        "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5}))
    from helpers import write_bpe_tokenizer

    write_bpe_tokenizer(folder, vocab_size=vocab, bos=None)
    return folder


def test_an_induction_model_writes_the_copy_and_its_rows_peak_after_the_earlier_occurrence(tmp_path):
    folder = make_induction_model(tmp_path / "induction")
    model = load_model(None, str(folder))
    first = np.random.default_rng(5).choice(np.arange(2, 300), size=12, replace=False).tolist()
    prompt = first + first[:4]  # ... the pattern again: the model should go on copying it
    result = generate(model, prompt, 8, ignore_eos=True)
    assert result.new_ids == first[4:12]
    p = result.prompt_length
    for g in range(len(result.new_ids)):
        query = p + g - 1  # the position that wrote token g holds a copy of first[(query) % 12]
        earlier = query - 12  # the same token, one period before
        row = result.rows[1, 0, g]  # layer 1: the induction head
        assert int(row.argmax()) == earlier + 1 and row.max() > 0.9
        previous = result.rows[0, 0, g]  # layer 0: the previous-token head
        assert int(previous.argmax()) == query - 1
