"""`attnviz report` in a real browser: Debian's chromium, headless, driven by Playwright
(never a downloaded browser). Without /usr/bin/chromium these tests fail: CI installs it.

    python -m pytest -q -m browser tests/test_report_browser.py
    ATTNVIZ_UPDATE_DOCS_IMAGES=1 python -m pytest -q tests/test_report_browser.py  # docs picture
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from attnviz.analyses.attention import analyze
from attnviz.display import report

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
TEXT = "When Mary and John went to the store, John gave a drink to"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium); "
                    "the browser tests never download a browser")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def checkpoint_report(hf_checkpoint, tmp_path_factory):
    """A report of every layer of the test checkpoint (3 layers x 4 heads), and `export`'s
    weights of the same run."""
    from typer.testing import CliRunner

    from attnviz.cli import app

    folder = tmp_path_factory.mktemp("report")
    common = [TEXT, "--weights", str(hf_checkpoint), "--layer", "all"]
    runner = CliRunner()
    done = runner.invoke(app, ["report", *common, "-o", str(folder / "r.html"), "-q"])
    assert done.exit_code == 0, done.stderr
    done = runner.invoke(app, ["export", *common, "-o", str(folder / "w.npz")])
    assert done.exit_code == 0, done.stderr
    return folder / "r.html", np.load(folder / "w.npz")["weights"].astype(np.float64)


class Page:
    """A loaded report plus everything it logged and requested."""

    def __init__(self, browser, path: Path, **options):
        self.page = browser.new_page(**({"viewport": {"width": 1280, "height": 800}} | options))
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.dialogs: list[str] = []
        self.page.on("console", lambda m: m.type in ("error", "warning") and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        self.url = path.resolve().as_uri()
        self.page.goto(self.url)
        self.page.wait_for_selector("body[data-ready=true]", timeout=30_000)

    def heatmap_head(self) -> str:
        """The heatmap's head as "layer/head"."""
        return self.page.eval_on_selector("#heatmap-canvas", "c => c.dataset.layer + '/' + c.dataset.head")

    def canvas_png(self, selector: str) -> str:
        return self.page.eval_on_selector(selector, "c => c.toDataURL()")

    def hover_cell(self, query: int, key: int) -> dict:
        """Point at cell (query, key) of the heatmap; the read-out's data."""
        where = self.page.eval_on_selector("#heatmap-canvas", "c => ({...c.dataset})")
        margin, cell, start = float(where["margin"]), float(where["cell"]), int(where["start"])
        x, y = margin + (key - start + 0.5) * cell, margin + (query - start + 0.5) * cell
        box = self.page.locator("#heatmap-canvas").bounding_box()
        self.page.evaluate(f"window.scrollBy(0, {box['y'] + y} - innerHeight / 2)")  # into view
        box = self.page.locator("#heatmap-canvas").bounding_box()
        self.page.mouse.move(box["x"] + x, box["y"] + y)
        return self.page.eval_on_selector("#hover-readout", "e => ({...e.dataset, text: e.textContent})")


@pytest.fixture
def loaded(browser, checkpoint_report):
    page = Page(browser, checkpoint_report[0])
    yield page
    page.page.close()


def test_page_loads_offline_without_errors_or_requests(loaded):
    assert loaded.errors == []
    assert loaded.requests == [loaded.url]  # the file itself, nothing else
    assert loaded.page.title() == "attnviz report"
    assert "14 tokens" in loaded.page.text_content("#summary")


def test_model_view_has_a_thumbnail_per_head(loaded):
    thumbs = loaded.page.eval_on_selector_all(
        "#model-view .thumb", "bs => bs.map(b => [Number(b.dataset.layer), Number(b.dataset.head)])")
    assert sorted(map(tuple, thumbs)) == [(layer, head) for layer in range(3) for head in range(4)]
    drawn = loaded.page.eval_on_selector_all("#model-view .thumb canvas", "cs => cs.map(c => c.width)")
    assert drawn == [14] * 12  # one pixel per token: 14 tokens, no pooling


