"""SentencePiece models read without the sentencepiece package: the model file equal to
protobuf's own parse, and token ids equal to transformers' tokenizers on models trained here
with the sentencepiece library — T5Tokenizer (spiece.model) and LlamaTokenizer
(tokenizer.model) as AutoTokenizer builds them, MarianTokenizer (source.spm, target.spm,
vocab.json: the sentencepiece library itself) — and a Marian checkpoint on the command line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import transformers
from hub_server import HubServer, Repo
from sentencepiece import sentencepiece_model_pb2
from seq2seq_checkpoints import make_bart, make_t5
from spm_models import (
    DROPPED,
    llama_model,
    marian_models,
    t5_model,
    write_llama_tokenizer,
    write_marian_tokenizer,
    write_t5_tokenizer,
)

from attnviz.analyses.attention import load_model
from attnviz.analyses.seq2seq import analyze_seq2seq
from attnviz.core.config import ModelConfig
from attnviz.core.errors import InputError
from attnviz.text.spm_model import read_spm
from attnviz.text.tokenization import load_tokenizer

TEXTS = [
    "The cat sat on the mat.",
    "naïve café, crème brûlée — déjà vu Straße",  # accents
    "In 1984 there were 1234 cats; 3.14159",  # digits
    "  two  spaces   and\nnewlines\n\nhere  ",  # several spaces, leading and trailing, newlines
    " leading",
    "trailing ",
    "東京は日本の首都です。北京是中国的首都",  # CJK, some characters unknown
    "emoji 🙂 and ☃ unknown ✓",  # unknown characters: byte fallback or <unk>
    "ﬁ ½ Ⅻ ＡＢＣ Ǆ ㎏ ①",  # NFKC's business (the charsmap)
    "tabs\tand\u00a0nbsp\r\n",
    "a </s> b <unk>c<pad> <s> <extra_id_0> <tool>x",  # special tokens and a user-defined piece
    ">>de<< Das Haus ist klein >>fr<< x",  # Marian's language codes
    "\u2581already \u2581prefixed",
    " ",
]
pytestmark = pytest.mark.filterwarnings("ignore:Recommended. pip install sacremoses")


@pytest.fixture(scope="module")
def models():
    """Every model trained once: (name, bytes)."""
    return {
        **{f"t5-bf{bf}": t5_model(byte_fallback=bf) for bf in (False, True)},
        **{f"llama-bf{bf}": llama_model(byte_fallback=bf) for bf in (True, False)},
        **{f"marian-{kind}-bf{bf}": marian_models(kind, bf) for kind in ("unigram", "bpe")
           for bf in (False, True)},
    }


def compare(ours, theirs, target: bool = False) -> None:
    """Ids equal on every text: special tokens allowed (AutoTokenizer's default), without
    them (add_special_tokens=False) and as plain text (split_special_tokens=True)."""
    for text in TEXTS:
        given = {"text_target": text} if target else {"text": text}
        assert ours.encode(text, allow_special=True) == theirs(**given)["input_ids"], text
        assert ours.encode(text, allow_special=True, add_bos=False) == theirs(
            **given, add_special_tokens=False)["input_ids"], text
        assert ours.encode(text) == theirs(**given, split_special_tokens=True)["input_ids"], text


def test_model_file_equals_protobufs_parse(models, tmp_path):
    seen = set()
    for name, data in models.items():
        for index, blob in enumerate(data if isinstance(data, tuple) else (data,)):
            proto = sentencepiece_model_pb2.ModelProto()
            proto.ParseFromString(blob)
            ours = read_spm(tmp_path / f"{name}-{index}", blob)
            assert [(p.piece, p.score, p.type) for p in ours.pieces] == [
                (p.piece, p.score, p.type) for p in proto.pieces]
            trainer, normalizer = proto.trainer_spec, proto.normalizer_spec
            for field in ("model_type", "vocab_size", "byte_fallback", "unk_id", "bos_id", "eos_id",
                          "pad_id", "unk_piece", "bos_piece", "eos_piece", "pad_piece"):
                assert getattr(ours, field) == getattr(trainer, field), (name, field)
            assert ours.normalizer_name == normalizer.name
            for field in ("precompiled_charsmap", "add_dummy_prefix", "remove_extra_whitespaces",
                          "escape_whitespaces"):
                assert getattr(ours, field) == getattr(normalizer, field), (name, field)
            seen |= {(ours.kind, ours.byte_fallback, bool(ours.precompiled_charsmap),
                      ours.remove_extra_whitespaces, ours.pad_id >= 0, ours.bos_id >= 0)}
    # every variety the tokenizer tests rely on is there: negative ids (pad -1, bos -1) included
    assert {kind for kind, *_ in seen} == {"unigram", "bpe"}
    assert {(bf, charsmap, spaces) for _, bf, charsmap, spaces, *_ in seen} >= {
        (True, True, True), (False, True, True), (True, False, False)}
    assert {(pad, bos) for *_, pad, bos in seen} >= {(True, False), (False, True)}


@pytest.mark.parametrize("bf", (False, True))
def test_t5_ids_equal_autotokenizer(models, tmp_path, bf):
    write_t5_tokenizer(tmp_path, models[f"t5-bf{bf}"])
    ours = load_tokenizer(tmp_path)
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert type(theirs).__name__ == "T5Tokenizer" and not (tmp_path / "tokenizer.json").exists()
    assert ours.kind == "sentencepiece" and ours.vocab_size == len(theirs)
    compare(ours, theirs)
    assert ours.encode("The cat")[-1] == 1 and ours.bos_id is None  # </s> appended, nothing before
    assert ours.encode("<extra_id_0>", allow_special=True)[0] == len(theirs) - 1
    assert ours.unk_id == 2 and 2 in ours.encode("☃")


def test_t5_without_a_tokenizer_class_is_read_by_its_model_type(models, tmp_path):
    """mt5's tokenizer_config.json names no class: AutoTokenizer takes T5Tokenizer from
    config.json's model_type (here with extra_ids 0, as mt5 says)."""
    write_t5_tokenizer(tmp_path, models["t5-bfFalse"], extra_ids=0)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    del config["tokenizer_class"]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mt5"}))
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert type(theirs).__name__ == "T5Tokenizer"
    compare(load_tokenizer(tmp_path), theirs)


@pytest.mark.parametrize("bf", (True, False))
@pytest.mark.parametrize("settings", (
    {"legacy": False}, {"legacy": True}, {"add_prefix_space": False},
    {"add_bos_token": False, "add_eos_token": True}))
def test_llama_ids_equal_autotokenizer(models, tmp_path, bf, settings):
    write_llama_tokenizer(tmp_path, models[f"llama-bf{bf}"], **settings)
    ours = load_tokenizer(tmp_path)
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert type(theirs).__name__ == "LlamaTokenizer"
    compare(ours, theirs)
    ids = ours.encode("The cat sat")
    assert (ids[0] == 1) == settings.get("add_bos_token", True)  # <s>
    assert (ids[-1] == 2) == settings.get("add_eos_token", False)  # </s>
    if bf:  # byte fallback: an emoji is its four bytes
        assert ours.token_bytes(ours.encode("🙂", add_bos=False)[-4:]) == list(
            bytes([b]) for b in "🙂".encode())


@pytest.mark.parametrize("kind", ("unigram", "bpe"))
@pytest.mark.parametrize("bf", (False, True))
def test_marian_ids_equal_marian_tokenizer(models, tmp_path, kind, bf):
    source, target = models[f"marian-{kind}-bf{bf}"]
    size = write_marian_tokenizer(tmp_path, source, target)
    ours = load_tokenizer(tmp_path)
    theirs = transformers.MarianTokenizer.from_pretrained(tmp_path)
    assert ours.vocab_size == size == len(theirs.get_vocab())
    compare(ours, theirs)
    compare(ours.decoder_tokenizer(), theirs, target=True)
    sentence = "Die Katze sass auf der Matte."
    assert ours.encode(sentence) != ours.decoder_tokenizer().encode(sentence)  # two models
    # the pieces vocab.json leaves out become <unk>, as in MarianTokenizer
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(source)
    dropped = [p.piece for p in proto.pieces if p.type == 1][-DROPPED:]
    text = " ".join(piece.replace("\u2581", " ").strip() or "x" for piece in dropped)
    assert ours.encode(text) == theirs(text)["input_ids"]
    assert 1 in ours.encode(text), "no dropped piece was in the text: the test would be weak"
    assert ours.encode("x")[-1] == 0 and ours.is_special(0)  # </s> is id 0


@pytest.fixture(scope="module")
def marian(models, tmp_path_factory):
    """A tiny Marian checkpoint with only SentencePiece files beside it: (folder, vocab size)."""
    folder = tmp_path_factory.mktemp("opus-mt")
    size = write_marian_tokenizer(folder, *models["marian-unigram-bfFalse"])
    make_bart(folder, marian=True, vocab=size, tokenizer=False)
    assert not (folder / "tokenizer.json").exists()
    return folder, size


def test_marian_checkpoint_reads_its_target_with_target_spm(marian, tmp_path, cli):
    """heatmap --decoder-text on a Marian checkpoint with only SentencePiece files: the source
    tokens are source.spm's, the decoder's target.spm's (after its start token, <pad>)."""
    folder, size = marian
    theirs = transformers.MarianTokenizer.from_pretrained(folder)
    source, target = "The cat sat on the mat.", "Die Katze sass auf der Matte."
    result = cli("heatmap", source, "--weights", folder, "--decoder-text", target,
                 "--attention", "cross", "--out", tmp_path / "out", "--format", "json", "-q")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert [t["id"] for t in document["tokens"]] == theirs(source)["input_ids"]
    expected = theirs(text_target=target)["input_ids"]
    assert expected != theirs(target)["input_ids"]  # the target side's own segmentation
    decoder = document["decoder_tokens"]
    assert [t["id"] for t in decoder] == [size - 1, *expected[:-1]]  # <pad>, then no </s>
    assert "".join(t["text"] for t in decoder[1:]).replace("␣", " ").strip() == target.replace(
        "\u00a0", " ")
    assert document["tokens"][-1]["text"] == "</s>" and document["tokens"][-1]["special"]


def test_t5_checkpoint_with_only_spiece_model(models, tmp_path):
    folder = tmp_path / "t5"
    size = write_t5_tokenizer(folder, models["t5-bfFalse"])
    make_t5(folder, vocab=size + 4, tokenizer=False)  # real T5 embeddings have spare rows
    model = load_model(ModelConfig(), str(folder), seq2seq=True)
    theirs = transformers.AutoTokenizer.from_pretrained(folder)
    result = analyze_seq2seq(model, "translate: the cat sat", "die Katze sass", layer="all")
    assert result.source_ids == theirs("translate: the cat sat")["input_ids"]
    assert result.target_ids == [0, *theirs("die Katze sass")["input_ids"][:-1]]
    assert model.describe()["tokenizer"]["kind"] == "sentencepiece"


def _damage(data: bytes, how: str) -> bytes:
    if how == "truncated":
        return data[: len(data) // 2 + 3]
    if how == "wire type":  # a field of wire type 7, which protobuf does not have
        return b"\x0f" + data
    return b"\n\x80"  # a length that runs past the end


def test_marian_repo_without_tokenizer_json_from_the_hub(marian, tmp_path):
    """A Hub repo id of a Marian model downloads its SentencePiece files, then runs offline."""
    folder, size = marian
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    with HubServer({"Helsinki-NLP/opus-mt-en-de": Repo.from_folder(folder)}) as hub:
        env |= {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf")}
        args = [sys.executable, "-m", "attnviz", "heatmap", "The cat sat.", "--weights",
                "Helsinki-NLP/opus-mt-en-de", "--decoder-text", "Die Katze sass.", "--attention",
                "cross", "--out", str(tmp_path / "out"), "--format", "json", "-q"]
        first = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
        assert first.returncode == 0, first.stderr
        downloaded = {path.rsplit("/", 1)[1] for _, path in hub.requests if "/resolve/" in path}
    assert {"source.spm", "target.spm", "vocab.json", "tokenizer_config.json"} <= downloaded
    again = subprocess.run(args, capture_output=True, text=True, timeout=300,
                           env={**env, "HF_HUB_OFFLINE": "1"})
    assert again.returncode == 0, again.stderr
    theirs = transformers.MarianTokenizer.from_pretrained(folder)
    decoder = [t["id"] for t in json.loads(again.stdout)["decoder_tokens"]]
    assert decoder == [size - 1, *theirs(text_target="Die Katze sass.")["input_ids"][:-1]]


@pytest.mark.parametrize("how", ("truncated", "wire type", "length"))
def test_a_damaged_spm_is_one_error_line(marian, tmp_path, cli, how):
    folder = tmp_path / "marian"
    shutil.copytree(marian[0], folder)
    target = (folder / "target.spm").read_bytes()
    (folder / "target.spm").write_bytes(_damage(target, how))
    result = cli("heatmap", "The cat", "--weights", folder, "--decoder-text", "Die Katze",
                 "--out", tmp_path / "out")
    assert result.exit_code == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "target.spm" in lines[0] and "SentencePiece model" in lines[0]
    assert not (tmp_path / "out").exists()
    with pytest.raises(InputError, match="not a readable SentencePiece model"):
        read_spm(folder / "target.spm")


def test_missing_marian_file_and_unknown_class_are_refused(models, tmp_path):
    source, target = models["marian-unigram-bfFalse"]
    write_marian_tokenizer(tmp_path / "m", source, target)
    (tmp_path / "m" / "vocab.json").unlink()
    with pytest.raises(InputError, match="vocab.json is missing"):
        load_tokenizer(tmp_path / "m")
    folder = tmp_path / "gemma"
    write_llama_tokenizer(folder, models["llama-bfTrue"], tokenizer_class="GemmaTokenizer")
    with pytest.raises(InputError, match="is for GemmaTokenizer") as err:
        load_tokenizer(folder)
    assert "T5Tokenizer, LlamaTokenizer, MarianTokenizer" in str(err.value)
    shutil.rmtree(folder)
    # a llama folder without a class: transformers' generic TokenizersBackend, not built here
    write_llama_tokenizer(folder, models["llama-bfTrue"], tokenizer_class=None)
    with pytest.raises(InputError, match="names no tokenizer class"):
        load_tokenizer(folder)
    assert type(transformers.AutoTokenizer.from_pretrained(folder)).__name__ == "TokenizersBackend"
