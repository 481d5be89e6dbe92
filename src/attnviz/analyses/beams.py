"""Beam search, step for step as transformers' ``GenerationMixin._beam_search`` (5.x) does
it for one text: the same top-k over every beam's continuations, the same bookkeeping of
finished hypotheses (scored ``sum of log-probabilities / length ** length_penalty``) and the
same stopping rule (``early_stopping`` true, false or "never"), so that the sequence chosen
is the one ``model.generate(num_beams=N, do_sample=False)`` returns.

The model is behind ``step(token_ids (B, n), beam_origin (B,) or None) -> logits (B, V)``:
the first call gives the prompt (the decoder's start token) for each of the ``B`` beams;
each later call first reorders the caller's cache by ``beam_origin`` (the beam each
running sequence came from), then runs one new token per beam.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from attnviz.analyses.decoding import Decoding, Processors

FINISHED = -1.0e9  # transformers' "no longer a candidate"


@dataclass
class Beam:
    ids: list[int]  # the prompt and every token written (the end-of-sequence token included)
    score: float  # transformers' sequences_scores: sum of log-probabilities / length ** penalty


def beam_search(step: Callable, prompt: list[int], decoding: Decoding, processors: Processors,
                max_length: int, stop_at_eos: bool = True) -> Beam:
    """The best finished sequence (see the module docstring)."""
    import torch
    from torch.nn import functional

    beams, prompt_length = decoding.num_beams, len(prompt)
    eos = torch.tensor(decoding.eos_ids if stop_at_eos else [], dtype=torch.long)
    keep = max(2, 1 + len(eos)) * beams
    top_mask = torch.arange(keep) < beams
    penalty, early = decoding.length_penalty, decoding.early_stopping
    running = torch.tensor([prompt] * beams)  # (beams, cur_len)
    running_scores = torch.zeros(beams)
    running_scores[1:] = FINISHED  # the first step continues beam 0 only
    finished: list[list[int]] = [[] for _ in range(beams)]
    finished_scores = torch.full((beams,), FINISHED)
    is_finished = torch.zeros(beams, dtype=torch.bool)
    improvable = True
    logits = step(running, None)
    cur_len = prompt_length
    while True:
        log_probs = processors(running, functional.log_softmax(logits.float(), dim=-1))
        vocab = log_probs.shape[-1]
        flat = (log_probs + running_scores[:, None]).reshape(-1)
        top_scores, top_indices = torch.topk(flat, keep)
        origin, tokens = top_indices // vocab, top_indices % vocab
        candidates = torch.cat([running[origin], tokens[:, None]], dim=1)  # (keep, cur_len + 1)
        hits = (torch.isin(tokens, eos) if len(eos) else torch.zeros(keep, dtype=torch.bool)) | (
            cur_len + 1 >= max_length)
        # e. the best `beams` candidates that did not stop run on
        next_beams = torch.topk(top_scores + hits.float() * FINISHED, beams)[1]
        # f. the stopped ones among the first `beams` candidates join the finished, if better
        scores = top_scores / ((cur_len + 1 - prompt_length) ** penalty)
        if bool(is_finished.all()) and early is True:
            scores = scores + FINISHED
        if not improvable:
            scores = scores + FINISHED
        just_finished = hits & top_mask
        scores = scores + (~just_finished).float() * FINISHED
        merged = torch.cat([finished_scores, scores])
        best = torch.topk(merged, beams)[1]
        pool = finished + candidates.tolist()
        finished = [pool[i] for i in best.tolist()]
        finished_scores = merged[best]
        is_finished = torch.cat([is_finished, just_finished])[best]
        running, running_scores = candidates[next_beams], (top_scores + hits.float() * FINISHED)[
            next_beams]
        origin = origin[next_beams]
        cur_len += 1
        # g. can a running beam still beat the worst finished one?
        length = (max_length if early == "never" and penalty > 0.0 else cur_len) - prompt_length
        best_possible = running_scores[0] / (length ** penalty)
        worst = torch.where(is_finished, finished_scores.min(), torch.tensor(FINISHED))
        improvable = improvable and bool((best_possible > worst).any())
        if not improvable or (bool(is_finished.all()) and early is True) or bool(hits.all()):
            break
        logits = step(running[:, -1:], origin)
    return Beam(ids=finished[0], score=float(finished_scores[0]))
