"""`attnviz scan` of encoders (BERT, ModernBERT) and encoder–decoders (T5, BART): every
prompt's numbers equal the statistics and detectors computed in float64 numpy from
transformers' eager float32 attentions (each prompt alone, and a padded batch with its
attention_mask), whatever the batch; shards merge to one run; bad options are one Error
line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import make_encoder_checkpoint
from seq2seq_checkpoints import make_bart, make_t5

from attnviz.analyses import scan_seq2seq as s2s
from attnviz.analyses import scanning as scan
from attnviz.analyses.attention import load_model
from attnviz.analyses.detectors import detector_scores
from attnviz.analyses.stats import head_stats

ENCODER_TEXTS = ["the cat sat on the mat", "a b a b a b c d", "hello world",
                 "one two three four five six seven eight nine ten one two three four",
                 "the the the"]
RECORDS = [(1, "The cat sat on the mat.", "Die Katze"),
           (2, "John gave a drink to Mary. The cat sat on the mat.", None),
           (3, "The mat", "Die Katze sass auf der Matte."),
           (5, "John gave", "Die")]


def reference(weights: np.ndarray, token_ids, kind: str, **options) -> dict[str, np.ndarray]:
    """name -> (L, H): the definitions of stats.head_stats and detectors, float64 numpy,
    on one prompt's attention (L, H, Tq, Tk) as transformers gave it."""
    stats = [head_stats(w, kind) for w in weights]
    out = {name: np.stack([s[name] for s in stats]) for name in stats[0]}
    if kind == "cross":  # the detectors compare positions of one text
        out.update({name: np.full(weights.shape[:2], np.nan) for name in scan.DETECTORS})
    else:
        out.update(detector_scores(weights, token_ids, **options))
    return out


def assert_values(ours: dict, expected: dict, n_tokens: int, what: str) -> None:
    for name in scan.COLUMNS:
        # a float32 weight is ~1e-6 off transformers'; a distance multiplies it by up to T,
        # an entropy by |ln p + 1| (up to ~1 + ln T for the weights that carry the mass)
        atol = (1e-5 * n_tokens if name == "mean_distance" else
                1e-5 * (1 + np.log(n_tokens)) if "entropy" in name else 1e-5)
        np.testing.assert_allclose(ours[name], expected[name], atol=atol, rtol=0,
                                   err_msg=f"{what}: {name}")


@pytest.fixture(scope="module", params=["bert", "modernbert"])
def encoder(request, tmp_path_factory):
    folder = make_encoder_checkpoint(tmp_path_factory.mktemp(request.param), request.param,
                                     std=0.6, positions=64)
    return request.param, folder


def per_prompt(model, prompts, layers, **options):
    found = {}
    result = scan.scan(model, prompts, layers,
                       on_prompt=lambda p, values: found.__setitem__(p.index, values), **options)
    return result, found


