"""``--chat``: the text as one user message of the model's chat template, tokenized as
transformers' ``apply_chat_template`` tokenizes it."""

from __future__ import annotations

import json

import pytest
import transformers
from helpers import make_family_checkpoint, write_bpe_tokenizer

from attnviz.analyses.attention import encode_text, load_model
from attnviz.core.config import config_for

# Llama 3's template, shortened: BOS and header tokens written by the template itself
TEMPLATE = ("{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}"
            "<|end_header_id|>\n\n{{ message['content'] | trim }}<|eot_id|>{% endfor %}"
            "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
SPECIALS = ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]


@pytest.fixture(scope="module")
def chat_checkpoint(tmp_path_factory):
    folder = make_family_checkpoint(tmp_path_factory.mktemp("chat") / "llama", "llama", n_layers=1,
                                    vocab_size=320, tokenizer=False)  # room for the added tokens
    write_bpe_tokenizer(folder, vocab_size=300)
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    next_id = 1 + max(t["id"] for t in tokenizer["added_tokens"])
    next_id = max(next_id, max(tokenizer["model"]["vocab"].values()) + 1)
    for i, text in enumerate(SPECIALS):
        tokenizer["added_tokens"].append({"id": next_id + i, "content": text, "single_word": False,
                                          "lstrip": False, "rstrip": False, "normalized": False,
                                          "special": True})
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer))
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["chat_template"] = TEMPLATE
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("text", ["Hello there", "  What is 2+2?  ", "東京 🙂 <|eot_id|> inside"])
def test_chat_ids_equal_apply_chat_template(chat_checkpoint, text):
    theirs = transformers.AutoTokenizer.from_pretrained(chat_checkpoint).apply_chat_template(
        [{"role": "user", "content": text}], tokenize=True, add_generation_prompt=True)
    theirs = theirs["input_ids"] if isinstance(theirs, dict) or hasattr(theirs, "keys") else theirs
    model = load_model(config_for(str(chat_checkpoint)), str(chat_checkpoint))
    assert encode_text(model, text, chat=True) == list(theirs)
    assert encode_text(model, text) != list(theirs)  # without --chat: the text alone


def test_the_command_line_wraps_the_text_and_labels_show_the_template(chat_checkpoint, cli):
    done = cli("compare-heads", "Hello there", "--weights", chat_checkpoint, "--chat",
               "--format", "json")
    assert done.exit_code == 0, done.stderr
    texts = [t["text"] for t in json.loads(done.stdout)["tokens"]]
    assert texts[0] == "<|begin_of_text|>" and "<|start_header_id|>" in texts
    assert texts[-3:] == ["<|end_header_id|>", "\n", "\n"] or texts[-2:] == ["<|end_header_id|>", "\n\n"]


def test_chat_without_a_template_is_refused(tmp_path, cli):
    folder = make_family_checkpoint(tmp_path / "plain", "llama", n_layers=1)
    done = cli("compare-heads", "Hello", "--weights", folder, "--chat")
    assert done.exit_code == 2
    assert done.stderr.startswith(f"Error: --chat: the tokenizer ({folder / 'tokenizer.json'}) "
                                  "has no chat template")
    assert len(done.stderr.strip().splitlines()) == 1


def test_chat_needs_weights(cli):
    done = cli("compare-heads", "Hello", "--chat")
    assert done.exit_code == 2 and done.stderr.strip() == (
        "Error: --chat goes with --weights: random mode reads GPT-2's tokens and sizes")
