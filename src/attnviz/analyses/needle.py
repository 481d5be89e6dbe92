"""Which heads find the needle: retrieval heads (Wu et al. 2024, "Retrieval Head
Mechanistically Explains Long-Context Factuality"; their code: nightdessert/Retrieval_Head)
and streaming heads (DuoAttention's proxy), from needle-in-a-haystack tests. See
docs/needle.md.

A test: a haystack cut at whole tokens, a needle inserted at a sentence boundary near
``depth × length``, then the question; the model greedily writes its answer with a KV cache.
The prompt but its last token is one forward pass (``Transformer.decode`` without weights:
the engine's long path, never a ``(T, T)`` matrix); then each decoding step is one query
row over every key so far, its exact weights per head (``attnviz.models.engine.attend``,
the same scale, softcap, window and grouped keys as every other command).

At step t (the row that writes token t), head h's key with the largest weight j* is a
**copy** when j* lies in the needle's answer span and the prompt token at j* is token t;
each copy adds ``1 / |answer span|`` to the head's score of the test (Retrieval_Head's
``retrieval_calculate``). A test **counts** when the ROUGE-1 recall of the answer written
against the answer is at least 0.5; a head's **retrieval score** is its mean over the
counted tests. Its **streaming mass** is the mean, over the steps of every test, of the
weight on the first ``sink`` and the last ``recent`` keys, averaged over the query heads of
its key/value group (DuoAttention's split of heads, without training).
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from importlib import resources

import numpy as np
import torch

from attnviz.analyses.attention import check_ids
from attnviz.core.errors import InputError
from attnviz.text.chat import chat_prompt

THOUSAND = 1000  # "4k" is 4000 tokens, as needle-in-a-haystack tests count
ROW_BINS = 100  # a pooled attention row: the mass on each hundredth of the prompt
SINK, RECENT = 128, 256  # DuoAttention's sink and recent window (its Llama configs)
STREAMING_SHARE = 4  # default windows are scaled down to a quarter of a shorter prompt
COUNTED_RECALL = 0.5  # a test counts at this ROUGE-1 recall or more
EXTRA_TOKENS = 10  # --max-new-tokens by default: the answer's tokens and this many more
SENTENCE_ENDS = (b".", b"!", b"?", b"\n")
PROMPT_SEPARATOR = "\n\n"  # between the haystack and the question


# ----------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Needle:
    """A fact to hide (``needle``), the question after the haystack, and the answer: a part
    of the needle's text, the tokens the model must copy."""

    needle: str
    question: str
    answer: str


def _parse_count(text: str, option: str) -> float:
    value = text.strip().lower()
    scale = THOUSAND if value.endswith("k") else 1
    try:
        return float(value[:-1] if scale > 1 else value) * scale
    except ValueError:
        raise InputError(f"{option}: {text!r} is not a number (such as 4000 or 4k)") from None


def _parse_list(spec: str, option: str, parse) -> list[float]:
    """``a,b,c`` or ``START:STOP:STEP`` (STOP included when the steps reach it)."""
    parts = spec.split(":")
    if len(parts) == 3:
        start, stop, step = (parse(p, option) for p in parts)
        if step <= 0 or stop < start:
            raise InputError(f"{option} {spec}: START:STOP:STEP needs STEP > 0 and STOP >= START")
        count = int(np.floor((stop - start) / step + 1e-9)) + 1
        return [start + i * step for i in range(count)]
    if len(parts) != 1 or not spec.strip():
        raise InputError(f"{option} must be a comma list or START:STOP:STEP, got {spec!r}")
    return [parse(p, option) for p in spec.split(",")]


def parse_lengths(spec: str) -> list[int]:
    """``--lengths``: ``1k,2k,4k`` or ``1000:8000:1000`` -> sorted distinct token counts."""
    values = _parse_list(spec, "--lengths", _parse_count)
    if any(v != int(v) or v < 1 for v in values):
        raise InputError(f"--lengths must be whole numbers of tokens, got {spec!r}")
    return sorted({int(v) for v in values})


