import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attnviz.core.errors import InputError
from attnviz.text import gpt2_bpe as tokenizer

TEXTS = [
    "Your journey starts with one step",
    "Hello, world! It's a test; we'll see what they've done, I'd say. You're right.",
    "   leading and trailing spaces   ",
    "tabs\tand\nnewlines\r\n\n\nand   runs      of     spaces",
    "emoji 🙂👍🏽 family 👨‍👩‍👧 flags 🇫🇷",
    "中文字符和日本語のテキスト、한국어",
    "עברית ועربي مرحبا بالعالم",
    "combining e\u0301 and zero\u200bwidth\u200djoiner",
    "control \x00\x07\x1b[31m chars",
    "aaaa" * 500,
    "ab " * 300,
    "<|endoftext|> stays plain text by default",
    "numbers 12345678901234567890 3.14159 1e-10",
    "def f(x):\n    return x ** 2  # code\n",
    "ÀÉÎÕÜ ñ ß ø å",
]


@pytest.mark.parametrize("text", TEXTS)
def test_ids_equal_tiktoken_canonical_gpt2(text, canonical_gpt2):
    assert tokenizer.encode(text) == canonical_gpt2.encode_ordinary(text)


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=80))
def test_ids_equal_canonical_on_random_text(canonical_gpt2, text):
    assert tokenizer.encode(text) == canonical_gpt2.encode_ordinary(text)


def test_encoding_matches_canonical_vocabulary(canonical_gpt2):
    ours = tokenizer.get_encoding()
    assert ours.n_vocab == canonical_gpt2.n_vocab == 50257
    assert ours._mergeable_ranks == canonical_gpt2._mergeable_ranks
    assert ours._pat_str == canonical_gpt2._pat_str


def test_split_pattern_is_tiktokens_own():
    from tiktoken_ext.openai_public import r50k_pat_str

    assert tokenizer.GPT2_PAT_STR == r50k_pat_str


def test_endoftext_is_plain_text_unless_allowed(canonical_gpt2):
    text = "a<|endoftext|>b"
    assert 50256 not in tokenizer.encode(text)
    assert tokenizer.encode(text) == canonical_gpt2.encode_ordinary(text)
    assert tokenizer.encode(text, allow_special=True) == canonical_gpt2.encode(
        text, allowed_special="all"
    )
    assert 50256 in tokenizer.encode(text, allow_special=True)


def test_empty_text_is_an_input_error():
    with pytest.raises(InputError, match="empty"):
        tokenizer.encode("")


@pytest.mark.parametrize(
    "raw, label",
    [
        (b" journey", "␣journey"),
        (b"\n", "↵"),
        (b"\n\n", "↵↵"),
        (b"\t", "⇥"),
        (b"  ", "␣␣"),
        (b"\r", "\\x0d"),
        (b"\x00", "\\x00"),
        (b"\xe2\x80", "\\xe2\\x80"),  # the first two bytes of a three-byte character
        (b" \xe2", "␣\\xe2"),
        (b"\x9c", "\\x9c"),
        ("“".encode(), "“"),
        (" 中".encode(), "␣中"),
        ("a\u200bb".encode(), "a\\u200bb"),
        (b"[/INST]", "[/INST]"),
    ],
)
def test_token_label(raw, label):
    assert tokenizer.token_label(raw) == label


def test_every_token_has_a_printable_label():
    enc = tokenizer.get_encoding()
    for token_id in range(enc.n_vocab):
        label = tokenizer.token_label(enc.decode_single_token_bytes(token_id))
        assert label and label.isprintable() and " " not in label, token_id


def test_loading_never_touches_the_network(monkeypatch, tmp_path):
    def no_network(*args, **kwargs):
        raise AssertionError("network access")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setenv("ATTNVIZ_CACHE_DIR", str(tmp_path))
    tokens = tokenizer.load_token_bytes()  # cold: converts the package's files
    assert len(tokens) == 50256
    assert tokenizer.load_token_bytes() == tokens  # warm: from the cache


def test_cache_is_used_after_the_first_run(monkeypatch, tmp_path):
    monkeypatch.setenv("ATTNVIZ_CACHE_DIR", str(tmp_path))
    first = tokenizer.load_token_bytes()
    assert tokenizer.cache_file().is_file()

    def must_not_convert(*args):
        raise AssertionError("the cache was not used")

    monkeypatch.setattr(tokenizer, "convert_bpe_files", must_not_convert)
    assert tokenizer.load_token_bytes() == first


@pytest.mark.parametrize("garbage", [b"", b"junk", b"attnviz-gpt2-ranks-v1\n\xff\xff\xff\xff"])
def test_corrupt_cache_is_ignored_and_rebuilt(monkeypatch, tmp_path, garbage):
    monkeypatch.setenv("ATTNVIZ_CACHE_DIR", str(tmp_path))
    expected = tokenizer.convert_bpe_files(tokenizer.bpe_data_dir())
    tokenizer.cache_file().write_bytes(garbage)
    assert tokenizer.load_token_bytes() == expected
    assert tokenizer.cache_file().read_bytes() != garbage


def test_unwritable_cache_dir_is_not_an_error(monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("ATTNVIZ_CACHE_DIR", str(blocker / "cache"))
    assert len(tokenizer.load_token_bytes()) == 50256


def test_tampered_bpe_file_is_refused(tmp_path):
    (tmp_path / "vocab.bpe").write_text("#version: 0.2\na b\n")
    (tmp_path / "encoder.json").write_text("{}")
    with pytest.raises(tokenizer.AttnvizError, match="sha256"):
        tokenizer.convert_bpe_files(tmp_path)