def test_clicking_a_thumbnail_selects_that_head_in_the_heatmap(loaded):
    before = loaded.canvas_png("#heatmap-canvas")
    assert loaded.heatmap_head() == "0/0"
    loaded.page.click('.thumb[data-layer="2"][data-head="3"]')
    assert loaded.heatmap_head() == "2/3"
    assert loaded.canvas_png("#heatmap-canvas") != before
    assert loaded.page.text_content("#selected-head") == "layer 2, head 3"
    assert loaded.page.get_attribute('.thumb[data-layer="2"][data-head="3"]', "aria-pressed") == "true"
    assert loaded.page.input_value("#layer-select") == "2"  # heads view follows
    assert loaded.page.get_attribute('.chip[data-head="3"]', "aria-pressed") == "true"


@pytest.mark.parametrize("encoding", report.ENCODINGS)
def test_hover_shows_exports_weight_within_the_step(browser, checkpoint_report, hf_checkpoint,
                                                    tmp_path, encoding):
    path, exported = checkpoint_report
    if encoding != report.read_payload(path)["weights"]["encoding"]:
        path = tmp_path / "r.html"  # the same run in the other encoding, through the library
        report.write_report(analyze(TEXT, weights=str(hf_checkpoint), layer="all"), path,
                            encoding=encoding)
    page = Page(browser, path)
    page.page.click('.thumb[data-layer="1"][data-head="2"]')
    n_tokens = exported.shape[-1]
    cells = [(i, j) for i in range(n_tokens) for j in range(i + 1)]
    largest = max(cells, key=lambda c: exported[1, 2, c[0], c[1]])
    for query, key in [largest, (13, 0), (13, 13), (7, 3), (1, 0), (10, 9), (0, 0)]:
        data = page.hover_cell(query, key)
        assert (data["layer"], data["head"], data["query"], data["key"]) == ("1", "2", str(query), str(key))
        exact = exported[1, 2, query, key]
        bound = float(report.max_error(exact, encoding)) + 1e-6  # + float32 in the page
        assert abs(float(data["weight"]) - exact) <= bound
        shown = float(data["text"].rsplit("weight ", 1)[1])  # three decimals
        assert abs(shown - exact) <= bound + 0.0005
        assert f"query {query} " in data["text"] and f"key {key} " in data["text"]
    assert exported[1, 2][largest] > 0.3  # a large weight was among those read
    masked = page.hover_cell(2, 9)
    assert masked["weight"] == "" and "masked" in masked["text"]
    assert page.errors == []
    page.page.close()


def test_clicking_a_statistics_header_sorts_the_table(loaded):
    def column(name):
        index = loaded.page.eval_on_selector_all(
            "#stats-table thead th", f"ths => ths.findIndex(th => th.dataset.column === '{name}')")
        return loaded.page.eval_on_selector_all(f"#stats-table tbody tr td:nth-child({index + 1})",
                                                "tds => tds.map(td => td.title || td.textContent)")

    entropy = [float(v) for v in column("entropy")]
    assert entropy != sorted(entropy)  # not sorted to begin with, so sorting is visible
    loaded.page.click('#stats-table th[data-column="entropy"] button')
    assert [float(v) for v in column("entropy")] == sorted(entropy)
    assert loaded.page.get_attribute('#stats-table th[data-column="entropy"]', "aria-sort") == "ascending"
    loaded.page.click('#stats-table th[data-column="entropy"] button')
    assert [float(v) for v in column("entropy")] == sorted(entropy, reverse=True)
    loaded.page.click("#stats-table tbody tr:first-child")  # a row selects its head
    first = loaded.page.eval_on_selector("#stats-table tbody tr:first-child",
                                         "tr => tr.dataset.layer + '/' + tr.dataset.head")
    assert loaded.heatmap_head() == first


def test_keyboard_selects_heads_and_toggles_chips(loaded):
    loaded.page.focus('.thumb[data-layer="0"][data-head="0"]')
    loaded.page.keyboard.press("ArrowDown")
    loaded.page.keyboard.press("ArrowRight")
    loaded.page.keyboard.press("Enter")
    assert loaded.page.text_content("#selected-head") == "layer 1, head 1"
    chip = '.chip[data-head="2"]'
    assert loaded.page.get_attribute(chip, "aria-pressed") == "false"
    before = loaded.canvas_png("#heads-canvas")
    loaded.page.focus(chip)
    loaded.page.keyboard.press("Space")
    assert loaded.page.get_attribute(chip, "aria-pressed") == "true"
    assert loaded.canvas_png("#heads-canvas") != before


