"""How ``generate`` chooses its tokens, as transformers' ``generate`` does: the checkpoint's
generation settings (``models.generation_config``: its ``generation_config.json``, else
``config.json``'s generation keys), each overridden by the option given on the command line,
and the logits processors they switch on, in the order of transformers'
``GenerationMixin._get_logits_processor``:

1. ``repetition_penalty``: the score of every token already in the sequence divided by it
   (multiplied, where negative);
2. ``no_repeat_ngram_size``: no n-gram twice;
3. ``bad_words_ids``: never these tokens (a sequence: never its last token after the others;
   an end-of-sequence token alone is not banned);
4. ``min_length`` / ``min_new_tokens``: no end-of-sequence token before;
5. ``forced_bos_token_id``: the first token written (after a one-token start);
6. ``forced_eos_token_id``: the last token before ``max_length``.

Greedy decoding and sampling apply them to the logits; beam search (``analyses.beams``) to
the log-probabilities, as transformers does. Both ``generate`` (decoder-only) and
``generate_seq2seq`` use this one module.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

from attnviz.core.errors import InputError

DEFAULT_NEW_TOKENS = 20  # transformers' max_length 20 new tokens when nothing says otherwise

# the settings the command line overrides, and the option that does
OPTIONS = {"max_new_tokens": "--max-new-tokens", "num_beams": "--num-beams",
           "length_penalty": "--length-penalty", "early_stopping": "--early-stopping",
           "no_repeat_ngram_size": "--no-repeat-ngram-size",
           "repetition_penalty": "--repetition-penalty", "min_new_tokens": "--min-new-tokens"}
EARLY_STOPPING = {"true": True, "false": False, "never": "never"}

# keys of a generation config that change the tokens and that attnviz does not apply
# (a warning names them): their values when they are harmless
UNAPPLIED = {"suppress_tokens": None, "begin_suppress_tokens": None, "sequence_bias": None,
             "encoder_no_repeat_ngram_size": 0, "encoder_repetition_penalty": 1.0,
             "exponential_decay_length_penalty": None, "renormalize_logits": False,
             "do_sample": False, "num_beam_groups": 1, "diversity_penalty": 0.0,
             "force_words_ids": None, "guidance_scale": None}


@dataclass(frozen=True)
class Decoding:
    """The generation settings in force (transformers' names and meanings; lengths count
    the decoder's start token, or a decoder-only model's prompt, as transformers does)."""

    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    no_repeat_ngram_size: int = 0
    repetition_penalty: float = 1.0
    bad_words_ids: list[list[int]] | None = None
    min_length: int = 0
    min_new_tokens: int | None = None
    max_length: int | None = None
    max_new_tokens: int | None = None
    forced_bos_token_id: int | None = None
    forced_eos_token_id: int | list[int] | None = None
    eos_token_id: int | list[int] | None = None
    decoder_start_token_id: int | None = None
    bos_token_id: int | None = None
    pad_token_id: int | None = None
    source: str | None = None  # the file the checkpoint's settings came from
    given: tuple[str, ...] = ()  # the settings the command line gave
    unapplied: tuple[str, ...] = field(default=(), compare=False)

    @property
    def eos_ids(self) -> list[int]:
        eos = self.eos_token_id
        return [] if eos is None else [eos] if isinstance(eos, int) else list(eos)

    def where(self, key: str) -> str:
        """How an error names a setting: the option typed, or the file and its key."""
        if key in self.given:
            return OPTIONS.get(key, key)
        return f"{self.source or 'the generation config'}: {key}"

    def lengths(self, prompt_length: int, limit: int | None = None) -> tuple[int, int]:
        """``(max_length, steps)``: transformers' ``max_length`` (counting the prompt or the
        decoder's start) and the tokens to write at most, also within ``limit`` positions
        (None: none)."""
        if self.max_new_tokens is not None:
            max_length = self.max_new_tokens + prompt_length
        elif self.max_length is not None:
            max_length = self.max_length
        else:  # transformers' default: 20 new tokens, within the model's positions
            max_length = DEFAULT_NEW_TOKENS + prompt_length
            if limit is not None:
                max_length = min(max_length, limit)
        steps = max_length - prompt_length
        if limit is not None:
            steps = min(steps, limit - prompt_length + 1)
        return max_length, steps

    def summary(self) -> dict:
        """The settings that differ from transformers' defaults, for JSON and reports."""
        default = Decoding()
        shown = {f.name: getattr(self, f.name) for f in fields(self)
                 if f.name not in ("source", "given", "unapplied")
                 and getattr(self, f.name) != getattr(default, f.name)}
        return {**shown, **({"source": self.source} if self.source else {}),
                **({"not_applied": list(self.unapplied)} if self.unapplied else {})}