def test_encoder_scan_equals_transformers_alone_and_with_attention_mask(encoder):
    import torch
    import transformers

    family, folder = encoder
    model = load_model(None, str(folder))
    prompts = scan.model_corpus(model, list(enumerate(ENCODER_TEXTS, start=1))).prompts
    lengths = [len(p.token_ids) for p in prompts]
    assert len(set(lengths)) >= 4  # batches are padded
    layers = list(range(model.n_layers))
    options = {"exclude_first": family == "modernbert"}
    result, found = per_prompt(model, prompts, layers, batch_size=8, **options)
    assert result.attention == "encoder"
    hf = transformers.AutoModel.from_pretrained(folder, attn_implementation="eager").eval()
    pad = hf.config.pad_token_id
    width = max(lengths)
    ids = torch.tensor([p.token_ids + [pad] * (width - len(p.token_ids)) for p in prompts])
    mask = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()
    with torch.no_grad():
        batched = hf(input_ids=ids, attention_mask=mask, output_attentions=True).attentions
    expected, weights_alone = {name: [] for name in scan.COLUMNS}, []
    for b, prompt in enumerate(prompts):
        t = len(prompt.token_ids)
        with torch.no_grad():
            alone = hf(input_ids=torch.tensor([prompt.token_ids]), output_attentions=True).attentions
        alone = np.stack([a[0].numpy() for a in alone])  # (L, H, T, T)
        weights_alone.append(alone)
        masked = np.stack([a[b, :, :t, :t].numpy() for a in batched])
        for weights, how in ((alone, "alone"), (masked, "attention_mask")):
            want = reference(weights, prompt.token_ids, "encoder", **options)
            assert_values(found[prompt.index], want, t, f"{family} prompt {b} vs {how}")
        want = reference(alone, prompt.token_ids, "encoder", **options)
        for name in scan.COLUMNS:
            expected[name].append(want[name])
    for name in scan.COLUMNS:  # the aggregates: mean and sample std over the prompts
        values = np.stack(expected[name])
        atol = 1e-5 * width if name == "mean_distance" else 1e-5
        np.testing.assert_allclose(result.mean[name], values.mean(axis=0), atol=atol, rtol=0)
        np.testing.assert_allclose(result.std[name], values.std(axis=0, ddof=1), atol=2 * atol,
                                   rtol=0)
    # normalised by every key: a row's entropy over ln T, not ln(i + 1) as a causal row's
    causal = np.mean([reference(w, p.token_ids, "decoder")["normalized_entropy"]
                      for w, p in zip(weights_alone, prompts)], axis=0)
    assert np.abs(result.mean["normalized_entropy"] - causal).max() > 1e-2


def test_encoder_padding_never_leaks_into_a_prompt(encoder):
    """A prompt's numbers are the same alone (batch 1) and beside a much longer one (a
    padding key seen would move them by far more than the rounding allowed here)."""
    _, folder = encoder
    model = load_model(None, str(folder))
    prompts = scan.model_corpus(model, list(enumerate(ENCODER_TEXTS, start=1))).prompts
    layers = list(range(model.n_layers))
    _, alone = per_prompt(model, prompts, layers, batch_size=1)
    _, together = per_prompt(model, prompts, layers, batch_size=16)
    for prompt in prompts:  # the float32 rounding of another batch shape, no more
        assert_values(together[prompt.index], alone[prompt.index], len(prompt.token_ids),
                      f"prompt {prompt.index}")


@pytest.fixture(scope="module", params=["t5", "bart"])
def seq2seq(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    (make_t5 if request.param == "t5" else make_bart)(folder)
    return request.param, folder


def test_seq2seq_scan_equals_transformers_per_kind(seq2seq):
    import torch
    import transformers

    family, folder = seq2seq
    model = load_model(None, str(folder), seq2seq=True)
    corpus = s2s.seq2seq_corpus(model, RECORDS)
    prompts = corpus.prompts
    assert [len(p.target_ids) > 1 for p in prompts] == [True, False, True, True]
    assert len({len(p.token_ids) for p in prompts}) == 4
    layers = s2s.kind_layers(model, "all", ("encoder", "decoder", "cross"))
    found = {}
    results = s2s.scan_seq2seq(model, prompts, layers, batch_size=8, exclude_self=True,
                               on_prompt=lambda p, values: found.__setitem__(p.index, values))
    assert sorted(results) == ["cross", "decoder", "encoder"]
    hf = transformers.AutoModelForSeq2SeqLM.from_pretrained(folder, attn_implementation="eager").eval()
    expected = {kind: {name: [] for name in scan.COLUMNS} for kind in results}
    for prompt in prompts:
        with torch.no_grad():
            out = hf(input_ids=torch.tensor([prompt.token_ids]),
                     decoder_input_ids=torch.tensor([prompt.target_ids]), output_attentions=True)
        for kind, attentions, ids in (("encoder", out.encoder_attentions, prompt.token_ids),
                                      ("decoder", out.decoder_attentions, prompt.target_ids),
                                      ("cross", out.cross_attentions, None)):
            weights = np.stack([a[0].numpy() for a in attentions])
            want = reference(weights, ids, kind, exclude_self=True)
            ours = found[prompt.index][kind]
            for name in scan.COLUMNS:  # undefined (NaN) exactly where the definitions say
                assert np.array_equal(np.isnan(ours[name]), np.isnan(want[name])), (kind, name)
            assert_values(ours, want, weights.shape[-1], f"{family} {kind} line {prompt.line}")
            for name in scan.COLUMNS:
                expected[kind][name].append(want[name])
    for kind, result in results.items():
        assert result.attention == kind and result.layers == layers[kind]
        assert all(row["attention"] == kind for row in result.rows())
        for name in scan.COLUMNS:
            with np.errstate(invalid="ignore"), __import__("warnings").catch_warnings():
                __import__("warnings").simplefilter("ignore")
                mean = np.nanmean(np.stack(expected[kind][name]), axis=0)
            np.testing.assert_allclose(result.mean[name], mean, atol=1e-4, rtol=0)
    # cross-attention has no self, previous token, distance or detector; the decoder of a
    # prompt without a target reads its start token only: one row, its weight 1 on itself
    assert np.isnan(results["cross"].mean["self"]).all()
    assert np.isnan(results["cross"].mean["induction_head"]).all()
    no_target = found[prompts[1].index]["decoder"]
    assert np.array_equal(no_target["self"], np.ones_like(no_target["self"]))


@pytest.fixture
def words_file(tmp_path):
    rng = np.random.default_rng(3)
    words = "the cat sat on mat a dog ran to door".split()
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(" ".join(rng.choice(words, size=int(rng.integers(3, 12))))
                              for _ in range(300)) + "\n")
    return path


