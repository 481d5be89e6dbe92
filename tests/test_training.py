"""attnviz.analyses.training (the core of `attnviz train`): the tiny model, its tasks and its
snapshots, checked against transformers' GPT2LMHeadModel and AutoTokenizer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from attnviz.analyses import circuit, training
from attnviz.analyses.attention import analyze

transformers = pytest.importorskip("transformers")


def _peaked(model: training.TinyGPT2, scale: float = 30.0) -> training.TinyGPT2:
    """Random weights scaled until attention is peaked (near-uniform rows hide errors)."""
    with torch.no_grad():
        for block in model.h:
            block.attn["c_attn_weight"].normal_(0.0, 0.02 * scale)
            block.attn["c_attn_bias"].normal_(0.0, 0.5)
        model.wte.weight.normal_(0.0, 1.0)
        model.wpe.weight.normal_(0.0, 1.0)
        for param in model.parameters():
            if param.dim() == 1 and param.shape[0] == model.config.n_embd:
                param.add_(torch.randn_like(param) * 0.1)
    return model


@pytest.fixture(scope="module")
def vocabulary():
    return training.word_vocabulary(64)


@pytest.mark.parametrize("mlp", [False, True])
def test_snapshot_equals_transformers(tmp_path, vocabulary, mlp):
    config = training.TrainConfig(vocab_size=len(vocabulary), n_positions=24, mlp=mlp, seed=3)
    model = _peaked(training.TinyGPT2(config))
    folder = training.save_snapshot(model, tmp_path / "step-000000", vocabulary=vocabulary)
    rng = np.random.default_rng(0)
    ids = torch.from_numpy(rng.integers(1, len(vocabulary), (1, 20)))

    hf = transformers.GPT2LMHeadModel.from_pretrained(folder, attn_implementation="eager").eval()
    with torch.no_grad():
        out = hf(ids, output_attentions=True)
        ours_logits, ours = model(ids, keep_weights=True)
    theirs = torch.stack(out.attentions)[:, 0]  # (L, H, T, T)
    assert theirs.amax(-1)[..., 1:].mean() > 0.5  # peaked rows, not near-uniform
    torch.testing.assert_close(torch.stack(ours)[:, 0], theirs, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours_logits, out.logits, atol=1e-4, rtol=1e-5)

    text = " ".join(vocabulary[i] for i in ids[0].tolist())
    result = analyze(text, weights=str(folder), layer="all")
    assert result.token_ids == ids[0].tolist()
    np.testing.assert_allclose(result.weights, theirs.numpy(), atol=1e-5, rtol=0)


def test_attention_only_snapshot_has_a_zero_mlp_and_its_own_output_head(tmp_path, vocabulary):
    from safetensors.torch import load_file

    config = training.TrainConfig(vocab_size=len(vocabulary), n_positions=16)
    model = training.TinyGPT2(config)
    folder = training.save_snapshot(model, tmp_path / "s", vocabulary=vocabulary)
    tensors = load_file(folder / "model.safetensors")
    assert torch.equal(tensors["lm_head.weight"], model.lm_head.weight.detach())  # untied
    assert not torch.equal(tensors["lm_head.weight"], tensors["transformer.wte.weight"])
    for i in range(config.n_layer):
        assert tensors[f"transformer.h.{i}.mlp.c_fc.weight"].abs().sum() == 0
        assert tensors[f"transformer.h.{i}.mlp.c_proj.bias"].abs().sum() == 0
    saved = json.loads((folder / "config.json").read_text())
    assert saved["vocab_size"] == 64 and saved["n_positions"] == 16
    assert saved["tie_word_embeddings"] is False
    assert saved["attnviz_training"]["weight_decay"] == config.weight_decay
    assert not list(tmp_path.glob(".*.tmp"))  # nothing half-written left behind


def test_word_tokenizer_equals_autotokenizer(tmp_path, vocabulary):
    from attnviz.text import tokenization

    training.save_word_tokenizer(vocabulary, tmp_path)
    text = " ".join(vocabulary[1:40:3]) + "  zzqx " + vocabulary[5]
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path)(text)["input_ids"]
    ours = tokenization.load_tokenizer(tmp_path / "tokenizer.json").encode(text)
    assert ours == theirs
    assert theirs[-2] == 0  # an unknown word is [UNK]
    assert vocabulary[0] == training.UNK and len(set(vocabulary)) == len(vocabulary)


@pytest.mark.parametrize("context, vocab", [(32, 64), (16, 8)])
def test_induction_batch_tiles_a_segment_after_noise_and_targets_the_repeats(context, vocab):
    config = training.TrainConfig(n_positions=context, vocab_size=vocab, batch_size=256, seed=7)
    ids, targets = training.induction_batch(config, step=5)
    assert ids.shape == targets.shape == (256, context)
    assert ids.min() >= 1 and ids.max() < config.vocab_size
    distinct = vocab - 1 >= context  # else tokens are drawn with replacement
    assert all(len(set(row.tolist())) < context for row in ids)  # every row repeats
    starts, lengths = set(), set()
    for row, target in zip(ids, targets):
        scored = (target != training.NO_TARGET).nonzero().flatten()
        first = int(scored[0])  # the first scored prediction: at start + length
        tail = row[first:]
        # the segment's length: the shortest period of the tail that reaches back to the
        # start, found from the tokens alone
        length = next(n for n in range(1, context) if torch.equal(tail, row[first - n:context - n]))
        start = first - length
        if distinct:  # nothing before the segment repeats, and the segment holds no repeat
            assert len(set(row[:first].tolist())) == first
        assert 0 <= start and (start <= context - 2 * length or not distinct)
        assert torch.equal(scored, torch.arange(first, context))  # every repeat but the first
        assert torch.equal(target[first:context - 1], row[first + 1:])  # next-token targets
        assert target[context - 1] == row[context - length]  # the last: the tiling goes on
        starts.add(start)
        lengths.add(length)
    if distinct:  # 2 … T/2, less the held-out periods
        assert lengths == set(circuit.training_periods(context))
    else:  # a segment with a chance repeat inside can look shorter than it was drawn
        assert lengths <= set(range(1, context // 2 + 1))
    assert len(starts) > 5  # not always from position 0
    again, _ = training.induction_batch(config, step=5)
    other, _ = training.induction_batch(config, step=6)
    assert torch.equal(ids, again) and not torch.equal(ids, other)


def test_the_periods_span_the_context_and_hold_some_out():
    assert circuit.training_periods(32) == [2, 4, 5, 6, 8, 9, 10, 12, 13, 14, 16]
    assert circuit.held_out_periods(32) == [3, 7, 11, 15]
    assert circuit.probe_periods(32) == [2, 3, 4, 7, 8, 11, 15, 16]
    assert circuit.film_period(32) == 15
    for context in (8, 16, 17, 33, 64):
        held_out, trained = circuit.held_out_periods(context), circuit.training_periods(context)
        assert sorted(held_out + trained) == list(range(2, context // 2 + 1))
        probed = circuit.probe_periods(context)
        assert probed[0] == 2 and probed[-1] == context // 2 and set(held_out) <= set(probed)


def test_previous_batch_targets_the_token_before():
    config = training.TrainConfig(n_positions=16, batch_size=8, vocab_size=40)
    ids, targets = training.previous_batch(config, step=0)
    assert (targets[:, 0] == training.NO_TARGET).all()
    assert torch.equal(targets[:, 1:], ids[:, :-1])


def test_text_batch_is_windows_of_the_text_and_refuses_a_short_one():
    config = training.TrainConfig(n_positions=8, batch_size=5)
    tokens = np.arange(100, 150)
    ids, targets = training.text_batch(config, 3, tokens)
    assert ids.shape == targets.shape == (5, 8)
    assert torch.equal(targets[:, :-1], ids[:, 1:]) and ((ids[:, 1:] - ids[:, :-1]) == 1).all()
    assert torch.equal(targets[:, -1], ids[:, -1] + 1)
    with pytest.raises(training.InputError, match="at least 9"):
        training.text_batch(config, 0, tokens[:8])


def test_text_tokenizer_equals_autotokenizer(tmp_path):
    from attnviz.text import tokenization

    text = ("Every effort moves you forward. " * 20
            + "I had always thought Jack Gisburn rather a cheap genius.")
    training.save_text_tokenizer(text, 300, tmp_path)
    sample = "Every genius moves, thought Jack — naïve café!"
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path)(sample)["input_ids"]
    ours = tokenization.load_tokenizer(tmp_path / "tokenizer.json").encode(sample)
    assert ours == theirs and len(ours) < len(sample.encode())  # merges learnt, bytes covered
    with pytest.raises(training.InputError, match="at least 256"):
        training.save_text_tokenizer(text, 100, tmp_path)


def test_training_is_deterministic_and_learns():
    config = training.TrainConfig(n_positions=16, batch_size=16, vocab_size=64, seed=1)

    def run(steps: int):
        model = training.TinyGPT2(config)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        losses = []
        for step in range(steps):
            loss = model.loss(*training.induction_batch(config, step))
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return model, losses

    first, losses = run(60)
    second, again = run(60)
    assert losses == again
    assert all(torch.equal(a, b) for a, b in zip(first.parameters(), second.parameters()))
    assert np.mean(losses[-10:]) < losses[0] - 0.3  # copying the seen tokens already helps


def test_a_rewritten_snapshot_replaces_the_old_whole(tmp_path, vocabulary):
    from safetensors.torch import load_file

    config = training.TrainConfig(vocab_size=len(vocabulary), n_positions=16)
    first = training.TinyGPT2(config)
    second = training.TinyGPT2(training.TrainConfig(vocab_size=len(vocabulary), n_positions=16, seed=9))
    training.save_snapshot(first, tmp_path / "s", vocabulary=vocabulary)
    folder = training.save_snapshot(second, tmp_path / "s", vocabulary=vocabulary)
    saved = load_file(folder / "model.safetensors")["transformer.wte.weight"]
    assert torch.equal(saved, second.wte.weight.detach())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # no .tmp or .old left
    assert (folder.stat().st_mode & 0o777) != 0o700  # the umask's mode, not mkdtemp's