def not_applied(summary: dict) -> str | None:
    """The warning that names the generation config's settings attnviz does not apply
    (``Decoding.summary()``'s ``not_applied``), or None."""
    if not summary.get("not_applied"):
        return None
    return (f"{summary.get('source', 'the generation config')}: "
            f"{', '.join(summary['not_applied'])} not applied; the tokens may differ from "
            "transformers' generate")


def decoding_for(model, *, read_lengths: bool = True, defaults: dict | None = None,
                 **given) -> Decoding:
    """The settings of ``model``'s checkpoint with the options ``given`` (None: not given)
    in their place; ``defaults``: values for settings the checkpoint leaves unset (its
    end-of-sequence token, the decoder's start); ``read_lengths=False``: the file's
    ``max_length``/``max_new_tokens`` are not read (decoder-only generation keeps
    ``--max-new-tokens``' default). Refused by the option's name (or the file's key) when a
    value cannot be."""
    checkpoint = getattr(model, "checkpoint", None)
    found = dict(getattr(checkpoint, "generation", None) or {})
    source = found.pop("source", None)
    others = found.pop("others", {})
    unapplied = tuple(k for k, harmless in UNAPPLIED.items()
                      if k in others and others[k] != harmless)
    for key, value in (defaults or {}).items():
        if value is not None:
            found.setdefault(key, value)
    if not read_lengths:
        found.pop("max_length", None)
        found.pop("max_new_tokens", None)
    given = {k: v for k, v in given.items() if v is not None}
    if isinstance(given.get("early_stopping"), str):
        text = given["early_stopping"].lower()
        if text not in EARLY_STOPPING:
            raise InputError(f"--early-stopping must be true, false or never, "
                             f"got {given['early_stopping']!r}")
        given["early_stopping"] = EARLY_STOPPING[text]
    names = {f.name for f in fields(Decoding)}
    settings = {k: v for k, v in found.items() if k in names}
    unknown = sorted(set(given) - names)
    if unknown:
        raise TypeError(f"unknown generation settings: {', '.join(unknown)}")
    decoding = replace(Decoding(), **{**settings, **given}, source=source, given=tuple(given),
                       unapplied=unapplied)
    check(decoding, model)
    return decoding


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check(d: Decoding, model) -> None:
    """Every setting in range, each refused by the name it was given by."""
    vocab = model.vocab_size
    for key, least in (("num_beams", 1), ("no_repeat_ngram_size", 0), ("min_length", 0),
                       ("min_new_tokens", 0), ("max_new_tokens", 1), ("max_length", 1)):
        value = getattr(d, key)
        if value is not None and (not _integer(value) or value < least):
            raise InputError(f"{d.where(key)} must be a whole number of at least {least}, "
                             f"got {value!r}")
    for key in ("repetition_penalty", "length_penalty"):
        if isinstance(getattr(d, key), bool) or not isinstance(getattr(d, key), int | float):
            raise InputError(f"{d.where(key)} must be a number, got {getattr(d, key)!r}")
    if not d.repetition_penalty > 0:
        raise InputError(f"{d.where('repetition_penalty')} must be above 0, "
                         f"got {d.repetition_penalty}")
    if d.early_stopping not in (True, False, "never"):
        raise InputError(f"{d.where('early_stopping')} must be true, false or never, "
                         f"got {d.early_stopping!r}")
    for key in ("forced_bos_token_id", "decoder_start_token_id"):
        value = getattr(d, key)
        if value is not None and not (_integer(value) and 0 <= value < vocab):
            raise InputError(f"{d.where(key)} must be a token id below {vocab}, got {value!r}")
    for key in ("eos_token_id", "forced_eos_token_id"):
        value = getattr(d, key)
        ids = [value] if _integer(value) else value
        if value is not None and not (isinstance(ids, list) and ids and all(
                _integer(i) and 0 <= i < vocab for i in ids)):
            raise InputError(f"{d.where(key)} must be token ids below {vocab}, got {value!r}")
    if d.bad_words_ids is not None and not (
            isinstance(d.bad_words_ids, list) and d.bad_words_ids and all(
                isinstance(w, list) and w and all(_integer(i) and 0 <= i < vocab for i in w)
                for w in d.bad_words_ids)):
        raise InputError(f"{d.where('bad_words_ids')} must be lists of token ids below "
                         f"{vocab}, got {d.bad_words_ids!r}")


