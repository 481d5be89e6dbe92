"""`generate` of encoder–decoders (T5, BART, Marian) follows the checkpoint's generation
config and searches beams exactly as transformers' `generate(do_sample=False)`: the same
ids for every setting (written into generation_config.json here), the chosen sequence's
rows and score equal transformers' own, and the options override the file.

The tiny checkpoints' end-of-sequence token would never come, so each test's
generation_config.json names as `eos_token_id` a token the model writes a step or two in
(chosen from its own greedy output): stopping, min_length, length penalties and early
stopping then decide what is written. The tiny models tend to repeat one token, so the base
settings carry a repetition penalty (itself under test)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import transformers
from seq2seq_checkpoints import SOURCE, make_bart, make_t5

from attnviz.analyses.attention import load_model
from attnviz.analyses.seq2seq import generate_seq2seq
from attnviz.core.config import ModelConfig

KINDS = ("t5", "bart", "marian")
BASE = {kind: {"repetition_penalty": 1.6} for kind in KINDS}
PAD = {"t5": 0, "bart": 1, "marian": 199}  # Marian's pad is its decoder start: banned by its configs


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    made = {"t5": make_t5, "bart": make_bart,
            "marian": lambda folder: make_bart(folder, marian=True)}
    return {kind: made[kind](tmp_path_factory.mktemp(kind) / kind) for kind in KINDS}


def configured(folder, where, settings: dict):
    """A copy of the checkpoint ``folder`` whose generation_config.json has ``settings``."""
    copy = where / f"{folder.name}-{abs(hash(json.dumps(settings, sort_keys=True)))}"
    shutil.copytree(folder, copy)
    path = copy / "generation_config.json"
    raw = json.loads(path.read_text())
    raw.update(settings)
    path.write_text(json.dumps(raw))
    return copy


def theirs(folder, source: list[int], **kwargs):
    model = transformers.AutoModelForSeq2SeqLM.from_pretrained(
        folder, attn_implementation="eager").eval()
    with torch.no_grad():
        return model.generate(torch.tensor([source]), return_dict_in_generate=True,
                              output_scores=True, **kwargs)


@pytest.fixture(scope="module")
def setups(checkpoints, tmp_path_factory):
    """Per kind: the source ids, the base settings with an end-of-sequence token the model
    writes at step 2 or later, and the greedy output with them."""
    found = {}
    for kind in KINDS:
        folder = configured(checkpoints[kind], tmp_path_factory.mktemp("base"), BASE[kind])
        model = load_model(ModelConfig(), str(folder), seq2seq=True)
        source = model.tokenizer.encode(SOURCE)
        written = generate_seq2seq(model, source, 12, ignore_eos=True).new_ids
        assert len(set(written)) >= 4, f"{kind} writes {written}: too few tokens to test"
        eos = next(t for i, t in enumerate(written) if i >= 2 and t not in written[:i])
        found[kind] = (source, {**BASE[kind], "eos_token_id": eos, "max_new_tokens": 10},
                       written)
    return found


def greedy_ids(kind, setups):
    source, base, written = setups[kind]
    return written[:written.index(base["eos_token_id"]) + 1]


# (name, settings, does it change what greedy decoding writes on every model?)
CASES = [
    ("greedy", {}, False),
    ("max-length", {"max_new_tokens": None, "max_length": 3}, True),
    ("beams-2", {"num_beams": 2}, None),
    ("beams-4-length-penalty-2-early", {"num_beams": 4, "length_penalty": 2.0,
                                        "early_stopping": True}, None),
    ("beams-4-length-penalty-0.5", {"num_beams": 4, "length_penalty": 0.5,
                                    "early_stopping": False}, None),
    ("beams-4-never", {"num_beams": 4, "length_penalty": 1.5, "early_stopping": "never"}, None),
    ("beams-3-no-repeat-2", {"num_beams": 3, "no_repeat_ngram_size": 2}, None),
    ("no-repeat-1", {"no_repeat_ngram_size": 1}, None),
    ("forced-bos", {"forced_bos_token_id": 5}, True),
    ("forced-bos-beams", {"forced_bos_token_id": 5, "num_beams": 3}, None),
    ("bad-words", {"bad_words_ids": "first"}, True),
    ("bad-words-beams", {"bad_words_ids": "first", "num_beams": 2}, None),
    ("min-length", {"min_length": 9}, True),
    ("min-new-tokens-beams", {"min_new_tokens": 7, "num_beams": 2}, None),
    ("forced-eos", {"forced_eos_token_id": "other", "max_length": 4, "max_new_tokens": None},
     True),
    ("repetition-penalty-beams", {"repetition_penalty": 2.5, "num_beams": 3}, None),
]


def settings_of(kind, case: dict, setups) -> dict:
    source, base, written = setups[kind]
    settings = {**base, **case}
    if settings.get("bad_words_ids") == "first":  # the pad, the first token, a pair
        settings["bad_words_ids"] = [[PAD[kind]], [written[0]], [written[1], written[2]]]
    if settings.get("forced_eos_token_id") == "other":  # in place of the 3rd token, the eos
        settings["forced_eos_token_id"] = next(t for t in written if t not in written[:3])
    return {k: v for k, v in settings.items() if v is not None}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name, case, changes", CASES, ids=[c[0] for c in CASES])
def test_ids_equal_transformers_generate_with_the_same_generation_config(
        checkpoints, setups, tmp_path, kind, name, case, changes):
    settings = settings_of(kind, case, setups)
    folder = configured(checkpoints[kind], tmp_path, settings)
    source = setups[kind][0]
    model = load_model(ModelConfig(), str(folder), seq2seq=True)
    ours = generate_seq2seq(model, source)  # everything from the file
    out = theirs(folder, source)  # and transformers reads the same file
    assert [ours.start_id, *ours.new_ids] == out.sequences[0].tolist()
    assert ours.num_beams == settings.get("num_beams", 1)
    if changes:  # the setting did something, so the equality above could have failed
        assert ours.new_ids != greedy_ids(kind, setups)
    if ours.num_beams > 1:
        np.testing.assert_allclose(ours.score, float(out.sequences_scores[0]), rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_early_stopping_decides_and_equals_transformers(setups, checkpoints, tmp_path, kind):
    """Beam search is not greedy decoding in disguise, and early_stopping (true, false,
    "never") changes what is written on each model for some end-of-sequence token, beam
    count and length penalty: there, all three equal transformers'."""
    source, base, written = setups[kind]
    model = load_model(ModelConfig(), str(configured(checkpoints[kind], tmp_path, base)),
                       seq2seq=True)
    greedy = generate_seq2seq(model, source).new_ids
    beamed, found = [], None
    for eos in dict.fromkeys(written[1:4]):  # tokens the model writes early on
        for beams in (2, 4):
            for penalty in (1.0, 2.0):
                settings = {"eos_token_id": eos, "num_beams": beams, "length_penalty": penalty}
                outputs = {early: generate_seq2seq(model, source, early_stopping=early,
                                                   **settings).new_ids
                           for early in (True, False, "never")}
                beamed += outputs.values()
                if found is None and len({tuple(ids) for ids in outputs.values()}) > 1:
                    found = settings, outputs
    assert any(ids != greedy for ids in beamed)
    assert found is not None, "early_stopping never mattered: the test would be weak"
    settings, outputs = found
    for early, ids in outputs.items():
        expected = theirs(model.checkpoint.source.parent, source, early_stopping=early,
                          **settings).sequences[0].tolist()
        assert expected[1:] == ids, early


