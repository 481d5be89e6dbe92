"""attnviz in a notebook, for real: examples/attnviz.ipynb executed by nbclient in a real
ipykernel (its `attnviz.load("gpt2")` served by the stand-in Hub on 127.0.0.1), its outputs
checked, then opened in headless Chromium as a notebook page would hold them: the iframes
render, nothing is requested from outside, a click changes only its own view, and with
scripts off (an untrusted notebook) the PNG fallback shows."""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path

import nbformat
import pytest
from hub_server import HubServer, Repo
from nbclient import NotebookClient

from attnviz.display.notebook import MAX_OUTPUT_BYTES

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "examples" / "attnviz.ipynb"


@pytest.fixture(scope="module")
def executed(hf_checkpoint, tmp_path_factory):
    """The example notebook after a run: (notebook, the folder it ran in)."""
    folder = tmp_path_factory.mktemp("notebook")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    with HubServer({"gpt2": Repo.from_folder(hf_checkpoint)}) as hub, \
            pytest.MonkeyPatch.context() as env:
        for name in [k for k in __import__("os").environ if k.startswith("HF_")]:
            env.delenv(name)
        env.setenv("HF_ENDPOINT", hub.url)
        env.setenv("HF_HOME", str(folder / "hf-home"))
        env.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        client = NotebookClient(notebook, timeout=600, kernel_name="python3",
                                resources={"metadata": {"path": str(folder)}})
        client.execute()  # raises CellExecutionError when a cell fails
        downloads = [path for _, path in hub.requests if "/resolve/" in path]
    assert downloads, "the notebook did not download gpt2 from the stand-in Hub"
    return notebook, folder


def outputs_of(notebook, source_start: str) -> list[dict]:
    """The rich outputs (execute_result / display_data) of the code cell starting so."""
    cells = [c for c in notebook.cells if c.cell_type == "code" and c.source.startswith(source_start)]
    assert len(cells) == 1, source_start
    return [o for o in cells[0].outputs if o.output_type in ("execute_result", "display_data")]


def only_bundle(notebook, source_start: str) -> dict:
    outputs = outputs_of(notebook, source_start)
    assert len(outputs) == 1, outputs
    return outputs[0]["data"]


def test_every_cell_ran_without_errors_or_warnings(executed):
    notebook, _ = executed
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        assert cell.execution_count is not None
        for output in cell.outputs:
            assert output.output_type != "error", output
            if output.output_type == "stream":
                assert "Traceback" not in output.text and "Warning" not in output.text, output.text


@pytest.mark.parametrize("cell", ['attnviz.analyze("Your journey', 'attnviz.show(text',
                                  "page = attnviz.report_page"])
def test_report_outputs_are_an_iframe_with_a_png_fallback(executed, cell):
    notebook, _ = executed
    data = only_bundle(notebook, cell)
    assert set(data) == {"text/plain", "text/html", "image/png"}
    snippet = data["text/html"]
    assert snippet.startswith('<div class="attnviz-view"') and snippet.count("<iframe") == 1
    assert 'sandbox="allow-scripts"' in snippet and "allow-same-origin" not in snippet
    assert "require(" not in snippet and "requirejs" not in snippet
    page = html.unescape(re.search(r'srcdoc="([^"]*)"', snippet).group(1))
    assert page.startswith("<!DOCTYPE html>") and 'id="attnviz-data"' in page
    assert not re.search(r'(src|href)="(https?:)?//', page)  # nothing fetched from anywhere
    png = base64.b64decode(data["image/png"])
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5_000
    assert data["image/png"] in snippet  # the same picture inside the HTML, for untrusted views
    assert len(snippet) + len(data["image/png"]) < MAX_OUTPUT_BYTES
    assert data["text/plain"].startswith("<attnviz ")


def test_static_outputs_show_tables_and_pictures(executed, canonical_gpt2):
    notebook, _ = executed
    scan = only_bundle(notebook, "prompts = [")
    assert "<iframe" not in scan["text/html"] and "<script" not in scan["text/html"]
    assert scan["text/html"].count("<table") == 1 and "induction_probe" in scan["text/html"]
    import ast

    cell = next(c for c in notebook.cells if c.source.startswith("prompts = ["))
    prompts = ast.literal_eval(cell.source.split("=", 1)[1].split("]", 1)[0] + "]")
    n_tokens = sum(len(canonical_gpt2.encode(p)) for p in prompts)
    assert scan["text/plain"] == (f"<attnviz scan of {len(prompts)} prompts ({n_tokens} tokens), "
                                  "layers 0-2 × 4 heads>")
    attribution = only_bundle(notebook, "attnviz.attribute(text")
    assert "logit(␣Mary) - logit(␣John)" in attribution["text/html"]
    assert attribution["text/html"].count("<img") == 2
    best = only_bundle(notebook, 'heads.top("induction_head"')["text/plain"]
    assert best.startswith("[{'layer': ") and best.count("'head'") == 3