class Processors:
    """The logits processors of ``decoding`` (see the module docstring), as one callable:
    ``processors(ids (B, T), scores (B, V)) -> scores``. ``prompt_length``: the tokens
    before the first one written (a decoder's start token: 1); ``max_length`` as
    ``Decoding.lengths``."""

    def __init__(self, decoding: Decoding, prompt_length: int, max_length: int):
        self.d, self.prompt_length, self.max_length = decoding, prompt_length, max_length
        eos = decoding.eos_ids
        words = [w for w in decoding.bad_words_ids or [] if all(w != [i] for i in eos)]
        self.banned = sorted({w[0] for w in words if len(w) == 1})
        self.sequences = [w for w in words if len(w) > 1]
        self.forced_eos = ([decoding.forced_eos_token_id] if _integer(
            decoding.forced_eos_token_id) else decoding.forced_eos_token_id)

    @property
    def active(self) -> bool:
        d = self.d
        return bool(d.repetition_penalty != 1.0 or d.no_repeat_ngram_size or self.banned
                    or self.sequences or (d.eos_ids and (d.min_length or d.min_new_tokens))
                    or d.forced_bos_token_id is not None or self.forced_eos)

    def __call__(self, ids, scores):
        import torch

        d, n = self.d, ids.shape[-1]
        neg = float("-inf")
        if d.repetition_penalty != 1.0:
            seen = torch.gather(scores, 1, ids)
            seen = torch.where(seen < 0, seen * d.repetition_penalty, seen / d.repetition_penalty)
            scores = scores.scatter(1, ids, seen)
        if d.no_repeat_ngram_size and n >= d.no_repeat_ngram_size:
            scores = scores.masked_fill(self._repeats(ids, d.no_repeat_ngram_size, scores), neg)
        if self.banned or self.sequences:
            bias = torch.zeros_like(scores)
            bias[:, self.banned] = neg
            for word in self.sequences:
                prefix = torch.tensor(word[:-1])
                if len(prefix) <= n:
                    matches = (ids[:, -len(prefix):] == prefix).all(-1)
                    bias[matches, word[-1]] += neg
            scores = scores + bias
        eos = d.eos_ids
        if eos and d.min_length and n < d.min_length:
            scores = scores.clone()
            scores[:, eos] = neg
        if eos and d.min_new_tokens and n - self.prompt_length < d.min_new_tokens:
            scores = scores.clone()
            scores[:, eos] = neg
        if d.forced_bos_token_id is not None and n == 1:
            scores = torch.full_like(scores, neg)
            scores[:, d.forced_bos_token_id] = 0
        if self.forced_eos and n == self.max_length - 1:
            scores = torch.full_like(scores, neg)
            scores[:, self.forced_eos] = 0
        return scores

    @staticmethod
    def _repeats(ids, size: int, scores):
        """``(B, V)``: the tokens that would complete an n-gram already in ``ids``."""
        import torch

        prefix = ids[:, ids.shape[-1] + 1 - size:]
        windows = ids.unfold(1, size, 1)  # (B, T - size + 1, size)
        matches = (windows[..., :-1] == prefix.unsqueeze(1)).all(-1)
        vocab = scores.shape[-1]
        banned = torch.zeros((scores.shape[0], vocab + 1), dtype=torch.bool)
        banned.scatter_(1, torch.where(matches, windows[..., -1].clamp(max=vocab), vocab), True)
        return banned[:, :vocab]