def test_hovering_a_token_isolates_its_lines(loaded):
    loaded.page.click("#heads-all")
    everything = loaded.canvas_png("#heads-canvas")
    loaded.page.hover('#heads-left .tok[data-pos="5"]')
    isolated = loaded.canvas_png("#heads-canvas")
    assert isolated != everything
    loaded.page.mouse.move(1, 1)
    assert loaded.canvas_png("#heads-canvas") == everything


def test_window_zooms_the_heatmap(loaded):
    full_cell = float(loaded.page.get_attribute("#heatmap-canvas", "data-cell"))
    loaded.page.select_option("#window-size", "8")
    loaded.page.fill("#window-start", "4")
    loaded.page.dispatch_event("#window-start", "input")
    assert loaded.page.text_content("#window-range") == "tokens 4–11"
    assert float(loaded.page.get_attribute("#heatmap-canvas", "data-cell")) > full_cell
    assert loaded.hover_cell(4, 4)["query"] == "4"
    corner = loaded.hover_cell(11, 5)
    assert (corner["query"], corner["key"]) == ("11", "5")
    assert loaded.page.eval_on_selector_all("#heads-left .tok", "ts => ts.length") == 8
    assert loaded.page.text_content("#heads-left .tok") == "\u2423went"  # token 4 heads the window


def test_screenshot_is_not_blank(loaded, tmp_path):
    from PIL import Image

    loaded.page.click('.thumb[data-layer="1"][data-head="2"]')
    loaded.hover_cell(10, 3)
    shot = tmp_path / "report.png"
    loaded.page.screenshot(path=str(shot))
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.shape == (800, 1280)
    assert pixels.std() > 20  # text, thumbnails and the heatmap, not an empty page
    heatmap = loaded.page.locator("#heatmap-canvas").screenshot()
    import io

    assert np.asarray(Image.open(io.BytesIO(heatmap)).convert("L"), dtype=np.float64).std() > 20
    if os.environ.get("ATTNVIZ_UPDATE_DOCS_IMAGES"):  # the picture in docs/report.md
        loaded.page.set_viewport_size({"width": 1280, "height": 1020})  # down to the read-out
        loaded.page.mouse.move(5, 5)
        loaded.page.focus("#heatmap-canvas")
        for key in ["ArrowUp"] * 13 + ["ArrowLeft"] * 13 + ["ArrowDown"] * 5 + ["ArrowRight"] * 3:
            loaded.page.keyboard.press(key)
        loaded.page.evaluate("window.scrollTo(0, 0)")
        loaded.page.screenshot(path=str(ROOT / "docs" / "images" / "report.png"))


def test_phone_width_and_dark_mode(browser, checkpoint_report):
    page = Page(browser, checkpoint_report[0], viewport={"width": 375, "height": 740},
                color_scheme="dark")
    overflow = page.page.evaluate("document.documentElement.scrollWidth")
    assert overflow <= 375  # nothing wider than the phone: wide tables scroll inside their box
    assert page.page.locator("#heatmap-canvas").bounding_box()["width"] <= 375
    background = page.page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert sum(int(c) for c in background[4:-1].split(",")[:3]) < 150  # a dark theme
    assert page.errors == []
    page.page.close()


def test_hostile_text_is_shown_not_run(browser, tmp_path):
    text = "</script><script>alert(1)</script> 東京 😀 \x07 <img src=x onerror=alert(2)>"
    result = analyze(text, heads=None)
    report.write_report(result, tmp_path / "r.html")
    page = Page(browser, tmp_path / "r.html")
    assert page.dialogs == [] and page.errors == []
    assert page.requests == [page.url]
    shown = page.page.eval_on_selector_all("#tokens-table tbody td.text",
                                           "tds => tds.map(t => t.textContent)")
    assert shown == [t["label"] for t in result.tokens()]
    assert page.page.eval_on_selector_all("img", "imgs => imgs.length") == 0
    page.page.close()