def parse_depths(spec: str) -> list[float]:
    """``--depths``: ``0,0.5,1`` or ``0:1:0.1`` -> sorted distinct depths in 0..1."""

    def number(text: str, option: str) -> float:
        try:
            return float(text)
        except ValueError:
            raise InputError(f"{option}: {text!r} is not a number") from None

    values = [round(v, 6) for v in _parse_list(spec, "--depths", number)]
    if any(not 0 <= v <= 1 for v in values):
        raise InputError(f"--depths must lie between 0 and 1 (0: the start of the haystack, "
                         f"1: its end), got {spec!r}")
    return sorted(set(values))


def default_needles() -> list[Needle]:
    """The needles shipped with attnviz (``needles.jsonl`` beside this module)."""
    text = resources.files("attnviz.analyses").joinpath("needles.jsonl").read_text("utf-8")
    return _needles_from_lines(text.splitlines(), "the built-in needles")


def read_needles(path) -> list[Needle]:
    """``--needles FILE.jsonl``: one ``{"needle", "question", "answer"}`` object a line."""
    try:
        with open(path, encoding="utf-8") as file:
            lines = file.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"--needles {path}: cannot read it ({exc})") from None
    return _needles_from_lines(lines, f"--needles {path}")


def _needles_from_lines(lines: list[str], where: str) -> list[Needle]:
    needles = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            needles.append(make_needle(record["needle"], record["question"], record["answer"]))
        except (json.JSONDecodeError, KeyError, TypeError):
            raise InputError(f"{where}, line {number}: expected a JSON object with the strings "
                             "needle, question and answer") from None
    if not needles:
        raise InputError(f"{where} holds no needles")
    return needles


def make_needle(needle: str, question: str, answer: str) -> Needle:
    for name, value in (("--needle", needle), ("--question", question), ("--answer", answer)):
        if not isinstance(value, str) or not value.strip():
            raise InputError(f"{name} is empty")
    if answer not in needle:
        raise InputError(f"the answer {answer!r} is not in the needle {needle!r}: the answer "
                         "is the part of the needle the model must copy")
    return Needle(needle.strip(), question.strip(), answer)


_WORDS = {
    "adjective": "old quiet red narrow bright small heavy gentle distant green busy patient "
                 "wooden silver careful hungry clever tired proud ancient".split(),
    "noun": "miller sailor teacher farmer baker painter doctor fox river lantern garden "
            "market bridge orchard wagon village merchant clockmaker shepherd weaver".split(),
    "verb": "carried found watched repaired painted visited followed described sold "
            "counted measured opened".split(),
    "thing": "basket letter map fence boat ladder bell window coat drum kettle book".split(),
    "place": ["the hill", "the harbour", "the square", "the forest", "the mill",
              "the station", "the valley", "the old road"],
}


def builtin_haystack(n_sentences: int, seed: int = 0) -> str:
    """Plain sentences drawn from small word lists, the same for the same arguments: a
    haystack of ordinary English that holds no fact a needle asks about."""
    pick = random.Random(seed).choice
    sentences = []
    for _ in range(n_sentences):
        subject = f"The {pick(_WORDS['adjective'])} {pick(_WORDS['noun'])}"
        thing = f"the {pick(_WORDS['adjective'])} {pick(_WORDS['thing'])}"
        sentences.append(f"{subject} {pick(_WORDS['verb'])} {thing} near {pick(_WORDS['place'])}.")
    return " ".join(sentences)


def rouge1_recall(reference: str, response: str) -> float:
    """ROUGE-1 recall: the share of the reference's words (lower case, letters and digits)
    that the response has, each word as often as the reference has it (no stemming)."""
    words = re.findall(r"[a-z0-9]+", reference.lower())
    if not words:
        return 0.0
    left: dict[str, int] = {}
    for word in re.findall(r"[a-z0-9]+", response.lower()):
        left[word] = left.get(word, 0) + 1
    found = 0
    for word in words:
        if left.get(word, 0) > 0:
            left[word] -= 1
            found += 1
    return found / len(words)


# ---------------------------------------------------------------------------- prompts


