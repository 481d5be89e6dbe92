"""The Python API (attnviz.load / analyze / report_page / show / scan / attribute): the same
numbers as transformers and as the commands, a model read once, results that display and
save themselves."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import attnviz
from attnviz.cli import app
from attnviz.core.errors import AttnvizWarning, InputError
from attnviz.display import notebook

TEXT = "When Mary and John went to the store, John gave a drink to"
PROMPTS = ["The cat sat on the mat. The cat sat on the mat.",
           "Alice met Bob in Paris, and then Alice met Bob in Rome.",
           "one two three four five one two three four five"]


@pytest.fixture(scope="module")
def model(hf_lm_checkpoint):
    return attnviz.load(hf_lm_checkpoint)


@pytest.fixture(scope="module")
def hf_lm_checkpoint(tmp_path_factory):
    from helpers import make_hf_checkpoint

    return make_hf_checkpoint(tmp_path_factory.mktemp("lm"), n_layer=3, n_head=4, n_embd=64,
                              lm_head=True, seed=5)


def transformers_attentions(folder, token_ids) -> np.ndarray:
    import transformers

    hf = transformers.GPT2LMHeadModel.from_pretrained(folder, attn_implementation="eager").eval()
    with torch.no_grad():
        out = hf(torch.tensor([token_ids]), output_attentions=True)
    return np.stack([a[0].numpy() for a in out.attentions])  # (L, H, T, T)


def cli_json(runner, *args) -> dict:
    done = runner.invoke(app, [*map(str, args), "--format", "json"])
    assert done.exit_code == 0, done.stderr
    return json.loads(done.stdout)


def test_import_is_light():
    code = ("import sys, attnviz; heavy = {'torch', 'numpy', 'matplotlib', 'IPython'} & "
            "set(sys.modules); print(sorted(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert callable(attnviz.scan) and callable(attnviz.show)


def test_analyze_equals_transformers_and_reuses_the_model(model, hf_lm_checkpoint):
    result = attnviz.analyze(TEXT, model, layer="all")
    expected = transformers_attentions(hf_lm_checkpoint, result.token_ids)
    assert expected.max() > 0.9  # peaked rows: a wrong scale or mask would show
    # Layer 0 exactly; deeper layers read a residual stream through MLPs whose spread
    # weights amplify float32 rounding (thread-count dependent, up to ~1e-4 seen in CI).
    np.testing.assert_allclose(result.to_numpy()[0], expected[0], atol=1e-5)
    np.testing.assert_allclose(result.to_numpy(), expected, atol=5e-4)
    blocks = list(model.engine.blocks)
    again = attnviz.analyze(TEXT, model, layer="all")
    assert [id(b) for b in model.engine.blocks] == [id(b) for b in blocks]  # not read again
    np.testing.assert_array_equal(again.weights, result.weights)
    by_path = attnviz.analyze(TEXT, str(hf_lm_checkpoint), layer=1, tokens="2:9")
    np.testing.assert_allclose(by_path.weights[0], expected[1, :, 2:9, 2:9], atol=5e-4)


def test_random_mode_equals_torch_multihead_attention():
    result = attnviz.analyze("Your journey starts with one step", heads=4, d_model=64, seed=7)
    assert result.weights.shape == (1, 4, 6, 6)
    x = torch.from_numpy(result.attn_inputs[0])[None]  # (1, T, d)
    mha = torch.nn.MultiheadAttention(64, 4, bias=False, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([torch.from_numpy(result.params[k][0])
                                            for k in ("W_query", "W_key", "W_value")]))
    causal = torch.triu(torch.ones(6, 6, dtype=torch.bool), 1)
    _, expected = mha(x, x, x, attn_mask=causal, average_attn_weights=False)
    np.testing.assert_allclose(result.weights[0], expected[0].detach().numpy(), atol=1e-6)
    assert repr(result) == ("<attnviz attention of 6 tokens, layer 0, 4 heads · random · 4 heads, "
                            "d_model 64, seed 7>")


def test_to_pandas_holds_every_causal_weight(model):
    result = attnviz.analyze(TEXT, model, layer="0,2")
    frame = result.to_pandas()
    n = result.n_tokens
    assert len(frame) == 2 * 4 * n * (n + 1) // 2
    assert set(frame["layer"]) == {0, 2} and (frame["key"] <= frame["query"]).all()
    for _, row in frame.sample(50, random_state=0).iterrows():
        li = result.layers.index(row["layer"])
        assert row["weight"] == result.weights[li, row["head"], row["query"], row["key"]]
        assert row["query_token"] == result.token_labels[row["query"]]
    sums = frame.groupby(["layer", "head", "query"])["weight"].sum()
    np.testing.assert_allclose(sums.to_numpy(), 1.0, atol=1e-5)


def test_report_page_saves_what_attnviz_report_writes(model, hf_lm_checkpoint, runner, tmp_path):
    options = dict(layer="all", weighting="norm", rollout=True, induction=True, target=" Mary",
                   contrast=" John")
    page = attnviz.report_page(TEXT, model, **options)
    page.save(tmp_path / "api.html")
    done = runner.invoke(app, ["report", TEXT, "--weights", str(hf_lm_checkpoint), "--layer",
                               "all", "--weighting", "norm", "--rollout", "--induction",
                               "--target", " Mary", "--contrast", " John",
                               "-o", str(tmp_path / "cli.html"), "-q"])
    assert done.exit_code == 0, done.stderr
    assert (tmp_path / "api.html").read_bytes() == (tmp_path / "cli.html").read_bytes()
    assert page.to_html() == (tmp_path / "cli.html").read_text()
    assert repr(page).endswith("+ norms, rollout, attribution, induction>")


def test_scan_equals_the_command(model, hf_lm_checkpoint, runner, tmp_path):
    result = attnviz.scan(PROMPTS, model, induction=True)
    expected = cli_json(runner, "scan", *PROMPTS, "--weights", hf_lm_checkpoint, "--layer",
                        "all", "--induction")
    assert result.rows() == expected["heads"]
    corpus = tmp_path / "prompts.txt"
    corpus.write_text("\n".join(PROMPTS) + "\n\n")
    assert attnviz.scan(corpus, model, induction=True).rows() == expected["heads"]
    assert attnviz.scan(str(corpus), model).rows() == attnviz.scan("\n".join(PROMPTS), model).rows()
    frame = result.to_pandas()
    assert frame.to_dict("records") == expected["heads"]
    np.testing.assert_array_equal(result.to_numpy("previous_token_head").reshape(-1),
                                  [row["previous_token_head_mean"] for row in expected["heads"]])
    with pytest.raises(InputError, match="unknown column 'nope'"):
        result.to_numpy("nope")
    with pytest.raises(InputError, match="missing.txt does not exist"):
        attnviz.scan("missing.txt", model)


def test_attribute_equals_the_command(model, hf_lm_checkpoint, runner):
    result = attnviz.attribute(TEXT, model, target=" Mary", contrast=" John")
    expected = cli_json(runner, "attribute", TEXT, "--weights", hf_lm_checkpoint,
                        "--target", " Mary", "--contrast", " John")
    assert result.metric == pytest.approx(expected["metric"]["value"], abs=1e-6)
    dla = np.array([h["dla"] for h in expected["heads"]]).reshape(3, 4)
    np.testing.assert_allclose(result.to_numpy("dla"), dla, atol=1e-6)
    frame = result.to_pandas()
    np.testing.assert_allclose(frame["ablation"], [h["ablation"] for h in expected["heads"]],
                               atol=1e-6)
    assert repr(result).startswith("<attnviz attribution of logit(␣Mary) - logit(␣John) = ")
    with pytest.raises(InputError, match="needs trained weights"):
        attnviz.attribute(TEXT, None)


@pytest.mark.parametrize("make", ["analyze", "scan", "attribute"])
def test_results_display_and_save(make, model, tmp_path):
    result = {"analyze": lambda: attnviz.analyze(TEXT, model, layer="all"),
              "scan": lambda: attnviz.scan(PROMPTS, model),
              "attribute": lambda: attnviz.attribute(TEXT, model, target=" Mary")}[make]()
    bundle = result._repr_mimebundle_()
    assert set(bundle) == {"text/plain", "text/html", "image/png"}
    png = base64.b64decode(bundle["image/png"])
    assert png.startswith(b"\x89PNG") and png == result._repr_png_()
    interactive = make == "analyze"
    assert ("<iframe" in bundle["text/html"]) is interactive
    assert ("<script" in bundle["text/html"]) is interactive  # static views run nothing
    assert bundle["image/png"] in bundle["text/html"]  # the fallback inside the HTML
    result.save(tmp_path / "view.html")
    result.save(tmp_path / "view.png")
    page = (tmp_path / "view.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and page == result.to_html()
    assert (tmp_path / "view.png").read_bytes() == png
    with pytest.raises(InputError, match="must end in .html or .png"):
        result.save(tmp_path / "view.json")


def test_two_views_have_their_own_ids(model):
    first, second = (attnviz.analyze(TEXT, model)._repr_html_() for _ in range(2))
    ids = [s.split('id="', 1)[1].split('"', 1)[0] for s in (first, second)]
    assert ids[0] != ids[1] and all(i.startswith("attnviz-") for i in ids)


def test_a_large_output_is_warned_about_once(model, monkeypatch):
    monkeypatch.setattr(notebook, "MAX_OUTPUT_BYTES", 10_000)
    monkeypatch.setattr(notebook, "_warned", False)
    result = attnviz.analyze(TEXT, model, layer="all")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result._repr_mimebundle_()
        result._repr_mimebundle_()
    found = [w for w in caught if issubclass(w.category, AttnvizWarning)]
    assert len(found) == 1
    assert "layer=" in str(found[0].message) and "tokens='A:B'" in str(found[0].message)


def test_show_outside_a_notebook_opens_the_page(model, monkeypatch, capsys):
    import webbrowser

    opened = []
    monkeypatch.setattr(webbrowser, "open", opened.append)
    attnviz.show(TEXT, model, layer=1)
    path = capsys.readouterr().out.strip().removeprefix("Wrote ")
    assert opened == [f"file://{path}"]
    assert "\"layers\":[1]" in Path(path).read_text().replace(" ", "")


def test_load_refuses_what_it_cannot_use(model):
    with pytest.raises(InputError, match="unknown option.*hedas"):
        attnviz.load(hedas=4)
    with pytest.raises(InputError, match="go to attnviz.load"):
        attnviz.analyze(TEXT, model, seed=3)
    with pytest.raises(InputError, match="--tokenizer goes with --weights"):
        attnviz.load(tokenizer="tokenizer.json")
    assert repr(model).startswith("attnviz.Model(lm") and "3 layers × 4 heads, d_model 64" in repr(model)
