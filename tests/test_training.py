"""attnviz.training (the core of `attnviz train`): the tiny model, its tasks and its
snapshots, checked against transformers' GPT2LMHeadModel and AutoTokenizer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from attnviz import training
from attnviz.analysis import analyze

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


def test_attention_only_snapshot_has_a_zero_mlp(tmp_path, vocabulary):
    from safetensors.torch import load_file

    config = training.TrainConfig(vocab_size=len(vocabulary), n_positions=16)
    folder = training.save_snapshot(training.TinyGPT2(config), tmp_path / "s", vocabulary=vocabulary)
    tensors = load_file(folder / "model.safetensors")
    assert not any(key.startswith("lm_head") for key in tensors)  # tied to wte
    for i in range(config.n_layer):
        assert tensors[f"transformer.h.{i}.mlp.c_fc.weight"].abs().sum() == 0
        assert tensors[f"transformer.h.{i}.mlp.c_proj.bias"].abs().sum() == 0
    saved = json.loads((folder / "config.json").read_text())
    assert saved["vocab_size"] == 64 and saved["n_positions"] == 16
    assert not list(tmp_path.glob(".*.tmp"))  # nothing half-written left behind


def test_word_tokenizer_equals_autotokenizer(tmp_path, vocabulary):
    from attnviz import tokenization

    training.save_word_tokenizer(vocabulary, tmp_path)
    text = " ".join(vocabulary[1:40:3]) + "  zzqx " + vocabulary[5]
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path)(text)["input_ids"]
    ours = tokenization.load_tokenizer(tmp_path / "tokenizer.json").encode(text)
    assert ours == theirs
    assert theirs[-2] == 0  # an unknown word is [UNK]
    assert vocabulary[0] == training.UNK and len(set(vocabulary)) == len(vocabulary)


def test_induction_batch_repeats_and_masks_the_repeats():
    config = training.TrainConfig(n_positions=32, batch_size=16, seed=7)
    ids, mask = training.induction_batch(config, step=5)
    assert ids.shape == (16, 32) and mask.shape == (16, 31)
    assert ids.min() >= 1 and ids.max() < config.vocab_size
    for row, m in zip(ids, mask):
        period = int(m.float().argmax()) + 1  # the first masked prediction is of token `period`
        assert 4 <= period <= 16
        assert torch.equal(row[period:], row[:-period])  # a repeat of the segment
        assert not m[: period - 1].any() and m[period - 1:].all()
    again, _ = training.induction_batch(config, step=5)
    other, _ = training.induction_batch(config, step=6)
    assert torch.equal(ids, again) and not torch.equal(ids, other)


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
