"""Encoder–decoders on the command line: heatmap, export, compare-heads and generate with
--decoder-text and --attention, equal to transformers; every bad input one Error line;
a T5 served by the local test Hub under the name t5-small."""

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
from seq2seq_checkpoints import SOURCE, TARGET, make_bart, make_t5

ATTNVIZ = [sys.executable, "-m", "attnviz"]
PROMPT = "translate English to German: The cat sat on the mat."


@pytest.fixture(scope="module")
def t5(tmp_path_factory):
    return make_t5(tmp_path_factory.mktemp("t5"), seed=2)


@pytest.fixture(scope="module")
def bart(tmp_path_factory):
    return make_bart(tmp_path_factory.mktemp("bart"), positions=40)


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    return make_hf_checkpoint(tmp_path_factory.mktemp("gpt2"), n_layer=1, n_head=2, n_embd=16)


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return make_encoder_checkpoint(tmp_path_factory.mktemp("bert"), "bert", n_layers=1)


def reference(folder, source: list[int], target: list[int]):
    model = transformers.AutoModelForSeq2SeqLM.from_pretrained(
        folder, attn_implementation="eager").eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor([source]), decoder_input_ids=torch.tensor([target]),
                     output_attentions=True, use_cache=False)


def stacked(attentions) -> np.ndarray:
    return np.stack([a[0].numpy() for a in attentions])


def run_json(cli, *args) -> dict:
    result = cli(*args, "--format", "json", "-q")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_export_writes_the_three_kinds_equal_to_transformers(cli, t5, tmp_path):
    out = tmp_path / "t5.npz"
    result = cli("export", SOURCE, "--weights", t5, "--decoder-text", TARGET, "--attention",
                 "all", "--layer", "all", "-o", out)
    assert result.exit_code == 0, result.stderr
    data = np.load(out)
    labels = transformers.AutoTokenizer.from_pretrained(t5)(TARGET)["input_ids"]
    assert data["decoder_token_ids"].tolist() == [0, *labels[:-1]]  # labels shifted right
    expected = reference(t5, data["token_ids"].tolist(), data["decoder_token_ids"].tolist())
    for name, theirs in (("weights", expected.encoder_attentions),
                         ("decoder_weights", expected.decoder_attentions),
                         ("cross_weights", expected.cross_attentions)):
        np.testing.assert_allclose(data[name], stacked(theirs), atol=1e-5, err_msg=name)
    n_dec, n_enc = len(data["decoder_token_ids"]), len(data["token_ids"])
    assert data["cross_weights"].shape == (2, 4, n_dec, n_enc)
    assert data["cross_layers"].tolist() == [0, 1] and data["tokens"][-1] == "</s>"
    only = tmp_path / "cross.npz"
    assert cli("export", SOURCE, "--weights", t5, "--attention", "cross", "-o", only,
               "-q").exit_code == 0
    assert sorted(np.load(only)) == sorted([
        "cross_weights", "cross_layers", "token_ids", "tokens", "positions",
        "decoder_token_ids", "decoder_tokens", "decoder_positions"])
    assert np.load(only)["decoder_token_ids"].tolist() == [0]  # the start token only


def test_heatmap_cross_rows_say_which_kind(cli, bart, tmp_path):
    out = tmp_path / "cross"
    document = run_json(cli, "heatmap", SOURCE, "--weights", bart, "--decoder-text", TARGET,
                        "--attention", "cross", "--out", out)
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "head_00.png", "head_01.png", "head_02.png", "head_03.png", "heads.png"]
    assert document["config"]["attention"] == ["cross"]
    assert document["tokens"][0]["text"] == "<s>" and document["tokens"][0]["special"]
    assert document["decoder_tokens"][0]["id"] == 2  # BART's decoder start: </s>
    every = tmp_path / "every"
    rows = run_json(cli, "heatmap", SOURCE, "--weights", bart, "--decoder-text", TARGET,
                    "--out", every)["files"]
    assert {p.split("/")[-2] for p in rows} == {"encoder", "decoder", "cross"}


def test_heatmap_csv_rows_carry_the_kind(cli, bart, tmp_path):
    result = cli("heatmap", SOURCE, "--weights", bart, "--out", tmp_path / "o", "--format", "csv")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "file,attention,layer,head"
    assert {line.split(",")[1] for line in lines[1:]} == {"encoder", "decoder", "cross"}