@pytest.mark.parametrize("kind", KINDS)
def test_the_chosen_beam_shows_its_own_attention(checkpoints, setups, tmp_path, kind):
    """After a beam search the rows are the chosen sequence's: transformers' attentions
    when its decoder reads that sequence (teacher forcing), and each probability the
    softmax of its logits there."""
    source, base, _ = setups[kind]
    folder = configured(checkpoints[kind], tmp_path, {**base, "num_beams": 4,
                                                      "length_penalty": 2.0})
    model = load_model(ModelConfig(), str(folder), seq2seq=True)
    ours = generate_seq2seq(model, source, layers=[1])
    assert len(ours.new_ids) >= 3
    reference = transformers.AutoModelForSeq2SeqLM.from_pretrained(
        folder, attn_implementation="eager").eval()
    with torch.no_grad():
        out = reference(input_ids=torch.tensor([source]),
                        decoder_input_ids=torch.tensor([ours.decoder_ids]),
                        output_attentions=True)
    n = len(ours.new_ids)
    assert ours.cross.shape == (1, model.n_heads, n, len(source))
    np.testing.assert_allclose(ours.cross[0], out.cross_attentions[1][0].numpy(), atol=1e-5)
    np.testing.assert_allclose(ours.decoder[0], out.decoder_attentions[1][0].numpy(), atol=1e-5)
    probs = out.logits[0].softmax(-1)
    expected = [float(probs[g, t]) for g, t in enumerate(ours.new_ids)]
    np.testing.assert_allclose(ours.probabilities, expected, rtol=1e-4)
    assert ours.cross[0].max(-1).mean() > 0.3  # peaked rows: the comparison is not of uniforms