def test_the_model_is_loaded_once_and_the_page_is_saved(executed):
    notebook, folder = executed
    assert only_bundle(notebook, 'gpt2 = attnviz.load("gpt2")')["text/plain"] == (
        "attnviz.Model(gpt2 · 3 layers × 4 heads, d_model 64)")
    saved = (folder / "ioi-report.html").read_text()
    assert '"attribution"' in saved and saved.startswith("<!DOCTYPE html>")
    cell = next(c for c in notebook.cells if c.source.startswith("result = attnviz.analyze"))
    assert "(3, 4, 14, 14)" in "".join(o.get("text", "") for o in cell.outputs)
    looked_at = only_bundle(notebook, "result = attnviz.analyze")["text/plain"]
    assert looked_at.startswith("[") and looked_at.count("'") == 8  # 4 heads' token labels


def notebook_page(notebook, path: Path) -> Path:
    """The HTML outputs of the two report cells in one page, as a notebook front end
    places them (each in a div of its own)."""
    snippets = [only_bundle(notebook, cell)["text/html"]
                for cell in ('attnviz.analyze("Your journey', 'attnviz.show(text')]
    body = "".join(f'<div class="jp-OutputArea-output">{s}</div>' for s in snippets)
    path.write_text(f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>notebook</title>"
                    f"</head><body>{body}</body></html>", encoding="utf-8")
    return path


@pytest.mark.browser
def test_views_render_independently_in_chromium(executed, tmp_path):
    from playwright.sync_api import sync_playwright
    from test_report_browser import CHROMIUM, CHROMIUM_ARGS

    notebook, _ = executed
    path = notebook_page(notebook, tmp_path / "notebook.html")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        requests, errors = [], []
        page.on("request", lambda r: requests.append(r.url))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: m.type == "error" and errors.append(m.text))
        empty = tmp_path / "empty.html"
        empty.write_text("<!DOCTYPE html><html><body></body></html>")
        page.goto(empty.as_uri())
        blank = set(page.evaluate("Object.keys(window)"))
        page.goto(path.as_uri())
        frames = []
        for index in range(2):
            handle = page.locator("iframe").nth(index).element_handle()
            handle.scroll_into_view_if_needed()  # Chromium pauses the drawing of an
            frame = handle.content_frame()       # off-screen cross-origin frame
            frame.wait_for_selector("body[data-ready=true]", state="attached", timeout=30_000)
            frames.append(frame)
        # sized to its content: the listener replaced the default height, the picture hid
        page.wait_for_function("""() => [...document.querySelectorAll('.attnviz-view')].every(
            v => v.querySelector('iframe').style.height !== '640px'
                 && v.querySelector('img').style.display === 'none')""", timeout=10_000)
        for frame in frames:
            inner = frame.evaluate("Math.ceil(document.body.getBoundingClientRect().height)")
            outer = frame.frame_element().evaluate("f => f.getBoundingClientRect().height")
            assert abs(inner - outer) <= 2 and outer > 300
        assert frames[0].locator(".thumb").count() == 12  # random mode: 1 layer x 12 heads
        assert frames[1].locator(".thumb").count() == 12  # the checkpoint: 3 layers x 4 heads
        before = [f.inner_text("#selected-head") for f in frames]
        frames[1].locator(".thumb").nth(6).click()
        after = [f.inner_text("#selected-head") for f in frames]
        assert after == [before[0], "layer 1, head 2"] and before[1] == "layer 0, head 0"
        leaked = {k for k in page.evaluate("Object.keys(window)") if not k.isdigit()} - blank
        assert not leaked, leaked  # nothing global in the notebook's page
        outside = [u for u in requests if not u.startswith(("file:", "data:", "about:"))]
        assert outside == [] and errors == []
        # Scripts off (an untrusted notebook, GitHub's viewer): the picture is what shows.
        context = browser.new_context(java_script_enabled=False)
        still = context.new_page()
        still.goto(path.as_uri())
        pictures = still.locator(".attnviz-view > img")
        assert pictures.count() == 2
        for i in range(2):
            assert pictures.nth(i).is_visible()
            assert pictures.nth(i).evaluate("img => img.naturalWidth") > 200
        context.close()
        browser.close()


def test_the_notebook_is_stored_without_outputs():
    """What is committed is the source: outputs come from running it (the tests do)."""
    stored = json.loads(NOTEBOOK.read_text())
    assert all(not c.get("outputs") for c in stored["cells"] if c["cell_type"] == "code")