def test_compare_heads_of_one_kind(cli, t5):
    document = run_json(cli, "compare-heads", SOURCE, "--weights", t5, "--decoder-text", TARGET,
                        "--attention", "encoder", "--layer", "all")
    assert {row["attention"] for row in document["heads"]} == {"encoder"}
    assert len(document["heads"]) == 2 * 4
    cross = run_json(cli, "compare-heads", SOURCE, "--weights", t5, "--decoder-text", TARGET)
    assert {row["attention"] for row in cross["heads"]} == {"cross"}  # the default
    decoder = run_json(cli, "compare-heads", SOURCE, "--weights", t5, "--attention", "decoder",
                       "--decoder-text", TARGET)
    assert {row["attention"] for row in decoder["heads"]} == {"decoder"}
    assert decoder["decoder_tokens"][0]["id"] == 0


def test_generate_equals_transformers_with_its_alignment(cli, t5, tmp_path):
    npz, out, page = tmp_path / "gen.npz", tmp_path / "align", tmp_path / "gen.html"
    document = run_json(cli, "generate", PROMPT, "--weights", t5, "-n", "6", "--output", npz,
                        "--out", out, "--layer", "1", "--report", page)
    tokenizer = transformers.AutoTokenizer.from_pretrained(t5)
    source = tokenizer(PROMPT)["input_ids"]
    assert [t["id"] for t in document["source"]["tokens"]] == source
    model = transformers.AutoModelForSeq2SeqLM.from_pretrained(
        t5, attn_implementation="eager").eval()
    with torch.no_grad():
        theirs = model.generate(torch.tensor([source]), max_new_tokens=6, do_sample=False,
                                num_beams=1, output_attentions=True, return_dict_in_generate=True)
    written = [step["id"] for step in document["generated"]]
    assert [0, *written] == theirs.sequences[0].tolist()
    for g, step in enumerate(document["generated"]):  # layer 1's row over the source, per head
        np.testing.assert_allclose(step["cross_attention"][0],
                                   theirs.cross_attentions[g][1][0, :, 0].numpy(), atol=1e-5)
    data = np.load(npz)
    assert data["cross_rows"].shape == (1, 4, len(written), len(source))
    assert data["generated_token_ids"].tolist() == written
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "head_00.png", "head_01.png", "head_02.png", "head_03.png", "heads.png"]
    from attnviz.display.report import read_payload
    from attnviz.display.seq2seq_report import decode_kind

    payload = read_payload(page)  # the page's cross rows are the generation's
    assert [t["id"] for t in payload["decoder_tokens"]] == [0, *written[:-1]]
    np.testing.assert_allclose(decode_kind(payload, "cross")[1], data["cross_rows"][0],
                               atol=2e-5)


def test_generate_prints_the_output_text(cli, t5):
    result = cli("generate", PROMPT, "--weights", t5, "-n", "3")
    assert result.exit_code == 0, result.stderr
    assert PROMPT not in result.stdout  # an encoder–decoder's output is its own text
    assert "3 tokens written" in result.stderr or "tokens written" in result.stderr


