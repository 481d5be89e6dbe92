"""`attnviz report` without a browser: the embedded data (schema, quantisation decoded
independently and compared with `export`), the statistics (equal to `compare-heads`),
determinism, no URL, the size budget, errors. tests/test_report_browser.py drives the page."""

from __future__ import annotations

import base64
import doctest
import json
import re
from importlib import resources

import numpy as np
import pytest
from helpers import SHORT_TEXT

from attnviz.analyses.attention import AttentionResult, analyze
from attnviz.core.config import ModelConfig
from attnviz.core.errors import InputError
from attnviz.display import report
from attnviz.text.gpt2_bpe import token_bytes

HOSTILE_TEXT = "</script><script>alert(1)</script> <!-- 東京 😀 \x00\x07\u2028 é & \\/ http://x //y"
SIZES = ["--heads", "4", "--d-model", "32"]


def independent_decode(payload: dict) -> np.ndarray:
    """docs/report.md's scheme, written out again: base64url -> bytes -> values, lower
    triangles row by row, layer-major then head."""
    spec = payload["weights"]
    n_layers, n_heads, n_tokens, _ = spec["shape"]
    raw = base64.urlsafe_b64decode(spec["data"])
    if spec["encoding"] == "u16":
        values = [int.from_bytes(raw[k:k + 2], "little") / 65535 for k in range(0, len(raw), 2)]
    else:
        values = [(b / 255) ** 2 for b in raw]
    weights = np.zeros((n_layers, n_heads, n_tokens, n_tokens))
    k = 0
    for layer in range(n_layers):
        for head in range(n_heads):
            for i in range(n_tokens):
                for j in range(i + 1):
                    weights[layer, head, i, j] = values[k]
                    k += 1
    assert k == len(values)
    return weights


def step(weights: np.ndarray, encoding: str) -> np.ndarray:
    """docs/report.md's bound on |decoded - exact|."""
    if encoding == "u16":
        return np.full_like(weights, 0.5 / 65535, dtype=np.float64)
    return (2 * np.sqrt(weights) + 1 / 510) / 510


def synthetic_result(n_layers: int, n_heads: int, n_tokens: int, seed: int = 0) -> AttentionResult:
    """Causal softmax rows of random scores, spread like trained heads."""
    rng = np.random.default_rng(seed)
    scores = rng.normal(0, 3, (n_layers, n_heads, n_tokens, n_tokens))
    scores[..., np.triu(np.ones((n_tokens, n_tokens), bool), 1)] = -np.inf
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    ids = [(17 * i) % 50000 for i in range(n_tokens)]
    return AttentionResult(token_ids=ids, weights=weights.astype(np.float32),
                           layers=list(range(n_layers)), attn_inputs=np.zeros((n_layers, n_tokens, 1)),
                           params={}, config={"mode": "synthetic"}, raw_tokens=token_bytes(ids))


def data_element(html: str) -> str:
    return re.search(r'<script type="application/json" id="attnviz-data">(.*?)</script>', html,
                     re.S).group(1)


@pytest.fixture(scope="module")
def short_result():
    return analyze(SHORT_TEXT, ModelConfig(n_heads=4, d_model=32))


def test_payload_schema(short_result, tmp_path):
    info = report.write_report(short_result, tmp_path / "r.html")
    payload = report.read_payload(tmp_path / "r.html")
    assert payload["format"] == "attnviz-report" and payload["version"] == 1
    assert payload["layers"] == [0] and payload["n_heads"] == 4 and payload["n_tokens"] == 6
    assert payload["tokens"] == short_result.tokens() and payload["window"] is None
    assert payload["config"] == json.loads(json.dumps(short_result.config))
    spec = payload["weights"]
    assert spec["shape"] == [1, 4, 6, 6] and spec["layout"] == "lower-triangle"
    assert spec["encoding"] == "u16" == info.encoding
    assert len(base64.urlsafe_b64decode(spec["data"])) == 2 * 4 * 21  # 21 = 6 * 7 / 2
    assert payload["stats"]["columns"][:2] == ["layer", "head"]
    assert len(payload["stats"]["heads"]) == 4 and np.shape(payload["stats"]["similarity"]) == (1, 4, 4)
    assert info.bytes == (tmp_path / "r.html").stat().st_size and info.data_bytes == len(spec["data"])


