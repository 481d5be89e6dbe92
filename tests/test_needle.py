"""`attnviz needle` (issue #39): the argmax key, the copy check and the scores equal a plain
re-implementation on transformers (Retrieval_Head's rule over eager attentions), also when
the prompt goes through the engine's long path; on the hand-built induction model the
heads `scan` calls induction heads are the ones `needle` calls retrieval heads; the real
SmolLM2 finds its passkey with its measured heads; shards merge into the whole grid; every
bad input is one `Error:` line."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_family_checkpoint
from test_generate import make_induction_model

from attnviz.analyses import needle as nd
from attnviz.analyses.attention import load_model
from attnviz.models import engine

transformers = pytest.importorskip("transformers")

NEEDLE = "bacage bafo basazi bazino be."  # words of the induction model's vocabulary
QUESTION, ANSWER = "bacage bafo", "basazi bazino be"


def word_tokenizer(folder: Path, words: list[str]) -> None:
    """A byte-level word tokenizer (one token a word, its space in front; [UNK] for the
    rest) for the induction model: random words are then random tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {"[UNK]": 0, "ĊĊ": 1, "Ċ": 2, ".": 3, "?": 4}
    vocab |= {"Ġ" + w: 5 + i for i, w in enumerate(words)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": None, "eos_token": None}))


@pytest.fixture(scope="module")
def induction(tmp_path_factory):
    """The hand-built induction model (test_generate) with 160 positions and a word
    tokenizer; a haystack of random words (none of the needle's) in sentences."""
    folder = make_induction_model(tmp_path_factory.mktemp("needle") / "induction", n_positions=160)
    rng = random.Random(0)
    words: set[str] = set()
    while len(words) < 280:
        words.add("".join(rng.choice("bcdfghklmnprstvz") + rng.choice("aeiou")
                          for _ in range(rng.randint(1, 3))))
    words = sorted(words)
    word_tokenizer(folder, words)
    others = [w for w in words if w not in NEEDLE.split()]
    haystack = " ".join(" ".join(rng.choice(others) for _ in range(7)) + "." for _ in range(40))
    (folder.parent / "haystack.txt").write_text(haystack)
    return folder, folder.parent / "haystack.txt", words


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return make_family_checkpoint(tmp_path_factory.mktemp("llama") / "llama", "llama",
                                  n_layers=2, hidden=64, heads=4, kv_heads=2, std=0.3)


@pytest.fixture(scope="module")
def mistral(tmp_path_factory):
    """Sliding window 5: its long prompts go through the engine's tiles."""
    return make_family_checkpoint(tmp_path_factory.mktemp("mistral") / "mistral", "mistral",
                                  n_layers=2, hidden=64, heads=4, kv_heads=2, std=0.3)


def transformers_needle(folder: Path, plan: nd.TestPlan, sink: int, recent: int) -> dict:
    """Retrieval_Head's procedure on transformers' eager float32 model: the prompt but its
    last token in one pass, then one token a step with ``output_attentions``; at each
    step, per head, ``topk(1)`` of the attention row; a copy adds 1/|answer span| when
    that key lies in the span and its prompt token is the token written."""
    model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, attn_implementation="eager", dtype=torch.float32).eval()
    prompt = torch.tensor([plan.prompt_ids])
    a, b = plan.answer_span
    config = model.config
    n_layers = config.num_hidden_layers if hasattr(config, "num_hidden_layers") else config.num_layers
    n_heads = config.num_attention_heads if hasattr(config, "num_attention_heads") else config.num_heads
    copies = np.zeros((n_layers, n_heads))
    mass = np.zeros((n_layers, n_heads))
    keys, generated = [], []
    with torch.no_grad():
        past = model(input_ids=prompt[:, :-1], use_cache=True).past_key_values
        step = prompt[:, -1:]
        for _ in range(plan.max_new_tokens):
            out = model(input_ids=step, past_key_values=past, use_cache=True,
                        output_attentions=True)
            past = out.past_key_values
            token = int(out.logits[0, -1].argmax())
            found = np.zeros((n_layers, n_heads), dtype=int)
            n_keys = len(plan.prompt_ids) + len(generated)
            for layer, attention in enumerate(out.attentions):  # (1, H, 1, T or the window)
                row = torch.zeros(n_heads, n_keys, dtype=torch.float64)
                row[:, n_keys - attention.shape[-1]:] = attention[0, :, -1]  # a sliding cache: the last keys
                recent_from = max(min(sink, n_keys), n_keys - recent)
                mass[layer] += (row[:, :sink].sum(-1) + row[:, recent_from:].sum(-1)).numpy()
                for head in range(n_heads):
                    _, index = row[head].topk(1)
                    i = int(index[0])
                    found[layer, head] = i
                    if a <= i < b and plan.prompt_ids[i] == token:
                        copies[layer, head] += 1 / (b - a)
            keys.append(found)
            generated.append(token)
            step = torch.tensor([[token]])
    return {"generated": generated, "keys": np.stack(keys), "copies": copies,
            "streaming": mass / len(generated)}


