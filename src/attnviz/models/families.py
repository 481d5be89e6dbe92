"""Which ``model_type`` each checkpoint reader reads."""

from __future__ import annotations

from attnviz.core.errors import InputError

# model_type -> the module of its reader (imported when used)
READERS = {
    "gpt2": "attnviz.models.gpt2_reader",
    "llama": "attnviz.models.llama_reader",
    "mistral": "attnviz.models.llama_reader",
    "qwen2": "attnviz.models.llama_reader",
    "qwen3": "attnviz.models.llama_reader",
    "smollm3": "attnviz.models.llama_reader",
    "gpt_neox": "attnviz.models.neox_reader",
    "gpt_neo": "attnviz.models.neo_reader",
    "gemma2": "attnviz.models.gemma_reader",
    "gemma3_text": "attnviz.models.gemma_reader",
    "gemma3": "attnviz.models.gemma_reader",  # multimodal: its text tower
    # encoders: bidirectional self-attention
    "bert": "attnviz.models.encoder_reader",
    "roberta": "attnviz.models.encoder_reader",
    "distilbert": "attnviz.models.encoder_reader",
    "modernbert": "attnviz.models.encoder_reader",
    # encoder–decoders: encoder, decoder and cross attention
    "t5": "attnviz.models.seq2seq_reader",
    "mt5": "attnviz.models.seq2seq_reader",
    "bart": "attnviz.models.seq2seq_reader",
    "marian": "attnviz.models.seq2seq_reader",
}
SUPPORTED = tuple(READERS)


def check_model_type(model_type, where: str) -> str:
    """``model_type`` when attnviz reads it; otherwise the one-line refusal."""
    if model_type not in READERS:
        raise InputError(f"{where}: model_type {model_type!r} is not supported; attnviz reads "
                         f"{', '.join(SUPPORTED)}")
    return model_type