def test_window_and_induction_column_are_shown(browser, hf_checkpoint, tmp_path):
    """--tokens names the window in the summary and --induction adds a sortable column
    holding compare-heads --induction's scores."""
    import json

    from typer.testing import CliRunner

    from attnviz.cli import app

    runner = CliRunner()
    common = [TEXT, "--weights", str(hf_checkpoint), "--layer", "1,2"]
    done = runner.invoke(app, ["report", *common, "--tokens", "3:9", "--induction", "-o",
                               str(tmp_path / "r.html"), "-q"])
    assert done.exit_code == 0, done.stderr
    compared = runner.invoke(app, ["compare-heads", *common, "--induction", "--format", "json"])
    expected = [row["induction"] for row in json.loads(compared.stdout)["heads"]]
    page = Page(browser, tmp_path / "r.html")
    assert page.errors == []
    summary = page.page.text_content("#summary")
    assert summary.startswith("tokens 3\u20138 of the text") and "keys before 3" in summary
    index = page.page.eval_on_selector_all(
        "#stats-table thead th", "ths => ths.findIndex(th => th.dataset.column === 'induction')")
    assert index >= 0
    shown = page.page.eval_on_selector_all(f"#stats-table tbody tr td:nth-child({index + 1})",
                                           "tds => tds.map(td => td.title || td.textContent)")
    np.testing.assert_allclose([float(v) for v in shown], expected, atol=5e-4)
    page.page.close()


def test_heads_that_matter_view_selects_heads_and_shows_the_numbers(browser, tmp_path):
    """`report --target`: the predictions and both maps; clicking a map cell selects that
    head everywhere, and the cells carry the numbers of `attribute --format json`."""
    import json

    from helpers import make_hf_checkpoint
    from typer.testing import CliRunner

    from attnviz.cli import app

    checkpoint = make_hf_checkpoint(tmp_path / "lm", 3, 4, 64, lm_head=True)
    common = [TEXT, "--weights", str(checkpoint), "--target", " Mary", "--contrast", " John"]
    runner = CliRunner()
    done = runner.invoke(app, ["report", *common, "--layer", "1,2", "-o", str(tmp_path / "r.html"), "-q"])
    assert done.exit_code == 0, done.stderr
    numbers = runner.invoke(app, ["attribute", *common, "--format", "json", "-q"])
    expected = json.loads(numbers.stdout)
    page = Page(browser, tmp_path / "r.html")
    try:
        assert not page.errors and all(u.startswith("file:") for u in page.requests)
        assert page.page.locator("#attribution-section h2").inner_text() == "Heads that matter"
        assert "logit(\u2423Mary) \u2212 logit(\u2423John)" in page.page.inner_text("#attribution-summary")
        rows = page.page.locator("#attribution-predictions tr").count()
        assert rows == 1 + len(expected["predictions"])
        for row in expected["heads"]:
            for measure in ("dla", "ablation"):
                cell = page.page.locator(f"#{measure}-map td[data-layer='{row['layer']}']"
                                         f"[data-head='{row['head']}']")
                assert float(cell.get_attribute("data-value")) == pytest.approx(row[measure], abs=1e-9)
        # a head of layer 2 (the report's second layer): selected in the other views
        page.page.click("#ablation-map td[data-layer='2'][data-head='3']")
        assert page.heatmap_head() == "2/3"
        assert page.page.get_attribute("#selected-head", "data-layer") == "2"
        assert page.page.locator("#dla-map td.hl").get_attribute("data-head") == "3"
        # layer 0 is not in the report: its cells show numbers but select nothing
        page.page.click("#dla-map td[data-layer='0'][data-head='1']")
        assert page.heatmap_head() == "2/3"
        if os.environ.get("ATTNVIZ_SCREENSHOTS"):
            page.page.locator("#attribution-section").screenshot(path=os.environ["ATTNVIZ_SCREENSHOTS"])
    finally:
        page.page.close()


