"""Encoder–decoders (T5 and flan-t5, BART, Marian): the three kinds of attention, token ids
and greedy generation equal transformers (eager, float32) on tiny peaked random
checkpoints saved by transformers itself."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers
from seq2seq_checkpoints import SOURCE, TARGET, make_bart, make_t5

from attnviz.analyses.attention import load_model
from attnviz.analyses.seq2seq import analyze_seq2seq, generate_seq2seq
from attnviz.core.config import ModelConfig

FAMILIES = ("t5", "flan", "mt5", "bart", "marian")
LONG_SOURCE = " ".join([SOURCE] * 3)  # past T5's max_distance: its logarithmic buckets


def _make(kind: str, folder):
    if kind in ("t5", "flan", "mt5"):
        return make_t5(folder, flan=kind == "flan", mt5=kind == "mt5")
    return make_bart(folder, marian=kind == "marian")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return {kind: _make(kind, tmp_path_factory.mktemp(kind)) for kind in FAMILIES}


def reference(folder, source: list[int], target: list[int]):
    model = transformers.AutoModelForSeq2SeqLM.from_pretrained(
        folder, attn_implementation="eager").eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor([source]), decoder_input_ids=torch.tensor([target]),
                     output_attentions=True, use_cache=False)


def stacked(attentions) -> np.ndarray:
    return np.stack([a[0].numpy() for a in attentions])  # (L, H, Tq, Tk)


@pytest.mark.parametrize("kind", FAMILIES)
def test_three_kinds_of_attention_equal_transformers(checkpoints, kind):
    model = load_model(ModelConfig(), str(checkpoints[kind]), seq2seq=True)
    result = analyze_seq2seq(model, LONG_SOURCE, TARGET, layer="all")
    out = reference(checkpoints[kind], result.source_ids, result.target_ids)
    for name, theirs in (("encoder", out.encoder_attentions), ("decoder", out.decoder_attentions),
                         ("cross", out.cross_attentions)):
        ours = result.of(name).weights
        expected = stacked(theirs)
        assert ours.shape == expected.shape
        np.testing.assert_allclose(ours, expected, atol=1e-5, err_msg=name)
        assert ours.max(-1).mean() > 0.3, f"{name} rows are not peaked: the test would be weak"
    assert result.cross.weights.shape[2:] == (len(result.target_ids), len(result.source_ids))


def test_decoder_without_a_target_reads_its_start_token(checkpoints):
    model = load_model(ModelConfig(), str(checkpoints["bart"]), seq2seq=True)
    result = analyze_seq2seq(model, SOURCE, layer="1")
    assert result.target_ids == [2]  # BART's decoder_start_token_id (</s>)
    out = reference(checkpoints["bart"], result.source_ids, [2])
    np.testing.assert_allclose(result.cross.weights[0], out.cross_attentions[1][0].numpy(),
                               atol=1e-5)
    assert result.decoder.weights.shape == (1, 4, 1, 1)


def test_t5_stacks_of_different_depths(tmp_path):
    folder = make_t5(tmp_path / "t5", layers=2, decoder_layers=3, seed=1)
    model = load_model(ModelConfig(), str(folder), seq2seq=True)
    result = analyze_seq2seq(model, LONG_SOURCE, TARGET, layer="all")
    out = reference(folder, result.source_ids, result.target_ids)
    assert result.encoder.layers == [0, 1] and result.cross.layers == [0, 1, 2]
    np.testing.assert_allclose(result.cross.weights, stacked(out.cross_attentions), atol=1e-5)
    np.testing.assert_allclose(result.decoder.weights, stacked(out.decoder_attentions), atol=1e-5)


def test_relative_buckets_equal_transformers():
    from attnviz.models.seq2seq_spec import relative_buckets

    relative = torch.arange(-300, 300)[None, :] - torch.arange(0, 5)[:, None]
    for bidirectional in (True, False):
        for buckets, distance in ((32, 128), (8, 20)):
            expected = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket(
                relative, bidirectional=bidirectional, num_buckets=buckets, max_distance=distance)
            ours = relative_buckets(relative, bidirectional, buckets, distance)
            assert torch.equal(ours, expected)
            assert ours.max() == buckets - 1  # the logarithmic buckets are reached


def test_marian_sinusoids_equal_transformers():
    from attnviz.models.seq2seq_spec import sinusoidal_table

    for dim in (32, 33):
        table = transformers.models.marian.modeling_marian.MarianSinusoidalPositionalEmbedding(
            70, dim).create_weight()
        assert torch.equal(sinusoidal_table(70, dim), table)


TEXTS = [SOURCE, "translate English to German: naïve café, 1234 </s> <pad>", "  two  spaces\n"]


@pytest.mark.parametrize("kind", ("t5", "bart"))
def test_token_ids_equal_autotokenizer(checkpoints, kind):
    folder = checkpoints[kind]
    model = load_model(ModelConfig(), str(folder), seq2seq=True)
    theirs = transformers.AutoTokenizer.from_pretrained(folder)
    for text in TEXTS:
        expected = theirs(text)["input_ids"]
        assert model.tokenizer.encode(text, allow_special=True) == expected, text
        assert model.tokenizer.encode(text, allow_special=True, add_bos=False) == theirs(
            text, add_special_tokens=False)["input_ids"]
    assert model.tokenizer.encode(SOURCE)[-1] == theirs.eos_token_id  # </s> ends each text
    if kind == "bart":
        assert model.tokenizer.encode(SOURCE)[0] == theirs.bos_token_id  # <s> starts it


def test_marian_token_ids_equal_its_tokenizer_json(checkpoints):
    """transformers reads Marian's tokenizer from SentencePiece files only: the same
    tokenizer.json through transformers' fast tokenizer."""
    folder = checkpoints["marian"]
    model = load_model(ModelConfig(), str(folder), seq2seq=True)
    theirs = transformers.PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
    for text in TEXTS:
        assert model.tokenizer.encode(text, allow_special=True) == theirs(text)["input_ids"]
    assert model.tokenizer.encode(SOURCE)[-1] == 0  # Marian's </s>