@dataclass
class NeedleTokens:
    """A needle in token ids: the needle itself (``ids``, the answer at ``answer``, offsets
    in it), and what closes the prompt (``suffix``: the question and a chat template's end)."""

    ids: list[int]
    answer: tuple[int, int]
    suffix: list[int]


@dataclass
class Haystack:
    """Token ids of the haystack and the positions where a sentence ends (``ends[k]``: a
    needle may go before token k)."""

    ids: list[int]
    ends: np.ndarray  # (len(ids) + 1,) bool

    @classmethod
    def of(cls, tokenizer, ids: list[int]) -> Haystack:
        ends = np.zeros(len(ids) + 1, dtype=bool)
        ends[0] = True
        for k, piece in enumerate(tokenizer.token_bytes(ids), 1):
            ends[k] = piece.rstrip(b" ").endswith(SENTENCE_ENDS)
        return cls(ids, ends)

    def insertion(self, n_tokens: int, depth: float) -> int:
        """Where the needle goes in the first ``n_tokens``: the sentence end nearest to
        ``depth × n_tokens`` (0 and the end count as ends; the earlier one on a tie)."""
        candidates = np.flatnonzero(self.ends[:n_tokens + 1])
        candidates = np.union1d(candidates, [n_tokens])
        return int(candidates[np.argmin(np.abs(candidates - depth * n_tokens))])


def encode_needle(tokenizer, needle: Needle, suffix_text: str) -> NeedleTokens:
    """The needle's ids as they stand after a sentence (a space before it), and where its
    answer lies: the tokens that cover the answer's bytes. Refused when the tokenizer
    cannot spell the answer (it maps part of it to the unknown token)."""
    ids = tokenizer.encode(" " + needle.needle, add_bos=False)
    pieces = tokenizer.token_bytes(ids)
    joined = b"".join(pieces)
    answer = needle.answer.strip().encode()
    at = joined.find(answer)  # (its first occurrence, as Retrieval_Head finds it)
    if at < 0:
        raise InputError(f"the tokenizer cannot spell the answer {needle.answer!r} in the needle "
                         "(it maps part of it to the unknown token); choose another answer")
    ends = np.cumsum([len(p) for p in pieces])
    first = int(np.searchsorted(ends, at, side="right"))
    last = int(np.searchsorted(ends, at + len(answer), side="left"))
    suffix = tokenizer.encode(PROMPT_SEPARATOR + needle.question, add_bos=False)
    if suffix_text:
        suffix += tokenizer.encode(suffix_text, allow_special=True, add_bos=False)
    return NeedleTokens(ids, (first, last + 1), suffix)


@dataclass(frozen=True)
class TestPlan:
    """One test: which needle, at which length and depth, and its prompt."""

    index: int  # in the grid's order: needle, then length, then depth
    needle: int
    length: int
    depth: float
    prompt_ids: list[int]
    needle_span: tuple[int, int]  # [start, end) of the needle in prompt positions
    answer_span: tuple[int, int]  # [start, end) of the answer
    max_new_tokens: int


def plan_tests(tokenizer, haystack: Haystack, needles: list[NeedleTokens], prefix: list[int],
               lengths: list[int], depths: list[float], max_new_tokens: int | None) -> list[TestPlan]:
    """Every test's prompt: ``prefix + haystack[:n] with the needle inserted + suffix``,
    ``length`` tokens in all."""
    plans = []
    for i, needle in enumerate(needles):
        fixed = len(prefix) + len(needle.ids) + len(needle.suffix)
        new = max_new_tokens or (needle.answer[1] - needle.answer[0]) + EXTRA_TOKENS
        for length in lengths:
            n = length - fixed
            if n < 1:
                raise InputError(f"needle {i + 1} and its question take {fixed} tokens: they do "
                                 f"not fit in a prompt of {length} tokens with any haystack; "
                                 "give longer --lengths")
            for depth in depths:
                at = haystack.insertion(n, depth)
                ids = prefix + haystack.ids[:at] + needle.ids + haystack.ids[at:n] + needle.suffix
                start = len(prefix) + at
                a, b = needle.answer
                plans.append(TestPlan(len(plans), i, length, depth, ids,
                                      (start, start + len(needle.ids)), (start + a, start + b), new))
    return plans


