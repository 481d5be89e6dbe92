"""Encoders — BERT (with token types), RoBERTa, DistilBERT, ModernBERT (local and global
layers, two RoPE thetas): tiny peaked random checkpoints saved by transformers, their
tokenizer.json files made here; attentions equal transformers' eager float32, token ids equal
AutoTokenizer's (single texts, sentence pairs, special tokens); the commands on them, a Hub
repo named like bert-base-uncased, and every refusal as one Error line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers
from helpers import make_encoder_checkpoint, make_hf_checkpoint
from hub_server import HubServer, Repo

from attnviz.analyses.attention import analyze
from attnviz.core.config import ModelConfig
from attnviz.core.errors import InputError

FAMILIES = ("bert", "roberta", "distilbert", "modernbert")
TEXT, PAIR = "The cat sat on the mat", "It was tired"
LONGER = "When Mary and John went to the store, John gave a drink to Mary. naïve café 東京"


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    root = tmp_path_factory.mktemp("encoders")
    return {family: make_encoder_checkpoint(root / family, family,
                                            n_layers=4 if family == "modernbert" else 3)
            for family in FAMILIES}


def transformers_attentions(folder, text, pair=None):
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModel.from_pretrained(folder, attn_implementation="eager").eval()
    encoded = tokenizer(text, pair, return_tensors="pt")
    with torch.no_grad():
        out = model(**encoded, output_attentions=True)
    return encoded, np.stack([a[0].numpy() for a in out.attentions])  # (L, H, T, T)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("pair", [None, PAIR])
def test_attentions_equal_transformers_eager(encoders, family, pair):
    encoded, expected = transformers_attentions(encoders[family], LONGER, pair)
    result = analyze(LONGER, ModelConfig(), weights=str(encoders[family]), layer="all", pair=pair)
    assert result.token_ids == encoded["input_ids"][0].tolist()
    assert result.attention == "encoder" and not result.causal
    np.testing.assert_allclose(result.weights, expected, atol=1e-5)
    assert expected.max() > 0.9  # peaked: a wrong rotation, scale or mask would show
    np.testing.assert_allclose(result.weights.sum(-1), 1.0, atol=1e-5)
    if pair is not None:  # the second sentence starts after the first's separator(s)
        second = encoded.sequence_ids(0).index(1)
        assert result.pair_start == second
        assert [t["sentence"] for t in result.tokens()].count(1) == len(encoded["input_ids"][0]) - second


def test_bert_reads_the_token_types_of_a_pair(encoders):
    # BERT's second segment has its own embedding row: the same ids as one text differ
    folder = str(encoders["bert"])
    pair = analyze(TEXT, ModelConfig(), weights=folder, pair=PAIR, layer="all")
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    encoded = tokenizer(TEXT, PAIR)
    assert encoded["token_type_ids"].count(1) == len(pair.token_ids) - pair.pair_start
    model = transformers.AutoModel.from_pretrained(folder, attn_implementation="eager").eval()
    with torch.no_grad():
        zeros = model(torch.tensor([encoded["input_ids"]]), output_attentions=True).attentions
    assert np.abs(pair.weights[1] - zeros[1][0].numpy()).max() > 1e-3


def test_modernbert_local_layers_see_two_keys_each_side_and_global_ones_every_key(encoders):
    result = analyze(LONGER, ModelConfig(), weights=str(encoders["modernbert"]), layer="all")
    assert result.windows == [None, 3, None, 3]  # local_attention 4: |j - i| <= 2
    i, j = np.indices(result.weights.shape[-2:])
    assert (result.weights[1][:, np.abs(i - j) > 2] == 0).all()
    assert (result.weights[0] > 0).all()
    described = result.config
    assert described["attention"] == "encoder" and described["layer_types"][1] == "sliding_attention"
    assert described["rope"][0]["base"] == 160000.0 and described["rope"][1]["base"] == 10000.0


@pytest.mark.parametrize("family", FAMILIES)
def test_token_ids_equal_autotokenizer_on_pairs_and_special_tokens(encoders, family):
    from attnviz.text.tokenization import load_tokenizer

    folder = encoders[family]
    theirs = transformers.AutoTokenizer.from_pretrained(folder)
    ours = load_tokenizer(folder)
    special = theirs.cls_token + " and " + theirs.sep_token
    for text, pair in [(TEXT, PAIR), ("Naïve CAFÉ, 東京!", "  two  spaces "), (special, TEXT)]:
        assert ours.encode(text) == theirs(text, split_special_tokens=True)["input_ids"]
        assert ours.encode(text, allow_special=True) == theirs(text)["input_ids"]
        ids, types, start = ours.encode_pair(text, pair, allow_special=True)
        encoded = theirs(text, pair)
        assert ids == encoded["input_ids"]
        if "token_type_ids" in encoded:
            assert types == encoded["token_type_ids"]
        assert start == encoded.sequence_ids().index(1)
    assert ours.is_special(theirs.cls_token_id) and ours.is_special(theirs.sep_token_id)


def test_heatmap_of_a_pair_marks_special_tokens_and_the_boundary(cli, encoders, tmp_path):
    out = tmp_path / "pair"
    result = cli("heatmap", TEXT, "--weights", encoders["bert"], "--pair", PAIR, "--layer", "all",
                 "--out", out, "--format", "json")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    tokens = document["tokens"]
    assert [t["text"] for t in tokens if t.get("special")] == ["[CLS]", "[SEP]", "[SEP]"]
    assert document["attention"] == "encoder" and document["config"]["family"] == "bert"
    boundary = next(t["position"] for t in tokens if t.get("sentence") == 1)
    assert tokens[boundary]["text"] == "it" and tokens[boundary - 1]["text"] == "[SEP]"
    assert len(document["files"]) == 3 * 5 + 1 and (out / "model.png").exists()
    csv = cli("compare-heads", TEXT, "--weights", encoders["bert"], "--pair", PAIR, "--format", "csv")
    header, first = csv.stdout.splitlines()[:2]
    assert header.startswith("layer,head,attention,entropy") and first.startswith("0,0,encoder,")


def test_compare_heads_of_an_encoder_measures_signed_distances(cli, encoders):
    result = cli("compare-heads", LONGER, "--weights", encoders["roberta"], "--layer", "all",
                 "--format", "json")
    assert result.exit_code == 0, result.stderr
    rows = json.loads(result.stdout)["heads"]
    weights = analyze(LONGER, ModelConfig(), weights=str(encoders["roberta"]), layer="all").weights
    n = weights.shape[-1]
    distance = np.arange(n)[:, None] - np.arange(n)[None, :]
    expected = (weights.astype(np.float64) * distance).sum(-1).mean(-1).reshape(-1)
    np.testing.assert_allclose([r["mean_distance"] for r in rows], expected, atol=1e-9)
    assert min(r["mean_distance"] for r in rows) < 0  # some head looks ahead
    assert {r["attention"] for r in rows} == {"encoder"}


def test_steps_of_a_local_layer_masks_the_keys_outside_its_window(cli, encoders, tmp_path):
    result = cli("steps", TEXT, "--weights", encoders["modernbert"], "--layer", "1", "--head", "0",
                 "-o", tmp_path / "s.png", "--format", "json")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["formulas"]["masked"].startswith("mask_±2(")
    expected = analyze(TEXT, ModelConfig(), weights=str(encoders["modernbert"]), layer="1")
    np.testing.assert_allclose(np.array(document["matrices"]["weights"]), expected.weights[0, 0],
                               atol=1e-6)
    whole = cli("steps", TEXT, "--weights", encoders["modernbert"], "--layer", "0", "--head", "0",
                "-o", tmp_path / "g.png", "--format", "json")
    assert "masked" not in json.loads(whole.stdout)["matrices"]


def test_export_of_a_pair_names_the_kind_and_the_token_types(cli, encoders, tmp_path):
    path = tmp_path / "bert.npz"
    result = cli("export", TEXT, "--weights", encoders["bert"], "--pair", PAIR, "--layer", "all",
                 "-o", path)
    assert result.exit_code == 0, result.stderr
    arrays = np.load(path)
    encoded, expected = transformers_attentions(encoders["bert"], TEXT, PAIR)
    np.testing.assert_allclose(arrays["weights"], expected, atol=1e-5)
    assert list(arrays["token_types"]) == encoded["token_type_ids"][0].tolist()
    assert str(arrays["attention"]) == "encoder"


def one_error(result, *words):
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert len(lines) == 1 and lines[0].startswith("Error: "), lines
    for word in words:
        assert word in lines[0], lines[0]


def test_texts_past_the_models_positions_are_refused(cli, encoders, tmp_path):
    long = "the cat sat on the mat " * 20  # > 64 positions
    one_error(cli("heatmap", long, "--weights", encoders["bert"], "--out", tmp_path / "a"),
              "longer than the context length 64")
    one_error(cli("heatmap", "the cat " * 20, "--weights", encoders["bert"], "--pair",
                  "it was tired " * 8, "--out", tmp_path / "b"), "the text and --pair", "64 positions")
    one_error(cli("heatmap", long, "--weights", encoders["roberta"], "--out", tmp_path / "c"),
              "context length 64")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_long_encoder_text_is_pooled_with_its_bidirectional_statistics(cli, encoders,
                                                                          tmp_path):
    # (equal to transformers' weights: tests/test_longcontext_encoders.py)
    result = cli("heatmap", LONGER, "--weights", encoders["modernbert"], "--resolution", "8",
                 "--out", tmp_path / "x", "--format", "json")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    n = len(document["tokens"])
    assert document["pooled"]["block"] == -(-n // 8) and document["attention"] == "encoder"
    assert (tmp_path / "x" / "stats.png").exists()


def test_pair_with_a_decoder_and_unknown_encoders_are_refused(cli, encoders, tmp_path):
    gpt2 = make_hf_checkpoint(tmp_path / "gpt2", n_layer=1, n_head=2, n_embd=16)
    one_error(cli("heatmap", TEXT, "--weights", gpt2, "--pair", PAIR, "--out", tmp_path / "x"),
              "--pair", "decoder")
    electra = tmp_path / "electra"
    electra.mkdir()
    (electra / "config.json").write_text(json.dumps({"model_type": "electra"}))
    (electra / "model.safetensors").write_bytes(b"")
    one_error(cli("heatmap", TEXT, "--weights", electra, "--out", tmp_path / "y"),
              "model_type 'electra' is not supported", "bert", "modernbert")
    one_error(cli("heatmap", TEXT, "--weights", encoders["bert"], "--view", "lines",
                  "--out", tmp_path / "z"), "--view lines draws causal")
    one_error(cli("heatmap", TEXT, "--weights", encoders["bert"], "--view", "rollout",
                  "--out", tmp_path / "r"), "--view rollout is made for causal", "--view heatmap")


def test_a_hub_repo_named_bert_base_uncased_downloads_and_equals_transformers(encoders, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    with HubServer({"bert-base-uncased": Repo.from_folder(encoders["bert"])}) as hub:
        env |= {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf-home")}

        def attnviz(*args):
            return subprocess.run([sys.executable, "-m", "attnviz", *map(str, args)], env=env,
                                  capture_output=True, text=True, timeout=120)

        drawn = attnviz("heatmap", "The cat sat on the mat", "--weights", "bert-base-uncased",
                        "--pair", "It was tired", "--out", tmp_path / "maps", "--format", "json")
        assert drawn.returncode == 0, drawn.stderr
        assert "Downloaded bert-base-uncased" in drawn.stderr
        fetched = {path.rsplit("/", 1)[1] for _, path in hub.requests if "/resolve/" in path}
        assert {"config.json", "model.safetensors", "tokenizer.json"} <= fetched
        exported = attnviz("export", "The cat sat on the mat", "--weights", "bert-base-uncased",
                           "--pair", "It was tired", "--layer", "all", "-o", tmp_path / "w.npz")
        assert exported.returncode == 0, exported.stderr
    document = json.loads(drawn.stdout)
    assert document["tokens"][0]["text"] == "[CLS]" and document["tokens"][0]["special"]
    encoded, expected = transformers_attentions(encoders["bert"], TEXT, PAIR)
    arrays = np.load(tmp_path / "w.npz")
    assert arrays["token_ids"].tolist() == encoded["input_ids"][0].tolist()
    np.testing.assert_allclose(arrays["weights"], expected, atol=1e-5)


# scan, report and why take an encoder (tests/test_encoder_report.py, test_why_encoders.py)


def test_a_notebook_shows_an_encoder_as_the_picture_of_every_head(encoders):
    result = analyze(TEXT, ModelConfig(), weights=str(encoders["distilbert"]), layer="all")
    bundle = result._repr_mimebundle_()
    assert bundle["image/png"]  # the heads, drawn without a causal mask
    assert "<script" not in bundle["text/html"]


def test_the_python_api_takes_a_pair_and_random_modes_other_kinds(encoders):
    import attnviz

    result = attnviz.analyze(TEXT, str(encoders["bert"]), pair=PAIR, layer="all")
    assert result.attention == "encoder" and result.pair_start == result.token_ids.index(3) + 1
    cross = attnviz.analyze(TEXT, cross="Le chat dort", heads=4, d_model=32, cross_d_in=16)
    assert cross.attention == "cross" and cross.weights.shape[-1] == len(cross.key_token_ids)
    assert cross.key_inputs.shape[-1] == 16
    assert attnviz.analyze(TEXT, bidirectional=True, heads=4, d_model=32).attention == "encoder"
    with pytest.raises(InputError, match="random mode's"):
        attnviz.analyze(TEXT, str(encoders["bert"]), cross="x")
    with pytest.raises(InputError, match="bidirectional describe random mode's"):
        attnviz.load(str(encoders["bert"]), bidirectional=True)
