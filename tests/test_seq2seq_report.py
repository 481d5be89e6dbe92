"""The encoder–decoder report: one page with the switch between encoder, decoder and cross
attention, its data exact to the quantisation, and the page driven in a real browser
(Debian's chromium, headless, through Playwright)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from seq2seq_checkpoints import SOURCE, TARGET, make_t5

from attnviz.analyses.attention import load_model
from attnviz.analyses.seq2seq import analyze_seq2seq
from attnviz.core.config import ModelConfig
from attnviz.display.report import read_payload
from attnviz.display.seq2seq_report import decode_kind, write_seq2seq_report

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    folder = make_t5(tmp_path_factory.mktemp("t5"), seed=4)
    model = load_model(ModelConfig(), str(folder), seq2seq=True)
    return analyze_seq2seq(model, SOURCE, TARGET, layer="all"), folder


def test_the_page_holds_every_kind_exactly(result, tmp_path):
    found, _ = result
    path = tmp_path / "r.html"
    info = write_seq2seq_report(found, path)
    html = path.read_text(encoding="ascii")
    assert "//" not in html and "<script src" not in html  # offline: no URL of any kind
    payload = read_payload(path)
    assert payload["format"] == "attnviz-seq2seq-report" and list(payload["kinds"]) == [
        "encoder", "decoder", "cross"]
    for kind in ("encoder", "decoder", "cross"):
        weights = found.of(kind).weights
        assert payload["kinds"][kind]["shape"] == list(weights.shape)
        np.testing.assert_allclose(decode_kind(payload, kind), weights, atol=1 / 65535)
        rows = payload["kinds"][kind]["stats"]["heads"]
        assert len(rows) == weights.shape[0] * weights.shape[1]
    assert payload["kinds"]["cross"]["shape"][2:] == [len(found.target_ids), len(found.source_ids)]
    assert [t["id"] for t in payload["decoder_tokens"]] == found.target_ids
    assert info.encoding == "u16" and path.read_bytes() == _again(found, tmp_path)


def _again(found, tmp_path) -> bytes:
    write_seq2seq_report(found, tmp_path / "again.html")
    return (tmp_path / "again.html").read_bytes()  # the same input, the same bytes


def test_report_command_of_one_kind(cli, result, tmp_path):
    _, folder = result
    out = tmp_path / "cross.html"
    done = cli("report", SOURCE, "--weights", folder, "--decoder-text", TARGET, "--attention",
               "cross", "-o", out, "--format", "json")
    assert done.exit_code == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["attention"] == "cross" and document["layers"] == [0, 1]
    assert list(read_payload(out)["kinds"]) == ["cross"]
    bad = cli("report", SOURCE, "--weights", folder, "--rollout", "-o", out)
    assert bad.exit_code == 2 and bad.stderr.strip() == (
        "Error: --rollout is not supported for encoder–decoder models")


@pytest.mark.browser
def test_the_switch_in_a_browser(result, tmp_path):
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    found, _ = result
    path = tmp_path / "r.html"
    write_seq2seq_report(found, path)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM),
                                    args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        errors, requests = [], []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: m.type in ("error", "warning") and errors.append(m.text))
        page.on("request", lambda r: requests.append(r.url))
        page.goto(path.resolve().as_uri())
        page.wait_for_selector("body[data-ready=true]", timeout=30_000)
        kind = lambda: page.eval_on_selector("#heatmap-canvas", "c => c.dataset.kind")  # noqa: E731
        assert kind() == "cross"  # the alignment first
        assert page.locator(".kind-group").count() == 3  # the model view, grouped by kind
        assert page.locator(".thumb").count() == 3 * 2 * 4
        for name in ("encoder", "decoder", "cross"):
            page.click(f"#kind-switch button[data-kind={name}]")
            assert kind() == name
            assert page.eval_on_selector("#masked-legend", "e => e.hidden") == (name != "decoder")
            rows = page.locator("#lines-left .tok").count()
            columns = page.locator("#lines-right .tok").count()
            assert (rows, columns) == found.of(name).weights.shape[2:]
        # a thumbnail selects its kind, layer and head; the read-out is the weight stored
        page.click('.thumb[data-kind="cross"][data-layer="1"][data-head="2"]')
        margin, cell = page.eval_on_selector(
            "#heatmap-canvas", "c => [Number(c.dataset.margin), Number(c.dataset.cell)]")
        page.hover("#heatmap-canvas", position={"x": margin + 3.5 * cell, "y": margin + 1.5 * cell})
        shown = page.eval_on_selector("#hover-readout", "e => [e.dataset.query, e.dataset.key, "
                                                        "Number(e.dataset.weight)]")
        assert shown[:2] == ["1", "3"]
        assert abs(shown[2] - found.cross.weights[1, 2, 1, 3]) < 2e-5
        page.click("#kind-switch button[data-kind=decoder]")
        margin, cell = page.eval_on_selector(
            "#heatmap-canvas", "c => [Number(c.dataset.margin), Number(c.dataset.cell)]")
        page.hover("#heatmap-canvas", position={"x": margin + 3.5 * cell, "y": margin + 1.5 * cell})
        assert "masked" in page.eval_on_selector("#hover-readout", "e => e.textContent")
        browser.close()
    assert errors == [] and all(url.startswith("file:") for url in requests)


def test_a_notebook_shows_the_page_with_the_switch(result):
    import attnviz  # noqa: F401 - fills the display registry

    found, _ = result
    bundle = found._repr_mimebundle_()
    assert bundle["image/png"] and "kind-switch" in bundle["text/html"]  # an iframe's srcdoc
    assert "encoder, decoder, cross" in bundle["text/plain"]