def haystack_ids(tokenizer, text: str, needed: int, on_warning=None) -> list[int]:
    """The haystack's ids, repeated (with a warning) until there are ``needed``."""
    ids = tokenizer.encode(text, add_bos=False)
    if len(ids) >= needed:
        return ids
    if on_warning is not None:
        on_warning(f"the haystack has {len(ids)} tokens, fewer than the {needed} the longest "
                   "test needs: it is repeated")
    repeats = -(-needed // max(1, len(ids)))
    return tokenizer.encode(PROMPT_SEPARATOR.join([text.strip()] * (repeats + 1)), add_bos=False)


def chat_parts(tokenizer) -> tuple[str, str]:
    """The text a chat template puts before and after a user message."""
    marker = "\x00NEEDLE\x00"
    rendered = chat_prompt(tokenizer, marker)
    before, _, after = rendered.partition(marker)
    return before, after


def prepare(model, haystack_text: str, needles: list[Needle], lengths: list[int],
            depths: list[float], *, chat: bool = False, bos: bool = True,
            max_new_tokens: int | None = None, on_warning=None) -> list[TestPlan]:
    """Every test of the grid ``needles × lengths × depths`` (refused before any forward
    pass: a length past the model's context, a needle that does not fit)."""
    tokenizer = model.tokenizer
    if chat:
        before, after = chat_parts(tokenizer)
        prefix = tokenizer.encode(before, allow_special=True, add_bos=False) if before else []
    else:
        after = ""
        prefix = [tokenizer.bos_id] if bos and tokenizer.bos_id is not None else []
    encoded = [encode_needle(tokenizer, n, after) for n in needles]
    longest_new = max_new_tokens or max(e.answer[1] - e.answer[0] for e in encoded) + EXTRA_TOKENS
    if max(lengths) + longest_new > model.context_length:
        raise InputError(f"--lengths {max(lengths)} and {longest_new} tokens to write go past the "
                         f"model's context of {model.context_length} tokens")
    shortest = min(len(prefix) + len(e.ids) + len(e.suffix) for e in encoded)
    ids = haystack_ids(tokenizer, haystack_text, max(lengths) - shortest, on_warning)
    check_ids(model, prefix + ids + [i for e in encoded for i in e.ids + e.suffix])
    return plan_tests(tokenizer, Haystack.of(tokenizer, ids), encoded, prefix, lengths, depths,
                      max_new_tokens)


# ------------------------------------------------------------------------------ tests


@dataclass
class TestResult:
    """What one test found (see the module docstring); arrays are ``[layer, head, ...]``."""

    plan: TestPlan
    generated_ids: list[int]
    recall: float  # ROUGE-1 recall of the answer written
    copies: np.ndarray  # (L, H): this test's retrieval score of each head
    streaming: np.ndarray  # (L, H): mean weight on the sink and recent keys, per query head
    row: np.ndarray  # (L, H, ROW_BINS): the mean row of the decoding steps, pooled
    sink: int
    recent: int
    top_keys: np.ndarray  # (steps, L, H) int: the key with the largest weight at each step

    @property
    def counted(self) -> bool:
        return self.recall >= COUNTED_RECALL


def streaming_windows(length: int, sink: int | None, recent: int | None) -> tuple[int, int]:
    """``--sink``/``--recent``, or DuoAttention's 128/256 scaled down (same ratio) to at
    most a quarter of a shorter prompt, at least 1 each."""
    if sink is not None and recent is not None:
        return sink, recent
    default_sink, default_recent = SINK, RECENT
    room = length / STREAMING_SHARE
    if default_sink + default_recent > room:
        factor = room / (default_sink + default_recent)
        default_sink = max(1, int(default_sink * factor))
        default_recent = max(1, int(default_recent * factor))
    return (sink if sink is not None else default_sink,
            recent if recent is not None else default_recent)


def zero_heads(heads: list[tuple[int, int]], n_heads: int, head_dim: int) -> dict:
    """``{layer: edit}`` for ``Transformer.decode``: the listed heads' context zeroed
    before the output projection (``attribute``'s zero ablation)."""
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)

    def edit_for(chosen: list[int]):
        def edit(context: torch.Tensor) -> torch.Tensor:  # (b, n, nh·hd)
            context = context.clone().view(*context.shape[:-1], n_heads, head_dim)
            context[..., chosen, :] = 0
            return context.flatten(-2)
        return edit

    return {layer: edit_for(chosen) for layer, chosen in by_layer.items()}