def test_the_options_override_the_generation_config(cli, checkpoints, setups, tmp_path):
    """The file asks for 4 beams, length penalty 2, early stopping and no repeated
    bigrams; the options ask for 3 beams, penalty 0.5, no early stopping, bigrams
    allowed, 6 new tokens at least and at most 9: the ids are transformers' with the
    options as arguments (over the same file)."""
    source, base, _ = setups["t5"]
    folder = configured(checkpoints["t5"], tmp_path, {
        **base, "num_beams": 4, "length_penalty": 2.0, "early_stopping": True,
        "no_repeat_ngram_size": 2})
    result = cli("generate", SOURCE, "--weights", folder, "--num-beams", 3, "--length-penalty",
                 0.5, "--early-stopping", "false", "--no-repeat-ngram-size", 0,
                 "--min-new-tokens", 6, "--repetition-penalty", 1.2, "-n", 9,
                 "--format", "json")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    expected = theirs(folder, source, num_beams=3, length_penalty=0.5, early_stopping=False,
                      no_repeat_ngram_size=0, min_new_tokens=6, repetition_penalty=1.2,
                      max_new_tokens=9)
    written = [step["id"] for step in document["generated"]]
    assert [0, *written] == expected.sequences[0].tolist()
    assert len(written) >= 6
    assert document["num_beams"] == 3 and document["generation"]["length_penalty"] == 0.5
    np.testing.assert_allclose(document["score"], float(expected.sequences_scores[0]), rtol=1e-5)
    # without the options the file is followed (the tiny model's vocabulary is trained anew
    # each run, so whether the options change the ids is not known in advance)
    plain = cli("generate", SOURCE, "--weights", folder, "-n", 9, "--format", "json")
    assert plain.exit_code == 0, plain.stderr
    plain = json.loads(plain.stdout)
    assert plain["num_beams"] == 4 and plain["generation"]["length_penalty"] == 2.0
    assert [0, *(step["id"] for step in plain["generated"])] == theirs(
        folder, source, max_new_tokens=9).sequences[0].tolist()


def test_a_setting_attnviz_does_not_apply_is_named_in_a_warning(cli, checkpoints, tmp_path):
    folder = configured(checkpoints["marian"], tmp_path, {"suppress_tokens": [5],
                                                          "max_new_tokens": 3})
    result = cli("generate", SOURCE, "--weights", folder)
    assert result.exit_code == 0, result.stderr
    assert "Warning:" in result.stderr and "suppress_tokens not applied" in result.stderr


@pytest.mark.parametrize("args, config, words", [
    (["--num-beams", "0"], {}, "--num-beams"),
    (["--num-beams", "2", "--sample"], {}, "--num-beams cannot be combined with --sample"),
    (["--early-stopping", "soon"], {}, "--early-stopping must be true, false or never"),
    (["--repetition-penalty", "0"], {}, "--repetition-penalty must be above 0"),
    (["--no-repeat-ngram-size", "-1"], {}, "--no-repeat-ngram-size"),
    ([], {"num_beams": 0}, "generation_config.json: num_beams must be a whole number"),
    ([], {"bad_words_ids": [[100000]]}, "generation_config.json: bad_words_ids must be lists"),
])
def test_bad_generation_settings_are_one_error_naming_them(cli, checkpoints, tmp_path, args,
                                                           config, words):
    folder = configured(checkpoints["bart"], tmp_path, config)
    npz = tmp_path / "rows.npz"
    result = cli("generate", SOURCE, "--weights", folder, "-o", npz, *args)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and words in lines[0], lines
    assert not npz.exists()
