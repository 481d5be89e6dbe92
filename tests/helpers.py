"""Helpers shared by the tests."""

from __future__ import annotations

from pathlib import Path

SHORT_TEXT = "Your journey starts with one step"


def small_options(heads: int = 4, d_model: int = 32) -> list[str]:
    return ["--heads", str(heads), "--d-model", str(d_model)]


def make_hf_checkpoint(folder: Path, n_layer: int, n_head: int, n_embd: int,
                       n_positions: int = 128, seed: int = 0, lm_head: bool = False,
                       safe: bool = True) -> Path:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2Model

    config = GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_embd, n_positions=n_positions)
    torch.manual_seed(seed)
    model = (GPT2LMHeadModel if lm_head else GPT2Model)(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "ln_" not in name:
                param.normal_(0.0, 0.3)
    model.save_pretrained(folder, safe_serialization=safe)
    return folder