def decode_text(tokenizer, ids: list[int]) -> str:
    pieces = [p for i, p in zip(ids, tokenizer.token_bytes(ids)) if not tokenizer.is_special(i)]
    return b"".join(pieces).decode("utf-8", errors="replace")


@torch.inference_mode()
def run_test(model, plan: TestPlan, answer: str, layers: list[int], *, sink: int | None = None,
             recent: int | None = None, edits: dict | None = None) -> TestResult:
    """One test: prefill, greedy decoding with the copy check at every step (see the
    module docstring). ``edits``: heads ablated (``zero_heads``)."""
    prompt = plan.prompt_ids
    n_prompt = len(prompt)
    sink, recent = streaming_windows(n_prompt, sink, recent)
    cache = model.new_cache(n_prompt + plan.max_new_tokens)
    if n_prompt > 1:  # no weights kept: the engine's long path, O(T) memory
        model.decode(torch.tensor([prompt[:-1]]), cache, edits=edits)
    prompt_ids = torch.tensor(prompt)
    a, b = plan.answer_span
    n_heads = model.n_heads
    copies = torch.zeros(len(layers), n_heads, dtype=torch.float64)
    mass = torch.zeros(len(layers), n_heads, dtype=torch.float64)
    row = torch.zeros(len(layers), n_heads, n_prompt, dtype=torch.float64)
    eos = model.tokenizer.eos_id
    generated: list[int] = []
    top_keys = []
    step = torch.tensor([prompt[-1:]])
    for _ in range(plan.max_new_tokens):
        logits, kept = model.decode(step, cache, keep=layers, edits=edits)
        token = int(torch.argmax(logits[0, -1]))
        weights = torch.stack([kept[layer][0, :, -1] for layer in layers])  # (L, H, T)
        n_keys = weights.shape[-1]
        top = weights.argmax(dim=-1)  # (L, H): the key with the largest weight
        top_keys.append(top.numpy().astype(np.int32))
        copied = (top >= a) & (top < b) & (prompt_ids[top.clamp(max=n_prompt - 1)] == token)
        copies += copied.double() / (b - a)
        recent_from = max(min(sink, n_keys), n_keys - recent)
        mass += (weights[..., :sink].sum(-1) + weights[..., recent_from:].sum(-1)).double()
        row += weights[..., :n_prompt].double()
        generated.append(token)
        if token == eos:
            break
        step = torch.tensor([[token]])
    steps = len(generated)
    edges = np.linspace(0, n_prompt, ROW_BINS + 1).round().astype(int)
    pooled = np.add.reduceat((row / steps).numpy(), edges[:-1], axis=-1)
    pooled[..., np.diff(edges) == 0] = 0.0  # (a prompt shorter than the bins)
    text = decode_text(model.tokenizer, generated)
    return TestResult(plan, generated, rouge1_recall(answer, text), copies.numpy(),
                      (mass / steps).numpy(), pooled.astype(np.float32), sink, recent,
                      np.stack(top_keys))


# ----------------------------------------------------------------------------- result