def one_plan(model, haystack: str, needle: nd.Needle, length: int, depth: float,
             max_new: int = 6) -> nd.TestPlan:
    return nd.prepare(model, haystack, [needle], [length], [depth], max_new_tokens=max_new)[0]


def check_against_transformers(folder: Path, plan: nd.TestPlan, answer: str) -> nd.TestResult:
    model = load_model(None, str(folder))
    ours = nd.run_test(model, plan, answer, list(range(model.n_layers)), sink=3, recent=5)
    theirs = transformers_needle(folder, plan, 3, 5)
    assert ours.generated_ids == theirs["generated"]
    np.testing.assert_array_equal(ours.top_keys, theirs["keys"])
    np.testing.assert_allclose(ours.copies, theirs["copies"], atol=1e-12)
    np.testing.assert_allclose(ours.streaming, theirs["streaming"], atol=2e-5)
    return ours


def test_copies_equal_retrieval_heads_rule_on_transformers_induction_model(induction):
    """On the induction model the needle is copied: the scores are not all 0, and equal."""
    folder, haystack, _ = induction
    model = load_model(None, str(folder))
    needle = nd.make_needle(NEEDLE, QUESTION, ANSWER)
    plan = one_plan(model, haystack.read_text(), needle, 120, 0.5)
    ours = check_against_transformers(folder, plan, ANSWER)
    assert ours.copies[1, 0] == pytest.approx(1.0) and ours.copies[0, 0] == 0.0
    assert ours.recall == 1.0


@pytest.mark.parametrize("family", ["llama", "mistral"])
def test_argmax_keys_and_scores_equal_transformers_through_the_engines_long_path(
        family, llama, mistral, monkeypatch):
    """Grouped keys (4 heads, 2 kv heads), peaked random weights; the whole-matrix
    threshold lowered so that the prompt takes the long path: torch's fused kernel for
    Llama, the engine's tiles for Mistral's sliding window (counted)."""
    folder = {"llama": llama, "mistral": mistral}[family]
    long_calls = []
    run, fused = engine._Plan.run, engine._fused
    monkeypatch.setattr(engine, "CHUNK_BYTES", 256)
    monkeypatch.setattr(engine._Plan, "run", lambda self, *a: (long_calls.append("tiles"),
                                                               run(self, *a))[1])
    monkeypatch.setattr(engine, "_fused", lambda *a: (long_calls.append("fused"), fused(*a))[1])
    model = load_model(None, str(folder))
    text = " ".join(["the cat sat on the mat."] * 40)
    needle = nd.make_needle("John met Mary at the market.", "Where did John meet Mary?",
                            "at the market")
    plan = one_plan(model, text, needle, 90, 0.4)
    check_against_transformers(folder, plan, "at the market")
    assert long_calls and set(long_calls) == {"fused" if family == "llama" else "tiles"}