BAD = [
    (["heatmap", SOURCE, "--weights", "{gpt2}", "--decoder-text", "x"],
     "--decoder-text needs an encoder–decoder model"),
    (["heatmap", SOURCE, "--weights", "{bert}", "--decoder-text", "x"],
     "--decoder-text needs an encoder–decoder model (t5, bart, marian): bert is an encoder"),
    (["export", SOURCE, "--weights", "{bert}", "-o", "{tmp}/x.npz", "--attention", "cross"],
     "--attention cross: bert is an encoder (bidirectional, no decoder); it has no cross"),
    (["heatmap", SOURCE, "--weights", "{gpt2}", "--attention", "cross"],
     "--attention cross: gpt2 is decoder-only; it has no cross attention"),
    (["export", SOURCE, "-o", "{tmp}/x.npz", "--attention", "encoder"],
     "--attention encoder: the random model is decoder-only"),
    (["heatmap", SOURCE, "--weights", "{t5}", "--attention", "both"],
     "--attention must be one of encoder, decoder, cross, all"),
    (["heatmap", " ".join([SOURCE] * 6), "--weights", "{bart}"],
     "the text is 91 tokens, past the model's 40 positions"),
    (["export", SOURCE, "--weights", "{bart}", "-o", "{tmp}/x.npz", "--decoder-text",
      " ".join([TARGET] * 6)], "--decoder-text is 133 tokens, past the model's 40 positions"),
    (["heatmap", SOURCE, "--weights", "{t5}", "--decoder-text", ""], "--decoder-text is empty"),
    (["export", SOURCE, "--weights", "{t5}", "-o", "{tmp}/x.npz", "--resolution", "8"],
     "the text is 13 tokens, more than --resolution 8: an encoder–decoder's attention is "
     "shown whole"),
    (["heatmap", SOURCE, "--weights", "{t5}", "--layer", "2"],
     "--layer 2 is out of range: the checkpoint has 2 layers (0-1) of the decoder"),
    (["heatmap", SOURCE, "--weights", "{t5}", "--view", "rollout"],
     "--view rollout is not supported for encoder–decoder models"),
    (["export", SOURCE, "--weights", "{t5}", "-o", "{tmp}/x.npz", "--include-params"],
     "--include-params is not supported for encoder–decoder models"),
    (["compare-heads", SOURCE, "--weights", "{t5}", "--attention", "all"],
     "--attention all: this command shows encoder or decoder or cross attention"),
    (["steps", SOURCE, "--weights", "{t5}", "--head", "0", "--attention", "all"],
     "--attention all: this command shows encoder or decoder or cross attention"),
    (["generate", SOURCE, "--weights", "{t5}", "--tokens", "0:2"],
     "--tokens is not supported when an encoder–decoder generates"),
    (["scan", SOURCE, "--weights", "{t5}", "--induction"],
     "--induction is not supported for encoder–decoder models"),
    (["scan", SOURCE, "--weights", "{t5}", "--weights", "{gpt2}"],
     "--weights: t5 is an encoder–decoder; this command reads decoder-only models"),
    (["attribute", SOURCE, "--weights", "{t5}"], "--weights: t5 is an encoder–decoder"),
    (["why", SOURCE, "--weights", "{t5}", "--pair", "x", "--layer", "0", "--head", "1"],
     "--pair is not supported for encoder–decoder models"),
]


@pytest.mark.parametrize("args, message", BAD, ids=[" ".join(a[:1] + a[3:5]) for a, _ in BAD])
def test_bad_input_is_one_error_line(cli, t5, bart, gpt2, bert, tmp_path, args, message):
    args = [a.format(t5=t5, bart=bart, gpt2=gpt2, bert=bert, tmp=tmp_path) for a in args]
    result = cli(*args)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert message in lines[0]
    assert not (tmp_path / "x.npz").exists()


def test_t5_small_from_the_local_hub(tmp_path, t5):
    """The issue's commands, against a T5 served under the name t5-small."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    with HubServer({"t5-small": Repo.from_folder(t5)}) as hub:
        env |= {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf")}
        heat = subprocess.run([*ATTNVIZ, "heatmap", SOURCE, "--weights", "t5-small",
                               "--decoder-text", TARGET, "--attention", "cross", "--out",
                               tmp_path / "out", "--format", "json"],
                              capture_output=True, text=True, env=env, timeout=300)
        assert heat.returncode == 0, heat.stderr
        gen = subprocess.run([*ATTNVIZ, "generate", PROMPT, "--weights", "t5-small", "-n", "5",
                              "--format", "json"], capture_output=True, text=True, env=env,
                             timeout=300)
        assert gen.returncode == 0, gen.stderr
    document = json.loads(heat.stdout)
    assert document["config"]["family"] == "t5" and len(document["files"]) == 5
    source = [t["id"] for t in document["tokens"]]
    target = [t["id"] for t in document["decoder_tokens"]]
    export = tmp_path / "cross.npz"
    assert subprocess.run([*ATTNVIZ, "export", SOURCE, "--weights", "t5-small", "--offline",
                           "--decoder-text", TARGET, "--attention", "cross", "-o", export, "-q"],
                          env=env, timeout=300).returncode == 0
    np.testing.assert_allclose(np.load(export)["cross_weights"][0],
                               reference(t5, source, target).cross_attentions[0][0].numpy(),
                               atol=1e-5)
    model = transformers.AutoModelForSeq2SeqLM.from_pretrained(t5).eval()
    prompt = transformers.AutoTokenizer.from_pretrained(t5)(PROMPT)["input_ids"]
    with torch.no_grad():
        expected = model.generate(torch.tensor([prompt]), max_new_tokens=5, do_sample=False,
                                  num_beams=1)[0].tolist()
    assert [0, *(step["id"] for step in json.loads(gen.stdout)["generated"])] == expected