@dataclass
class NeedleResult:
    """The tests of a grid and the heads' scores (see the module docstring)."""

    tests: list[TestResult]
    needles: list[Needle]
    lengths: list[int]
    depths: list[float]
    layers: list[int]
    n_heads: int
    kv_heads: list[int]  # the key/value head of each query head
    config: dict = field(default_factory=dict)

    @property
    def counted(self) -> list[TestResult]:
        return [t for t in self.tests if t.counted]

    def retrieval_scores(self) -> np.ndarray:
        """``(L, H)``: each head's mean score over the counted tests (0 when none counted)."""
        counted = self.counted
        if not counted:
            return np.zeros((len(self.layers), self.n_heads))
        return np.mean([t.copies for t in counted], axis=0)

    def streaming_mass(self) -> np.ndarray:
        """``(L, H)``: the mean over tests of the streaming mass of each head's key/value
        group (the mean of the group's query heads), repeated for each query head."""
        per_head = np.mean([t.streaming for t in self.tests], axis=0)
        groups = np.array(self.kv_heads)
        out = np.empty_like(per_head)
        for kv in np.unique(groups):
            out[:, groups == kv] = per_head[:, groups == kv].mean(axis=1, keepdims=True)
        return out

    def fired_accuracy(self) -> np.ndarray:
        """``(L, H)``: the mean ROUGE-1 recall of the tests in which the head copied at
        least once (NaN where it never did)."""
        fired = np.array([t.copies > 0 for t in self.tests])  # (n, L, H)
        recall = np.array([t.recall for t in self.tests])[:, None, None]
        count = fired.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count > 0, (fired * recall).sum(axis=0) / count, np.nan)

    def accuracy(self) -> np.ndarray:
        """``(depths, lengths)``: the mean ROUGE-1 recall of each cell's tests (NaN: none
        ran, as in a shard)."""
        total = np.zeros((len(self.depths), len(self.lengths)))
        count = np.zeros_like(total)
        for t in self.tests:
            d, n = self.depths.index(t.plan.depth), self.lengths.index(t.plan.length)
            total[d, n] += t.recall
            count[d, n] += 1
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count > 0, total / count, np.nan)

    def head_rows(self) -> list[dict]:
        """One row per (layer, head), in model order."""
        scores, mass, fired = self.retrieval_scores(), self.streaming_mass(), self.fired_accuracy()
        return [{"layer": layer, "head": h, "kv_head": self.kv_heads[h],
                 "retrieval_score": float(scores[k, h]), "streaming_mass": float(mass[k, h]),
                 "fired_accuracy": None if np.isnan(fired[k, h]) else float(fired[k, h])}
                for k, layer in enumerate(self.layers) for h in range(self.n_heads)]

    def top(self, k: int) -> list[dict]:
        """The ``k`` heads with the highest retrieval scores (ties: model order)."""
        rows = self.head_rows()
        return sorted(rows, key=lambda r: -r["retrieval_score"])[:k]

    def test_rows(self) -> list[dict]:
        """Every test, reproducible from these fields (the issue's ``tests`` list)."""
        return [{"needle": t.plan.needle, "length": t.plan.length, "depth": t.plan.depth,
                 "prompt_ids": t.plan.prompt_ids, "needle_span": list(t.plan.needle_span),
                 "answer_span": list(t.plan.answer_span), "generated_ids": t.generated_ids,
                 "answer": self.needles[t.plan.needle].answer, "recall": t.recall,
                 "counted": t.counted, "sink": t.sink, "recent": t.recent}
                for t in self.tests]


def run_needle(model, plans: list[TestPlan], needles: list[Needle], lengths: list[int],
               depths: list[float], layers: list[int], *, sink: int | None = None,
               recent: int | None = None, ablate: list[tuple[int, int]] = (),
               on_test=None) -> NeedleResult:
    """Run ``plans`` (``prepare``) and gather the heads' scores. ``ablate``: (layer, head)
    pairs zeroed in every step; ``on_test(result)`` hears of each test when done."""
    edits = None
    if ablate:
        model.load_blocks(model.n_layers, whole=True)
        edits = zero_heads(list(ablate), model.n_heads, model.blocks[0].attn.head_dim)
    tests = []
    for plan in plans:
        tests.append(run_test(model, plan, needles[plan.needle].answer, layers, sink=sink,
                              recent=recent, edits=edits))
        if on_test is not None:
            on_test(tests[-1])
    kv_heads = list(model.kv_heads) or list(range(model.n_heads))
    return NeedleResult(tests, needles, lengths, depths, layers, model.n_heads, kv_heads,
                        {**model.describe(), "layers": layers})