@pytest.mark.parametrize("encoding", report.ENCODINGS)
def test_decoded_weights_are_within_the_documented_step(encoding, tmp_path):
    result = synthetic_result(2, 3, 9)
    report.write_report(result, tmp_path / "r.html", encoding=encoding)
    payload = report.read_payload(tmp_path / "r.html")
    assert payload["weights"]["encoding"] == encoding
    decoded = independent_decode(payload)
    exact = result.weights.astype(np.float64)
    assert np.all(np.abs(decoded - exact) <= step(exact, encoding) + 1e-12)
    assert np.array_equal(decoded, report.decode_weights(payload))  # the library agrees
    assert np.all(np.triu(decoded[0, 0], 1) == 0)


def test_sqrt_encoding_keeps_small_weights_finer_than_linear_u8():
    weights = np.array([0.0, 1e-4, 0.001, 0.004, 0.01, 0.5, 1.0])
    decoded = report.dequantize(report.quantize(weights, "sqrt-u8"), "sqrt-u8")
    assert decoded[0] == 0.0 and decoded[-1] == 1.0
    assert np.all(np.abs(decoded - weights)[1:5] < 0.5 / 255 / 4)  # 4x finer than round(w*255)
    assert np.all(np.abs(decoded - weights) <= report.max_error(weights, "sqrt-u8"))


def test_auto_encoding_switches_at_the_documented_count():
    assert report.choose_encoding(report.MAX_U16_WEIGHTS) == "u16"
    assert report.choose_encoding(report.MAX_U16_WEIGHTS + 1) == "sqrt-u8"
    assert report.n_stored(12, 12, 256) == 144 * 32896


def test_report_matches_export_for_every_layer_of_a_checkpoint(cli, hf_checkpoint, tmp_path):
    text = "When Mary and John went to the store, John gave a drink to"
    common = ["--weights", hf_checkpoint, "--layer", "all"]
    done = cli("report", text, *common, "-o", tmp_path / "r.html", "--quiet")
    assert done.exit_code == 0, done.stderr
    assert cli("export", text, *common, "-o", tmp_path / "w.npz").exit_code == 0
    exported = np.load(tmp_path / "w.npz")
    payload = report.read_payload(tmp_path / "r.html")
    assert payload["layers"] == exported["layers"].tolist() == [0, 1, 2]
    assert [t["id"] for t in payload["tokens"]] == exported["token_ids"].tolist()
    exact = exported["weights"].astype(np.float64)  # (3, 4, T, T)
    decoded = independent_decode(payload)
    assert decoded.shape == exact.shape
    assert np.all(np.abs(decoded - exact) <= step(exact, payload["weights"]["encoding"]) + 1e-12)
    assert exact.max() > 0.5  # the checkpoint's heads are far from uniform: a real check


def test_statistics_equal_compare_heads_json(cli, hf_checkpoint, tmp_path):
    common = [SHORT_TEXT, "--weights", hf_checkpoint, "--layer", "0,2"]
    assert cli("report", *common, "-o", tmp_path / "r.html", "-q").exit_code == 0
    compared = cli("compare-heads", *common, "--format", "json", "--similarity")
    assert compared.exit_code == 0, compared.stderr
    expected = json.loads(compared.stdout)
    stats = report.read_payload(tmp_path / "r.html")["stats"]
    assert stats["heads"] == expected["heads"]  # exactly the same numbers
    assert stats["similarity"] == expected["similarity"]
    assert stats["columns"] == list(expected["heads"][0])


