"""`attnviz report` of an encoder (BERT …, random --bidirectional): the encoder–decoders'
page with its one kind, encoder, its weights equal to transformers' eager attentions, and a
sentence pair's boundary in the payload and drawn in the page (Debian's chromium, headless,
through Playwright)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import make_encoder_checkpoint, make_hf_checkpoint
from test_encoders import PAIR, TEXT, one_error, transformers_attentions

from attnviz.display.report import read_payload
from attnviz.display.seq2seq_report import decode_kind

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return make_encoder_checkpoint(tmp_path_factory.mktemp("bert") / "bert", "bert")


@pytest.fixture(scope="module")
def page(bert, tmp_path_factory):
    """The report of BERT on a sentence pair: (path, the command's JSON)."""
    from typer.testing import CliRunner

    from attnviz.cli import app

    path = tmp_path_factory.mktemp("page") / "pair.html"
    done = CliRunner().invoke(app, ["report", TEXT, "--weights", str(bert), "--pair", PAIR,
                                    "-o", str(path), "--format", "json"])
    assert done.exit_code == 0, done.stderr
    return path, json.loads(done.stdout)


def test_the_page_of_a_pair_holds_the_eager_weights_and_the_boundary(bert, page, cli, tmp_path):
    path, document = page
    encoded, expected = transformers_attentions(bert, TEXT, PAIR)
    second = encoded.sequence_ids(0).index(1)
    assert document["attention"] == "encoder" and document["pair_start"] == second
    assert document["layers"] == [0, 1, 2] and document["n_tokens"] == expected.shape[-1]
    payload = read_payload(path)
    assert payload["format"] == "attnviz-seq2seq-report" and list(payload["kinds"]) == ["encoder"]
    np.testing.assert_allclose(decode_kind(payload, "encoder"), expected, atol=1 / 65535 + 1e-5)
    assert payload["pair_start"] == second and payload["decoder_tokens"] == []
    tokens = payload["tokens"]
    assert [t["id"] for t in tokens] == encoded["input_ids"][0].tolist()
    assert [t["sentence"] for t in tokens] == [int(p >= second) for p in range(len(tokens))]
    assert tokens[second - 1]["text"] == "[SEP]" and tokens[second - 1]["special"]
    html = path.read_text(encoding="ascii")
    assert "<title>attnviz report: encoder</title>" in html and "pair-rule" in html
    assert "//" not in html  # offline: no URL of any kind
    again = tmp_path / "again.html"
    cli("report", TEXT, "--weights", bert, "--pair", PAIR, "-o", again, "--quiet")
    assert again.read_bytes() == path.read_bytes()  # the same input, the same bytes


def test_random_bidirectional_and_one_text_have_no_boundary(bert, cli, tmp_path):
    out = tmp_path / "random.html"
    done = cli("report", TEXT, "--bidirectional", "--heads", "4", "--d-model", "32", "-o", out,
               "--format", "json")
    assert done.exit_code == 0, done.stderr
    assert json.loads(done.stdout)["attention"] == "encoder"
    payload = read_payload(out)
    weights = decode_kind(payload, "encoder")
    assert list(payload["kinds"]) == ["encoder"] and "pair_start" not in payload
    assert np.triu(weights[0, 0], 1).max() > 0.01  # nothing masked
    one = tmp_path / "one.html"
    assert cli("report", TEXT, "--weights", bert, "--layer", "1", "-o", one).exit_code == 0
    payload = read_payload(one)
    assert payload["kinds"]["encoder"]["layers"] == [1] and "pair_start" not in payload
    assert "sentence" not in payload["tokens"][0]


def test_what_an_encoders_report_cannot_show_is_refused_by_name(bert, cli, tmp_path):
    out = tmp_path / "r.html"
    one_error(cli("report", TEXT, "--weights", bert, "--rollout", "-o", out),
              "--rollout is not supported for encoder models")
    one_error(cli("report", TEXT, "--weights", bert, "--tokens", "1:3", "-o", out),
              "--tokens is not supported for encoder models")
    one_error(cli("report", TEXT, "--weights", bert, "--bidirectional", "-o", out),
              "--bidirectional is random mode's")
    gpt2 = make_hf_checkpoint(tmp_path / "gpt2", n_layer=1, n_head=2, n_embd=16)
    one_error(cli("report", TEXT, "--weights", gpt2, "--pair", PAIR, "-o", out), "--pair",
              "decoder")
    assert not out.exists()


@pytest.mark.browser
def test_the_page_draws_the_pair_boundary_in_a_browser(page):
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    path, document = page
    boundary, n = document["pair_start"], document["n_tokens"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM),
                                    args=["--no-sandbox", "--disable-gpu"])
        view = browser.new_page(viewport={"width": 1280, "height": 800})
        errors = []
        view.on("pageerror", lambda e: errors.append(str(e)))
        view.on("console", lambda m: m.type in ("error", "warning") and errors.append(m.text))
        view.goto(path.resolve().as_uri())
        view.wait_for_selector("body[data-ready=true]", timeout=30_000)
        assert view.eval_on_selector_all("#kind-switch button", "bs => bs.map(b => b.dataset.kind)") == [
            "encoder"]
        assert view.locator(".kind-group").count() == 1 and view.locator(".thumb").count() == 3 * 4
        view.click('.thumb[data-layer="2"][data-head="1"]')
        canvas = view.locator("#heatmap-canvas").bounding_box()
        margin, cell = view.eval_on_selector(
            "#heatmap-canvas", "c => [Number(c.dataset.margin), Number(c.dataset.cell)]")
        assert margin > 0  # a short text: labelled
        rows = view.locator("#heatmap-wrap .pair-rule.rows").bounding_box()
        columns = view.locator("#heatmap-wrap .pair-rule.columns").bounding_box()
        at = margin + boundary * cell  # the line between the two sentences' rows and columns
        assert abs(rows["y"] - canvas["y"] - at) <= 1.5 and abs(rows["width"] - n * cell) < 1
        assert abs(columns["x"] - canvas["x"] - at) <= 1.5 and abs(columns["height"] - n * cell) < 1
        for side in ("left", "right"):
            marked = view.eval_on_selector_all(f"#lines-{side} .tok",
                                               "ts => ts.map(t => t.classList.contains('second'))")
            assert marked == [pos >= boundary for pos in range(n)]
        rule = view.locator("#lines-view .pair-rule").bounding_box()
        first = view.locator(f"#lines-left .tok >> nth={boundary}").bounding_box()
        assert abs(rule["y"] - first["y"]) <= 1.5 and rule["width"] > 100
        assert view.eval_on_selector("#decoder-table", "t => t.offsetParent") is None  # hidden
        assert "second sentence from position" in view.text_content("#summary")
        browser.close()
    assert errors == []