def test_encoder_shards_merged_equal_one_run(cli, tmp_path, words_file, tmp_path_factory):
    folder = make_encoder_checkpoint(tmp_path_factory.mktemp("bert-shards"), "bert", std=0.6)
    common = ["--file", words_file, "--weights", folder, "--layer", "all", "-q"]
    whole = cli("scan", *common, "--format", "json")
    assert whole.exit_code == 0, whole.stderr
    whole = json.loads(whole.stdout)
    assert {row["attention"] for row in whole["heads"]} == {"encoder"}
    parts = []
    for k in range(2):
        part = tmp_path / f"part-{k}.json"
        done = cli("scan", *common, "--shard", f"{k}/2", "--partial", part)
        assert done.exit_code == 0, done.stderr
        parts.append(part)
    assert [json.loads(p.read_text())["prompts"] for p in parts] == [256, 44]
    merged = cli("scan-merge", *parts, "--format", "json")
    assert merged.exit_code == 0, merged.stderr
    merged = json.loads(merged.stdout)
    assert merged["prompts"] == whole["prompts"] == 300
    for a, b in zip(whole["heads"], merged["heads"], strict=True):
        assert (a["layer"], a["head"], a["attention"], a["count"]) == (
            b["layer"], b["head"], b["attention"], b["count"])
        for key, value in a.items():
            if key.endswith(("_mean", "_std")):
                assert b[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


def test_encoder_scan_cli_per_prompt_resume_and_maps(cli, tmp_path, tmp_path_factory):
    folder = make_encoder_checkpoint(tmp_path_factory.mktemp("bert-cli"), "bert", std=0.6)
    log, maps = tmp_path / "each.jsonl", tmp_path / "maps"
    args = ["scan", *ENCODER_TEXTS, "--weights", folder, "--layer", "all", "--per-prompt", log]
    first = cli(*args, "--plot", maps, "--format", "json", "--induction", "-q")
    assert first.exit_code == 0, first.stderr
    document = json.loads(first.stdout)
    assert document["heads"][0]["attention"] == "encoder"
    assert all(entry["attention"] == "encoder" for entry in document["top"]["induction_head"])
    assert document["heads"][0]["induction_probe"] is not None
    assert sorted(p.name for p in maps.glob("*.png")) == sorted(
        f"{name}.png" for name in (*scan.TOP_COLUMNS, "induction_probe"))
    lines = log.read_text().splitlines()
    assert len(lines) == 1 + len(ENCODER_TEXTS)
    again = cli(*args, "--resume", "--format", "json", "-q")  # every prompt logged: none rerun
    assert again.exit_code == 0, again.stderr
    for a, b in zip(json.loads(again.stdout)["heads"], document["heads"], strict=True):
        assert a["attention"] == b["attention"] == "encoder" and a["count"] == b["count"]
        for key, value in a.items():
            if key.endswith(("_mean", "_std")):  # folded in another order: to rounding
                assert b[key] == pytest.approx(value, rel=1e-12, abs=1e-15), key
    table = cli("scan", *ENCODER_TEXTS[:2], "--weights", folder)
    assert table.exit_code == 0 and "Encoder attention: top heads" in table.stdout


def test_seq2seq_scan_cli_targets_json_csv_maps_and_log(cli, tmp_path, seq2seq):
    family, folder = seq2seq
    corpus = tmp_path / "pairs.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": t, **({"target": g} if g else {})})
                                for _, t, g in RECORDS) + "\n")
    log, maps = tmp_path / "each.jsonl", tmp_path / "maps"
    done = cli("scan", "--file", corpus, "--weights", folder, "--layer", "all", "--format", "json",
               "--per-prompt", log, "--plot", maps)
    assert done.exit_code == 0, done.stderr
    assert "1 of 4 prompts have no \"target\"" in done.stderr
    document = json.loads(done.stdout)
    assert document["attention"] == ["encoder", "decoder", "cross"]
    assert {row["attention"] for row in document["heads"]} == {"encoder", "decoder", "cross"}
    assert set(document["top"]["cross"]) == set(scan.CROSS_TOP)
    model = load_model(None, str(folder), seq2seq=True)
    results = s2s.scan_seq2seq(model, s2s.seq2seq_corpus(model, RECORDS).prompts,
                               s2s.kind_layers(model, "all", ("encoder", "decoder", "cross")))
    rows = [row for kind in ("encoder", "decoder", "cross") for row in results[kind].rows()]
    assert document["heads"] == rows  # the CLI is the Python function, row for row
    names = {p.name for p in maps.glob("*.png")}
    assert "encoder_induction_head.png" in names and "cross_first_token.png" in names
    assert "cross_induction_head.png" not in names
    header, *lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert header["format"] == "attnviz-scan-log" and len(lines) == 4
    assert set(lines[0]["attention"]) == {"encoder", "decoder", "cross"}
    csv = cli("scan", "--file", corpus, "--weights", folder, "--attention", "cross",
              "--format", "csv", "-q")
    assert csv.exit_code == 0, csv.stderr
    header_line, *csv_rows = csv.stdout.splitlines()
    assert header_line.startswith("layer,head,attention,count")
    assert {r.split(",")[2] for r in csv_rows} == {"cross"}