def test_induction_and_window_equal_compare_heads_json(cli, hf_checkpoint, tmp_path):
    common = [SHORT_TEXT, "--weights", hf_checkpoint, "--layer", "1,2", "--tokens", "2:5",
              "--induction"]
    assert cli("report", *common, "-o", tmp_path / "r.html", "-q").exit_code == 0
    compared = cli("compare-heads", *common, "--format", "json")
    assert compared.exit_code == 0, compared.stderr
    expected = json.loads(compared.stdout)
    payload = report.read_payload(tmp_path / "r.html")
    assert payload["stats"]["heads"] == expected["heads"]  # induction column included
    assert payload["stats"]["columns"][-1] == "induction" == list(expected["heads"][0])[-1]
    assert payload["window"] == {"start": 2, "stop": 5} and payload["n_tokens"] == 3
    assert [t["position"] for t in payload["tokens"]] == [2, 3, 4]


def test_same_input_gives_identical_bytes(cli, tmp_path):
    for name in ("a.html", "b.html"):
        assert cli("report", SHORT_TEXT, *SIZES, "-o", tmp_path / name, "-q").exit_code == 0
    assert (tmp_path / "a.html").read_bytes() == (tmp_path / "b.html").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.html", "b.html"]  # no temporaries


def test_hostile_token_text_stays_inside_the_data_element(cli, tmp_path):
    done = cli("report", HOSTILE_TEXT, *SIZES, "-o", tmp_path / "r.html", "-q")
    assert done.exit_code == 0, done.stderr
    html = (tmp_path / "r.html").read_text(encoding="ascii")  # ASCII only: no encoding issue
    n_scripts = len(re.findall(r"<script[ >]", html))
    assert len(re.findall(r"</script", html, re.I)) == n_scripts == 7  # data + six scripts
    assert "alert" not in html.replace(data_element(html), "")
    assert "<!--" not in html
    tokens = report.read_payload(tmp_path / "r.html")["tokens"]
    expected = analyze(HOSTILE_TEXT, ModelConfig(n_heads=4, d_model=32)).tokens()
    assert tokens == expected
    assert "".join(t["text"] for t in tokens).startswith("</script><script>alert(1)</script>")


def test_the_page_has_no_url(cli, tmp_path):
    done = cli("report", HOSTILE_TEXT, *SIZES, "-o", tmp_path / "r.html", "-q")
    assert done.exit_code == 0
    html = (tmp_path / "r.html").read_text()
    assert "//" not in html  # no http://, https:// or protocol-relative URL, anywhere
    assert not re.search(r"https?:|url\(|@import|\ssrc=", html, re.I)
    assert set(re.findall(r'href="([^"]*)"', html)) <= {f"#{s}-section" for s in
                                                          ("model", "heatmap", "heads", "stats",
                                                           "tokens", "config")}


def test_assets_ship_as_package_data_and_are_inlined(short_result):
    folder = resources.files("attnviz.display").joinpath("report_assets")
    names = {p.name for p in folder.iterdir()}
    assert set(report._ASSETS) | {"report.html"} <= names
    html = report.render_html(report.build_payload(short_result))
    assert "{{" not in html
    for name in report._ASSETS:
        text = folder.joinpath(name).read_text()
        assert "//" not in text and "</script" not in text.lower()
        assert text.strip().splitlines()[-1] in html  # inlined


def test_twelve_layers_twelve_heads_256_tokens_fit_in_8_mb(tmp_path):
    info = report.write_report(synthetic_result(12, 12, 256), tmp_path / "big.html")
    assert info.encoding == "sqrt-u8"
    assert info.data_bytes == 4 * -(-report.n_stored(12, 12, 256) // 3)  # base64 of one byte each
    assert info.bytes <= 8_000_000


def test_too_large_a_report_is_refused_before_writing(cli, tmp_path, monkeypatch):
    monkeypatch.setattr(report, "MAX_WEIGHTS", 50)  # 4 heads x 21 = 84 weights
    done = cli("report", SHORT_TEXT, *SIZES, "-o", tmp_path / "r.html")
    assert done.exit_code == 2
    assert done.stderr.startswith("Error: a report of 1 layer x 4 heads x 6 tokens would hold 84")
    assert "--layer" in done.stderr and done.stderr.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, message", [
    (["", "-o", "{tmp}/r.html"], "Error: "),
    ([SHORT_TEXT, "-o", "{tmp}"], "is a folder"),
    ([SHORT_TEXT, "-o", "{tmp}/missing/r.html"], "does not exist"),
    ([SHORT_TEXT, "--layer", "1", "-o", "{tmp}/r.html"], "--layer 1 is out of range"),
])
def test_bad_input_is_one_error_line(cli, tmp_path, args, message):
    done = cli("report", *[a.replace("{tmp}", str(tmp_path)) for a in args], *SIZES)
    assert done.exit_code == 2, done.stdout
    assert message in done.stderr and done.stderr.count("\n") == 1 and done.stdout == ""
    assert not (tmp_path / "r.html").exists()


