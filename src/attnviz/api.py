"""The Python API, for notebooks and scripts: what the commands do, as functions.

>>> import attnviz
>>> gpt2 = attnviz.load("gpt2")                        # doctest: +SKIP  (read once)
>>> attnviz.show("When Mary and John went to the store", gpt2, layer="all")  # doctest: +SKIP
>>> result = attnviz.analyze("Your journey starts with one step")   # random GPT-2 small
>>> result.to_numpy().shape                            # (layers, heads, query, key)
(1, 12, 6, 6)

Every function takes the model as ``weights``: ``None`` (random mode: seeded weights of the
GPT-2 small shape), a checkpoint path or Hub repo id (``"gpt2"``,
``"EleutherAI/pythia-160m@step3000"``), or a ``Model`` from ``load`` — reused, so its weights
are read once. The model options (``heads``, ``seed``, ``tokenizer``, ``offline``,
``device``, …) are the command line's, spelled as Python names. Results show themselves in
a notebook (see ``attnviz.display.notebook``) and have ``to_html()``, ``save(path)``,
``to_numpy()`` and ``to_pandas()`` (pandas is imported only then).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

# The display registers how results show themselves (attnviz.core.views): imported with the API.
import attnviz.display.notebook  # noqa: F401
from attnviz.analyses.describe import model_name
from attnviz.core.errors import InputError
from attnviz.files.progress import in_notebook

__all__ = ["Model", "load", "analyze", "report_page", "show", "scan", "attribute", "why"]


class Model:
    """A model read once and reused by every call that is given it: ``engine`` (what the
    commands run: random mode's attention layer or a checkpoint's transformer; blocks are
    read the first time they run) and ``config`` (its ``ModelConfig``: tokenizer options,
    the BOS, the seed of the induction probe)."""

    def __init__(self, engine, config, weights: str | None):
        self.engine, self.config, self.weights = engine, config, weights

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    @property
    def n_layers(self) -> int:
        return self.engine.n_layers

    @property
    def n_heads(self) -> int:
        return self.engine.n_heads

    def describe(self) -> dict:
        """What the commands print as ``config``."""
        return self.engine.describe()

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        """``text`` in the model's token ids (with its BOS unless loaded with ``bos=False``)."""
        from attnviz.analyses.attention import encode_text

        return encode_text(self.engine, text, allow_special, bos=self.config.bos,
                           chat=self.config.chat)

    def __repr__(self) -> str:
        return f"attnviz.Model({model_name(self.describe())})"