@pytest.mark.parametrize("args, message", [
    (["--attention", "cross"], "--attention cross: bert is an encoder"),
    (["--attention", "decoder"], "it has no decoder attention"),
    (["--attention", "sideways"], "--attention must be one of encoder, decoder, cross, all"),
])
def test_bad_attention_for_an_encoder(cli, tmp_path_factory, args, message):
    folder = make_encoder_checkpoint(tmp_path_factory.mktemp("bert-bad"), "bert")
    result = cli("scan", "the cat sat", "--weights", folder, *args)
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("Error: ")
    assert message in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--induction"], "--induction is not supported for encoder–decoder models"),
    (["--shard", "0/2", "--partial", "p.json"], "--shard is not supported"),
    (["--per-prompt", "log.jsonl", "--resume"], "--resume is not supported"),
    (["--layer", "7"], "--layer 7 is out of range"),
])
def test_bad_options_for_an_encoder_decoder(cli, tmp_path, args, message, monkeypatch):
    folder = make_t5(tmp_path / "t5")
    monkeypatch.chdir(tmp_path)
    result = cli("scan", "The cat sat on the mat.", "--weights", folder, *args)
    assert result.exit_code == 2, result.stdout
    assert result.stderr.count("\n") == 1 and message in result.stderr
    assert not (tmp_path / "p.json").exists()


def test_a_bad_target_is_refused_by_its_line(cli, tmp_path):
    corpus = tmp_path / "pairs.jsonl"
    corpus.write_text('{"text": "The cat"}\n{"text": "The mat", "target": 3}\n')
    result = cli("scan", "--file", corpus, "--weights", make_t5(tmp_path / "t5"))
    assert result.exit_code == 2
    assert f'--file {corpus} line 2: "target" must be a non-empty string' in result.stderr