def test_weighting_switch_changes_every_view_and_rollout_reads_out(browser, hf_checkpoint, tmp_path):
    """`report --weighting norm --rollout`: the switch puts the value-weighted norms in the
    model view, heatmap (read-out = export's norm within the step), heads view, statistics
    (compare-heads --weighting norm's) and rollout view; switching back restores the weights."""
    import json

    from typer.testing import CliRunner

    from attnviz.cli import app

    common = [TEXT, "--weights", str(hf_checkpoint), "--layer", "all"]
    runner = CliRunner()
    done = runner.invoke(app, ["report", *common, "--weighting", "norm", "--rollout",
                               "-o", str(tmp_path / "r.html"), "-q"])
    assert done.exit_code == 0, done.stderr
    done = runner.invoke(app, ["export", *common, "--weighting", "norm", "--rollout",
                               "-o", str(tmp_path / "n.npz"), "-q"])
    assert done.exit_code == 0, done.stderr
    arrays = np.load(tmp_path / "n.npz")
    attention_rollout = runner.invoke(app, ["export", *common, "--rollout", "-o",
                                            str(tmp_path / "a.npz"), "-q"])
    assert attention_rollout.exit_code == 0
    plain_rollout = np.load(tmp_path / "a.npz")["rollout"]
    stats = json.loads(runner.invoke(app, ["compare-heads", *common, "--weighting", "norm",
                                           "--format", "json"]).stdout)["heads"]
    scale = report.read_payload(tmp_path / "r.html")["norms"]["scale"]
    page = Page(browser, tmp_path / "r.html")
    try:
        assert page.errors == [] and page.requests == [page.url]
        p = page.page
        assert p.is_checked("#weighting-attention") and not p.is_checked("#weighting-norm")

        def views():
            return {"heatmap": page.canvas_png("#heatmap-canvas"),
                    "thumb": page.canvas_png('.thumb[data-layer="2"][data-head="1"] canvas'),
                    "heads": page.canvas_png("#heads-canvas"),
                    "rollout": page.canvas_png("#rollout-canvas"),
                    "stats": p.inner_text("#stats-table"), "similarity": p.inner_text("#similarity-table")}

        p.click('.thumb[data-layer="1"][data-head="2"]')
        before = views()
        attention = page.hover_cell(13, 0)
        p.click("#weighting-norm")
        p.wait_for_selector("#model-view[data-weighting=norm]")
        after = views()
        assert all(before[k] != after[k] for k in before), [k for k in before if before[k] == after[k]]
        assert p.get_attribute("body", "data-weighting") == "norm"
        assert "value-weighted" in p.text_content("#heatmap-head")
        assert p.text_content("#colorbar-top").startswith(f"{scale:g}")
        for query, key in [(13, 0), (13, 13), (7, 3), (10, 9), (0, 0)]:
            data = page.hover_cell(query, key)
            exact = float(arrays["norms"][1, 2, query, key])
            assert abs(float(data["weight"]) - exact) <= 0.5 / 65535 * scale + 1e-6
            assert "\u2016\u03b1\u00b7f(x)\u2016" in data["text"]
            weight = float(data["text"].rsplit("(weight ", 1)[1].rstrip(")"))
            assert abs(weight - arrays["weights"][1, 2, query, key]) <= 0.0006
        # the statistics are compare-heads --weighting norm's
        first = p.eval_on_selector_all("#stats-table tbody tr:first-child td", "tds => tds.map(t => t.title)")
        assert float(first[2]) == pytest.approx(stats[0]["entropy"], rel=1e-12)
        # the rollout view: the value-weighted rollout, read out
        box = p.locator("#rollout-canvas").bounding_box()
        where = p.eval_on_selector("#rollout-canvas", "c => ({...c.dataset})")
        assert where["weighting"] == "norm"
        margin, cell = float(where["margin"]), float(where["cell"])
        p.evaluate(f"window.scrollBy(0, {box['y'] + margin + 9.5 * cell} - innerHeight / 2)")
        box = p.locator("#rollout-canvas").bounding_box()
        p.mouse.move(box["x"] + margin + 2.5 * cell, box["y"] + margin + 9.5 * cell)
        out = p.eval_on_selector("#rollout-readout", "e => ({...e.dataset, text: e.textContent})")
        assert (out["query"], out["key"], out["weighting"]) == ("9", "2", "norm")
        assert abs(float(out["value"]) - arrays["rollout"][9, 2]) <= 0.5 / 65535 + 1e-6
        # back: every view is the weights' again (pixel for pixel where no cursor is drawn)
        p.click("#weighting-attention")
        p.wait_for_selector("#model-view[data-weighting=attention]")
        again = views()
        for name in ("thumb", "heads", "stats", "similarity"):
            assert again[name] == before[name], name
        assert page.hover_cell(13, 0)["weight"] == attention["weight"]
        p.mouse.move(box["x"] + margin + 2.5 * cell, box["y"] + margin + 9.5 * cell)
        out = p.eval_on_selector("#rollout-readout", "e => ({...e.dataset})")
        assert abs(float(out["value"]) - plain_rollout[9, 2]) <= 0.5 / 65535 + 1e-6
        assert page.errors == []
    finally:
        page.page.close()