def load(weights: str | Path | None = None, **options) -> Model:
    """Read a model once: ``weights`` a checkpoint (file or folder), a Hub repo id
    (``"gpt2"``, ``"repo@revision"``; downloaded once into the Hugging Face cache) or None for
    random mode. ``options``: the command line's model options — ``heads``, ``d_model``,
    ``context_length``, ``seed``, ``qkv_bias``, ``impl``, ``preset``, ``offline``,
    ``device``, ``tokenizer``, ``bos``, ``book_config`` — and ``progress`` (download bars,
    on by default)."""
    from attnviz.analyses.attention import load_model
    from attnviz.core.config import config_for

    if isinstance(weights, Model):
        raise InputError("load() was given a Model: it is loaded already")
    weights = None if weights is None else str(weights)
    known = {"heads", "d_model", "context_length", "seed", "qkv_bias", "impl", "preset",
             "offline", "device", "tokenizer", "bos", "book_config", "progress",
             "bidirectional", "cross_d_in"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise InputError(f"load() got unknown option(s) {', '.join(unknown)}; the options are "
                         f"{', '.join(sorted(known))}")
    # random mode's other kinds of attention (docs/encoders.md)
    kinds = {k: options.pop(k) for k in ("bidirectional", "cross_d_in") if k in options}
    if kinds and weights is not None:
        raise InputError(f"{', '.join(kinds)} describe random mode's module: drop them, or weights")
    explicit = frozenset(options) - {"progress"}
    config = replace(config_for(weights, explicit=explicit, **options), **kinds)
    return Model(load_model(config, weights, seq2seq=True), config, weights)


def _model(weights, options: dict, seq2seq: bool = False) -> Model:
    """``weights`` as a ``Model``: itself, or loaded with ``options``. An encoder–decoder is
    refused by name unless the caller shows its kinds of attention (``seq2seq``)."""
    if isinstance(weights, Model):
        if options:
            raise InputError(f"model options ({', '.join(sorted(options))}) go to "
                             "attnviz.load(), not to a call given a loaded Model")
        model = weights
    else:
        model = load(weights, **options)
    if not seq2seq:
        from attnviz.analyses.attention import check_not_seq2seq

        check_not_seq2seq(model.engine)
    return model


def analyze(text: str, weights=None, *, layer=0, tokens: str | None = None,
            allow_special: bool = False, resolution: int | None = None, sink_tokens: int = 4,
            pair: str | None = None, cross: str | None = None,
            decoder_text: str | None = None, attention: str | None = None, **options):
    """The attention of ``text``: an ``AttentionResult`` (``weights (L, H, T, T)``, tokens,
    config) that shows itself as the interactive report. ``layer``: a number, ``"3,5"`` or
    ``"all"``; ``tokens="A:B"``: keep queries and keys A..B-1 of the whole text's run.
    A text longer than ``resolution`` tokens (1024) gives a ``LongResult`` instead: pooled
    maps and statistics of every weight (docs/long-context.md), the exact window of
    ``tokens`` as ``.exact_window()``; it shows itself too. ``pair``: an encoder's second
    sentence (a sentence pair); ``cross``: random mode's cross-attention to a second text,
    ``weights (L, H, T, T_k)`` (docs/encoders.md). An encoder–decoder (T5, BART, Marian)
    gives a ``Seq2SeqResult`` of its ``attention`` kinds (``"encoder"``, ``"decoder"``,
    ``"cross"``, ``"all"``: the default), the decoder reading ``decoder_text`` after its
    start token (docs/encoder-decoders.md)."""
    from attnviz.analyses.attention import encode_inputs
    from attnviz.analyses.longcontext import analyze_tokens
    from attnviz.analyses.seq2seq import analyze_seq2seq, check_attention, is_seq2seq

    model = _model(weights, options, seq2seq=True)
    kinds = check_attention(model.engine, attention, decoder_text)
    if is_seq2seq(model.engine):
        for value, name in ((pair, "pair"), (cross, "cross"), (tokens, "tokens")):
            if value is not None:
                raise InputError(f"{name}= is not for encoder–decoders: they read the text "
                                 "and decoder_text")
        return analyze_seq2seq(model.engine, text, decoder_text, layer=layer, kinds=kinds,
                               allow_special=allow_special, resolution=resolution)
    if pair is None and cross is None:
        inputs = {"token_ids": model.encode(text, allow_special)}
    else:
        inputs = encode_inputs(model.engine, text, allow_special, model.config.bos,
                               model.config.chat, pair=pair, cross=cross)
    return analyze_tokens(model.engine, layer=layer, tokens=tokens, resolution=resolution,
                          sink_tokens=sink_tokens, **inputs)


def report_page(text: str, weights=None, *, layer=0, tokens: str | None = None,
                weighting: str = "attention", rollout: bool = False, induction: bool = False,
                target: str | None = None, contrast: str | None = None, position: int = -1,
                ablate: str = "zero", allow_special: bool = False, **options):
    """`attnviz report` as an object (a ``reporting.Report``): shown inline in a notebook,
    ``.save("r.html")`` writes the same page the command writes (``attnviz.display.report`` is the
    module that writes pages, hence the name). The options are the command's:
    ``weighting="norm"``, ``rollout``, ``induction``, and ``target`` (with ``contrast``,
    ``position``, ``ablate``) for the "heads that matter" view."""
    from attnviz.display.report_contents import check_report_options, report_contents

    check_report_options(weighting, target, contrast, ablate)  # before a model is read
    model = _model(weights, options)
    return report_contents(model.engine, model.encode(text, allow_special), layer=layer,
                           tokens=tokens, weighting=weighting, rollout=rollout,
                           induction=induction, seed=model.config.seed, target=target,
                           contrast=contrast, position=position, ablate=ablate)


def show(text: str, weights=None, **options) -> None:
    """Show the report of ``text`` (``report_page``'s options) in the notebook; outside one,
    write it to a temporary file and open it in the browser."""
    page = report_page(text, weights, **options)
    if in_notebook():
        from IPython.display import display

        display(page)
        return
    import tempfile
    import webbrowser

    path = Path(tempfile.mkdtemp(prefix="attnviz-")) / "report.html"
    page.save(path)
    print(f"Wrote {path}")
    webbrowser.open(path.as_uri())


def scan(prompts: str | Path | Sequence[str], weights=None, *, layer="all",
         batch_size: int = 16, exclude_first: bool = False, exclude_self: bool = False,
         truncate: bool = False, induction: bool = False, allow_special: bool = False,
         **options):
    """`attnviz scan`: every head's detector scores and statistics over ``prompts`` (a list
    of texts, or the path of a file with one a line / a ``.jsonl`` of ``{"text": …}``): a
    ``ScanResult`` with ``mean``/``std``/``count`` per column, ``(L, H)`` each, shown as the
    detector maps and the top heads."""
    from attnviz.analyses import scanning
    from attnviz.analyses.attention import parse_layers
    from attnviz.analyses.induction import check_induction_probe

    records, where = _corpus(prompts)
    model = _model(weights, options)
    layers = parse_layers(layer, model.n_layers)
    if induction:
        check_induction_probe(model.engine, fit=True)
    corpus = scanning.model_corpus(model.engine, records, truncate=truncate,
                                   allow_special=allow_special, bos=model.config.bos,
                                   chat=model.config.chat, where=where)
    return scanning.scan_corpus(model.engine, corpus, layers, batch_size=batch_size,
                                exclude_first=exclude_first, exclude_self=exclude_self,
                                induction_seed=model.config.seed if induction else None)


def _corpus(prompts) -> tuple[list[tuple[int, str]], str]:
    """``scan``'s prompts as ``(number, text)`` records: a ``Path`` (or a ``str`` naming a
    file that exists) is read as `attnviz scan --file` reads it; other text holds one
    prompt a line; a sequence holds one prompt per item."""
    from attnviz.analyses import scanning

    if isinstance(prompts, str) and Path(prompts).is_file():
        prompts = Path(prompts)
    if isinstance(prompts, Path):
        return scanning.read_corpus(None, prompts)
    if isinstance(prompts, str):
        if "\n" not in prompts and Path(prompts).suffix.lower() in (".txt", ".jsonl"):
            raise InputError(f"scan(): {prompts} does not exist (give a list of prompts, or "
                             "the path of a file with one a line)")
        prompts = prompts.splitlines()
    records = [(i, text) for i, text in enumerate(prompts, start=1) if text.strip()]
    if not records:
        raise InputError("scan() was given no prompts (empty ones are skipped)")
    return records, "prompt"


def attribute(text: str, weights, *, target: str | None = None, contrast: str | None = None,
              position: int = -1, ablate: str = "zero",
              baseline: Sequence[str] | None = None, top_k: int = 10,
              allow_special: bool = False, **options):
    """`attnviz attribute`: which heads matter for the prediction after ``position`` — each
    head's direct logit attribution and ablation effect on the logit of ``target`` (a token's
    text, ``" Mary"``; default: the top prediction), or on ``target`` − ``contrast``. An
    ``AttributionResult`` (``dla``, ``ablation``: ``(L, H)``), shown as the two maps and the
    top heads. ``ablate="mean"`` with ``baseline`` prompts: their mean per head."""
    from attnviz.analyses.attention import check_length
    from attnviz.analyses.attribution import attribute as run
    from attnviz.analyses.attribution import resolve_metric

    if weights is None:
        raise InputError("attribute needs trained weights: random mode has no output head "
                         "(unembedding); pass weights (a checkpoint, a Hub id or a Model)")
    model = _model(weights, options)
    token_ids = model.encode(text, allow_special)
    check_length(len(token_ids), model.engine.context_length, " (the checkpoint's context)")
    target_id, contrast_id = resolve_metric(model.engine, token_ids, target, contrast, position)
    baseline_ids = None
    if baseline:
        baseline_ids = [model.encode(line) for line in baseline if line.strip()]
        for ids in baseline_ids:
            check_length(len(ids), model.engine.context_length, " (the checkpoint's context)")
    return run(model.engine, token_ids, position=position, target=target_id,
               contrast=contrast_id, ablate=ablate, baseline=baseline_ids, top_k=top_k)


def why(text: str, weights=None, *, head: tuple[int, int], query: int = -1,
        key: int | None = None, report: str | Path | None = None, allow_special: bool = False,
        attention: str | None = None, decoder_text: str | None = None,
        pair: str | None = None, cross: str | None = None, **options):
    """`attnviz why`: the score of head ``head = (layer, head)`` from ``query`` (negative:
    from the end) to ``key`` (default: the key it attends to most) split exactly into
    (query-side component × key-side component) contributions. A ``WhyResult``
    (``contributions()``: ``(C, C)``, ``components``, ``key_totals_by_key()``), shown as
    the score, the top pairs and the two pictures. ``report``: also write the page where a
    click on any cell of the head's heatmap shows its split (``--report``; the result then
    holds every cell's parts, ``cells``). ``weights=None``: random mode. An encoder's
    sentence ``pair``; an encoder–decoder's ``attention`` (``"encoder"``, ``"decoder"``,
    ``"cross"``: the default) with ``decoder_text``; random mode's ``cross`` text."""
    from attnviz.analyses.why import check_head, check_key, check_query, layer_count, why_inputs
    from attnviz.analyses.why import why as run

    model = _model(weights, options, seq2seq=True)
    engine = model.engine
    read = why_inputs(engine, text, attention=attention, decoder_text=decoder_text, pair=pair,
                      cross=cross, allow_special=allow_special, bos=model.config.bos,
                      chat=model.config.chat)
    try:
        layer, index = (int(h) for h in head)
    except (TypeError, ValueError):
        raise InputError(f"head must be (layer, head), e.g. (1, 3), got {head!r}") from None
    check_head(layer, index, layer_count(engine, read.kind), engine.n_heads)
    position = check_query(query, len(read.query_ids))
    if key is not None:  # an encoder's query sees the keys after it too
        check_key(key, position, read.window(engine, layer), layer, read.kind,
                  len(read.key_ids))
    result = run(engine, read.token_ids, layer=layer, head=index, query=position, key=key,
                 every_query=report is not None, attention=read.kind, **read.extra)
    if report is not None:
        from attnviz.analyses.attribution import token_labels
        from attnviz.display.why_report import write_why_report

        write_why_report(result, token_labels(engine.tokenizer, result.token_ids), report)
    return result