def test_scans_induction_heads_are_needles_retrieval_heads(cli, induction, tmp_path):
    """The heads `scan` calls induction heads (score > 0.3) are the heads `needle` calls
    retrieval heads (score > 0.1), and the random-word needle is found at every depth."""
    folder, haystack, words = induction
    rng = random.Random(3)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(" ".join(s + s) for s in (rng.sample(words, 12) for _ in range(4))))
    scan = cli("scan", "--weights", folder, "--layer", "all", "--format", "json", "-f", prompts)
    assert scan.exit_code == 0, scan.stderr
    induction_heads = {(r["layer"], r["head"]) for r in json.loads(scan.stdout)["heads"]
                       if r["induction_head_mean"] > 0.3}
    run = cli("needle", "--weights", folder, "--haystack", haystack, "--needle", NEEDLE,
              "--question", QUESTION, "--answer", ANSWER, "--lengths", "80,140", "--depths",
              "0:1:0.25", "--format", "json")
    assert run.exit_code == 0, run.stderr
    document = json.loads(run.stdout)
    retrieval_heads = {(r["layer"], r["head"]) for r in document["heads"]
                       if r["retrieval_score"] > 0.1}
    assert induction_heads == retrieval_heads == {(1, 0)}
    assert document["counted"] == document["n_tests"] == 10
    assert all(t["recall"] == 1.0 for t in document["tests"])
    for test in document["tests"]:  # reproducible: the answer's tokens sit in the prompt
        start, end = test["answer_span"]
        assert test["generated_ids"][:end - start] == test["prompt_ids"][start:end]
        assert len(test["prompt_ids"]) == test["length"]
    previous_token = next(r for r in document["heads"] if r["layer"] == 0)
    assert previous_token["streaming_mass"] > 0.99  # it looks only at the recent token


def test_the_real_smollm2_finds_its_passkey_with_its_measured_heads(cli, smollm2_gguf, tmp_path):
    """Measured first (docs/long-context.md): with --chat SmolLM2-135M-Instruct answers
    the built-in passkey at 1k tokens at every depth, and its top retrieval heads are
    among L17 H3, L17 H4, L18 H6, L18 H7 and L23 H2. One short test here."""
    passkey = tmp_path / "passkey.jsonl"
    passkey.write_text(json.dumps(vars(nd.default_needles()[0])) + "\n")
    run = cli("needle", "--weights", smollm2_gguf, "--chat", "--needles", passkey,
              "--lengths", "600", "--depths", "0.5", "--format", "json", "--quiet")
    assert run.exit_code == 0, run.stderr
    document = json.loads(run.stdout)
    assert document["counted"] == 1
    assert "71432" in document["tests"][0]["generated_text"]
    top = {(r["layer"], r["head"]) for r in document["top"][:2]}
    assert top <= {(17, 3), (17, 4), (18, 6), (18, 7), (23, 2)}
    assert document["top"][0]["retrieval_score"] >= 0.6


def test_shards_merge_into_the_whole_grid_and_every_output_is_written(cli, induction, tmp_path):
    folder, haystack, _ = induction
    args = ["needle", "--weights", folder, "--haystack", haystack, "--needle", NEEDLE,
            "--question", QUESTION, "--answer", ANSWER, "--lengths", "80,120", "--depths",
            "0,0.5,1"]
    whole = cli(*args, "--format", "json", "--plot", tmp_path / "plots", "--report",
                tmp_path / "page.html", "-o", tmp_path / "whole.json")
    assert whole.exit_code == 0, whole.stderr
    for k in range(2):
        part = cli(*args, "--shard", f"{k}/2", "--partial", tmp_path / f"part{k}.json", "-q")
        assert part.exit_code == 0, part.stderr
    merged = cli("needle-merge", tmp_path / "part0.json", tmp_path / "part1.json",
                 "--format", "json")
    assert merged.exit_code == 0, merged.stderr
    a, b = json.loads(whole.stdout), json.loads(merged.stdout)
    assert a["heads"] == b["heads"] and a["accuracy"] == b["accuracy"]
    assert [t["prompt_ids"] for t in a["tests"]] == [t["prompt_ids"] for t in b["tests"]]
    assert json.loads((tmp_path / "whole.json").read_text())["heads"] == a["heads"]
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [
        "accuracy.png", "retrieval_score.png", "rows_L1_H0.png", "streaming_mass.png"]
    page = (tmp_path / "page.html").read_text()
    assert page.count("data:image/png;base64,") == 4 and "L1 H0" in page
    csv = cli(*args, "--format", "csv")
    lines = csv.stdout.strip().splitlines()
    assert lines[0].startswith("layer,head,kv_head,retrieval_score,streaming_mass")
    assert len(lines) == 1 + 2  # two layers x one head
    missing = cli("needle-merge", tmp_path / "part0.json")
    assert missing.exit_code == 2 and "shard(s) 1/2 missing" in missing.stderr