def test_json_result_names_the_file_and_its_size(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    done = cli("report", SHORT_TEXT, *SIZES, "--format", "json")
    assert done.exit_code == 0, done.stderr
    document = json.loads(done.stdout)
    written = tmp_path / "attnviz-report.html"  # the default name
    assert document["file"] == "attnviz-report.html" and document["bytes"] == written.stat().st_size
    assert document["encoding"] == "u16" and document["layers"] == [0]
    assert (document["n_heads"], document["n_tokens"]) == (4, 6)
    assert "Writing" in done.stderr


def test_library_refuses_an_unknown_encoding(short_result, tmp_path):
    with pytest.raises(InputError, match="unknown encoding"):
        report.write_report(short_result, tmp_path / "r.html", encoding="float16")
    assert not (tmp_path / "r.html").exists()


def test_read_payload_refuses_other_files(tmp_path):
    (tmp_path / "x.html").write_text("<html></html>")
    with pytest.raises(InputError, match="not an attnviz report"):
        report.read_payload(tmp_path / "x.html")


def test_module_docstring_example():
    failures, tried = doctest.testmod(report)
    assert tried >= 3 and failures == 0


def test_help_lists_the_command(cli):
    done = cli("report", "--help")
    assert done.exit_code == 0 and "--output" in done.stdout and "--layer" in done.stdout
    assert "report" in cli("--help").stdout


# ------------------------------------------------- value-weighted norms and rollout


@pytest.fixture(scope="module")
def norm_report(hf_checkpoint, tmp_path_factory):
    """`report --weighting norm --rollout` of every layer of the test checkpoint, with
    `export`'s norms and rollouts of the same run."""
    from typer.testing import CliRunner

    from attnviz.cli import app

    folder = tmp_path_factory.mktemp("norm-report")
    common = [SHORT_TEXT + " to the store", "--weights", str(hf_checkpoint), "--layer", "all"]
    runner = CliRunner()
    done = runner.invoke(app, ["report", *common, "--weighting", "norm", "--rollout",
                               "-o", str(folder / "r.html"), "-q"])
    assert done.exit_code == 0, done.stderr
    arrays = {}
    for name, extra in (("attention", []), ("norm", ["--weighting", "norm"])):
        done = runner.invoke(app, ["export", *common, *extra, "--rollout", "-o",
                                   str(folder / f"{name}.npz"), "-q"])
        assert done.exit_code == 0, done.stderr
        arrays[name] = dict(np.load(folder / f"{name}.npz"))
    return folder / "r.html", arrays, common


def test_norm_report_carries_the_norms_and_both_rollouts(norm_report):
    path, arrays, _ = norm_report
    payload = report.read_payload(path)
    spec = payload["norms"]
    assert spec["shape"] == list(arrays["norm"]["norms"].shape) and spec["layout"] == "lower-triangle"
    assert spec["encoding"] == payload["weights"]["encoding"] == "u16"
    exact = arrays["norm"]["norms"].astype(np.float64)
    from attnviz.analyses.weighting import colour_top

    assert spec["scale"] == colour_top(exact) and exact.max() <= spec["scale"] < 2 * exact.max()
    # decoded independently: stored value x scale, the layout of the weights
    decoded = independent_decode({"weights": {**spec}}) * spec["scale"]
    assert np.abs(decoded - exact).max() <= 0.5 / 65535 * spec["scale"] + 1e-7
    np.testing.assert_allclose(report.decode_norms(payload), decoded)
    assert np.abs(report.decode_weights(payload) - arrays["norm"]["weights"]).max() <= 0.5 / 65535 + 1e-7
    rollout = payload["rollout"]
    assert rollout["layers"] == [0, 1, 2] and rollout["encoding"] == "u16"
    for name in ("attention", "norm"):
        got = report.decode_rollout(payload, name)
        assert np.abs(got - arrays[name]["rollout"]).max() <= 0.5 / 65535 + 1e-7
    assert np.abs(report.decode_rollout(payload, "norm") - arrays["attention"]["rollout"]).max() > 1e-3
    assert payload["config"]["weighting"]["name"] == "norm"


def test_norm_report_statistics_equal_compare_heads_norm(cli, norm_report):
    path, _, common = norm_report
    payload = report.read_payload(path)
    for extra, stats in (([], payload["stats"]), (["--weighting", "norm"], payload["norms"]["stats"])):
        done = cli("compare-heads", *common, *extra, "--similarity", "--format", "json")
        assert done.exit_code == 0, done.stderr
        expected = json.loads(done.stdout)
        assert stats["heads"] == [{k: v for k, v in row.items()} for row in expected["heads"]]
        np.testing.assert_allclose(stats["similarity"], expected["similarity"], rtol=1e-12)
    assert payload["stats"]["heads"] != payload["norms"]["stats"]["heads"]


def test_plain_report_has_none_of_the_norms_code(short_result, norm_report):
    plain = report.render_html(report.build_payload(short_result))
    for marker in ("setWeighting", "rollout-section", "attnviz report --weighting", "[norms]"):
        assert marker not in plain
    html = norm_report[0].read_text()
    assert "setWeighting" in html and "rollout-section" in html
    assert "//" not in html.split('id="attnviz-data"')[0] and html.isascii()


def test_rollout_alone_and_its_size(cli, tmp_path, hf_checkpoint):
    path = tmp_path / "r.html"
    done = cli("report", SHORT_TEXT, "--weights", hf_checkpoint, "--layer", "1", "--rollout",
               "-o", path, "-q")
    assert done.exit_code == 0, done.stderr
    payload = report.read_payload(path)
    assert "norms" not in payload and "norm" not in payload["rollout"]
    assert payload["layers"] == [1] and payload["rollout"]["layers"] == [0, 1]  # 0..L
    assert "setWeighting" not in path.read_text()


def test_norms_count_twice_against_the_size_limit(cli, tmp_path, monkeypatch):
    monkeypatch.setattr(report, "MAX_WEIGHTS", 100)  # 4 heads x 21 = 84 weights: fits alone
    assert cli("report", SHORT_TEXT, *SIZES, "-o", tmp_path / "a.html", "-q").exit_code == 0
    done = cli("report", SHORT_TEXT, *SIZES, "--weighting", "norm", "-o", tmp_path / "b.html")
    assert done.exit_code == 2
    assert "would hold 168 values (attention weights and their value-weighted norms)" in done.stderr
    assert "leave out --weighting norm" in done.stderr and done.stderr.count("\n") == 1
    assert not (tmp_path / "b.html").exists()


def test_norm_report_of_random_mode_with_induction(cli, tmp_path):
    path = tmp_path / "r.html"
    done = cli("report", SHORT_TEXT, *SIZES, "--context-length", "128", "--weighting", "norm",
               "--induction", "-o", path, "-q")
    assert done.exit_code == 0, done.stderr
    payload = report.read_payload(path)
    assert payload["norms"]["stats"]["columns"][-1] == "induction"
    plain = [row["induction"] for row in payload["stats"]["heads"]]
    weighted = [row["induction"] for row in payload["norms"]["stats"]["heads"]]
    assert plain != weighted and all(0 <= w <= 1 for w in weighted)