@pytest.mark.parametrize("kind", FAMILIES)
def test_greedy_generation_equals_transformers(checkpoints, kind):
    folder = checkpoints[kind]
    model = load_model(ModelConfig(), str(folder), seq2seq=True)
    source = model.tokenizer.encode(SOURCE)
    generated = generate_seq2seq(model, source, max_new_tokens=10)
    theirs = transformers.AutoModelForSeq2SeqLM.from_pretrained(
        folder, attn_implementation="eager").eval()
    with torch.no_grad():
        out = theirs.generate(torch.tensor([source]), max_new_tokens=10, do_sample=False,
                              num_beams=1, output_attentions=True, return_dict_in_generate=True)
    assert [generated.start_id, *generated.new_ids] == out.sequences[0].tolist()
    assert len(generated.new_ids) >= 4
    # each step's rows, as transformers computes them over its cache
    for g, (cross, own) in enumerate(zip(out.cross_attentions, out.decoder_attentions)):
        np.testing.assert_allclose(generated.cross[:, :, g], stacked(cross)[:, :, 0], atol=1e-5)
        np.testing.assert_allclose(generated.decoder[:, :, g, :g + 1], stacked(own)[:, :, 0],
                                   atol=1e-5)


@pytest.mark.parametrize("kind", ("t5", "bart"))
def test_python_api_analyze_reads_encoder_decoders(checkpoints, kind):
    import attnviz
    from attnviz.core.errors import InputError

    model = attnviz.load(checkpoints[kind])
    result = attnviz.analyze(SOURCE, model, decoder_text=TARGET, layer="all")
    out = reference(checkpoints[kind], result.source_ids, result.target_ids)
    assert result.kinds == ["encoder", "decoder", "cross"]
    np.testing.assert_allclose(result.cross.weights, stacked(out.cross_attentions), atol=1e-5)
    only = attnviz.analyze(SOURCE, model, decoder_text=TARGET, attention="decoder", layer="all")
    assert only.kinds == ["decoder"]
    np.testing.assert_array_equal(only.decoder.weights, result.decoder.weights)
    assert "<attnviz encoder–decoder attention" in repr(result)
    with pytest.raises(InputError, match="pair= is not for encoder–decoders"):
        attnviz.analyze(SOURCE, model, pair="x")
    with pytest.raises(InputError, match="is an encoder–decoder"):
        attnviz.scan(["a text"], model)