def test_compare_with_retrieval_head_and_duoattention_labels(cli, induction, tmp_path):
    folder, haystack, _ = induction
    (tmp_path / "head_score.json").write_text(json.dumps({"0-0": [0.0, 0.1], "1-0": [0.9, 1.0]}))
    (tmp_path / "duo.tsv").write_text("0.9\n0.1\n")  # the opposite order
    args = ["needle", "--weights", folder, "--haystack", haystack, "--needle", NEEDLE,
            "--question", QUESTION, "--answer", ANSWER, "--lengths", "80", "--depths", "0.5",
            "--format", "json", "--compare"]
    same = json.loads(cli(*args, tmp_path / "head_score.json").stdout)["compare"]
    assert same["kind"] == "retrieval_head" and same["spearman"] == pytest.approx(1.0)
    assert same["theirs"][0] == {"layer": 1, "head": 0} == same["ours"][0]
    opposite = json.loads(cli(*args, tmp_path / "duo.tsv").stdout)["compare"]
    assert opposite["kind"] == "duoattention" and opposite["spearman"] == pytest.approx(-1.0)


def test_ablating_the_retrieval_head_breaks_retrieval(cli, induction):
    folder, haystack, _ = induction
    args = ["needle", "--weights", folder, "--haystack", haystack, "--needle", NEEDLE,
            "--question", QUESTION, "--answer", ANSWER, "--lengths", "100", "--depths",
            "0,0.5", "--format", "json"]
    ablated = json.loads(cli(*args, "--ablate", "L1H0").stdout)
    assert ablated["counted"] == 0 and ablated["options"]["ablate"] == [[1, 0]]
    kept = json.loads(cli(*args, "--ablate", "L0H0").stdout)  # the previous-token head
    assert kept["counted"] == 0  # induction needs it too: K-composition


def test_a_short_haystack_is_repeated_with_a_warning(cli, induction, tmp_path):
    folder, _, _ = induction
    short = tmp_path / "short.txt"
    short.write_text("zo kege tasuta vo ko pe kivu.")
    run = cli("needle", "--weights", folder, "--haystack", short, "--needle", NEEDLE,
              "--question", QUESTION, "--answer", ANSWER, "--lengths", "60", "--depths", "0.5",
              "--format", "json")
    assert run.exit_code == 0, run.stderr
    assert "Warning: the haystack has 8 tokens, fewer than the" in run.stderr
    assert json.loads(run.stdout)["tests"][0]["recall"] == 1.0


def test_parsing_lengths_and_depths_and_rouge():
    assert nd.parse_lengths("1k,2k,4k") == [1000, 2000, 4000]
    assert nd.parse_lengths("1000:3000:1000") == [1000, 2000, 3000]
    assert nd.parse_depths("0:1:0.25") == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert len(nd.parse_depths("0:1:0.1")) == 11
    assert nd.rouge1_recall("eat a sandwich", "I eat a big sandwich!") == 1.0
    assert nd.rouge1_recall("a a b", "a b") == pytest.approx(2 / 3)
    assert nd.streaming_windows(1000, None, None) == (83, 166)  # a quarter of 1000, 1:2
    assert nd.streaming_windows(4000, None, None) == (128, 256)
    assert nd.streaming_windows(4000, 4, None) == (4, 256)


BAD = [
    (["--lengths", "1k:2k"], "--lengths must be a comma list or START:STOP:STEP"),
    (["--lengths", "abc"], "--lengths: 'abc' is not a number"),
    (["--lengths", "1.5"], "--lengths must be whole numbers of tokens"),
    (["--depths", "0,1.5"], "--depths must lie between 0 and 1"),
    (["--depths", "1:0:0.1"], "STOP >= START"),
    (["--lengths", "1k"], "go past the model's context of 160 tokens"),
    (["--lengths", "8"], "do not fit in a prompt of 8 tokens"),
    (["--answer", "zzz"], "is not in the needle"),
    (["--shard", "2/2"], "--shard 2/2 is out of range"),
    (["--ablate", "L5H0"], "--ablate L5H0: the model has 2 layers x 1 heads"),
    (["--ablate", "head3"], "--ablate takes heads as L<layer>H<head>"),
    (["--sink", "40", "--recent", "50"], "cover the whole prompt of 80 tokens"),
    (["--layer", "7"], "--layer 7 is out of range"),
]


@pytest.mark.parametrize("extra, message", BAD, ids=[m for _, m in BAD])
def test_bad_input_is_one_error_line_and_nothing_is_written(cli, induction, tmp_path, extra,
                                                            message):
    folder, haystack, _ = induction
    options = {"--needle": NEEDLE, "--question": QUESTION, "--answer": ANSWER,
               "--lengths": "80", "--depths": "0.5"}
    for i in range(0, len(extra), 2):
        options[extra[i]] = extra[i + 1]
    args = [a for pair in options.items() for a in pair]
    run = cli("needle", "--weights", folder, "--haystack", haystack, *args, "--partial",
              tmp_path / "p.json", "--plot", tmp_path / "plots")
    assert run.exit_code == 2, (run.stdout, run.stderr)
    assert run.stderr.startswith("Error: ") and run.stderr.count("\n") == 1
    assert message in run.stderr
    assert list(tmp_path.iterdir()) == []


def test_more_bad_input(cli, induction, tmp_path):
    folder, haystack, words = induction
    base = ["needle", "--weights", folder, "--haystack", haystack, "--lengths", "80"]
    cases = [
        (["needle", "--needle", NEEDLE], "--needle, --question and --answer go together"),
        (["needle"], "needle tests need trained weights"),
        ([*base, "--needle", "bacage bafo xyzzy.", "--question", QUESTION, "--answer", "xyzzy"],
         "cannot spell the answer 'xyzzy'"),  # a word the tokenizer maps to [UNK]
        ([*base, "--needles", tmp_path / "none.jsonl"], "cannot read it"),
        ([*base, "--compare", tmp_path / "none.json"], "--compare"),
        ([*base, "--partial", tmp_path / "no" / "p.json"], "does not exist"),
        ([*base, "--haystack", tmp_path / "none.txt"], "--haystack"),
    ]
    (tmp_path / "bad.jsonl").write_text('{"needle": "x"}\n')
    cases.append(([*base, "--needles", tmp_path / "bad.jsonl"], "line 1: expected a JSON object"))
    (tmp_path / "labels.tsv").write_text("1 2 3\n")
    cases.append(([*base, "--needle", NEEDLE, "--question", QUESTION, "--answer", ANSWER,
                   "--compare", tmp_path / "labels.tsv"], "is 1 x 3; the model has 2 layers"))
    for args, message in cases:
        run = cli(*args)
        assert run.exit_code == 2, (args, run.stdout, run.stderr)
        assert run.stderr.startswith("Error: ") and run.stderr.count("\n") == 1, run.stderr
        assert message in run.stderr, (message, run.stderr)
