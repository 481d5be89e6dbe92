"""attnviz: see what the heads of a (GPT-2 style) multi-head causal self-attention attend to.

The Python API (``attnviz.api``), for notebooks and scripts::

    import attnviz
    gpt2 = attnviz.load("gpt2")                  # read once, reused by every call
    attnviz.show("When Mary and John went to the store", gpt2, layer="all")
    attnviz.scan(["a prompt", "another"], gpt2)  # detectors over many prompts
    attnviz.attribute("… John gave a drink to", gpt2, target=" Mary", contrast=" John")
    attnviz.why("… John gave a drink to", gpt2, head=(9, 9), query=-1)  # why it looks there

Attention weights everywhere in attnviz follow one convention:
``[batch, head, query_pos, key_pos]`` — row ``i`` of a head's matrix is the distribution
of query ``i`` over the keys ``0..i`` (entries above the diagonal are exactly 0).
"""

# ruff: noqa: I001 - startup first: a Ctrl-C while the program starts is one line, no traceback
from attnviz.core import startup  # noqa: F401
import importlib
import importlib.abc
import importlib.util
import sys

from attnviz.api import Model, analyze, attribute, load, report_page, scan, show, why

__version__ = "0.1.0"
__all__ = ["Model", "analyze", "attribute", "load", "report_page", "scan", "scan_distributed",
           "show", "why"]


def __getattr__(name: str):
    """``attnviz.scan_distributed`` (needs ``attnviz[dask]``), imported when first used."""
    if name == "scan_distributed":
        from attnviz.analyses.distributed import scan_distributed

        return scan_distributed
    raise AttributeError(f"module 'attnviz' has no attribute {name!r}")


# Modules that moved into packages in 0.2 (CHANGELOG.md): the old import paths name the same
# module objects, so notebooks that import ``attnviz.analysis`` or ``attnviz.attention`` keep
# working. Nothing here is imported until an old name is.
MOVED = {
    "errors": "core.errors",
    "config": "core.config",
    "attention": "core.attention",
    "fileio": "files.fileio",
    "outdir": "files.outdir",
    "npz": "files.npz",
    "output": "files.output",
    "progress": "files.progress",
    "tokenizer": "text.gpt2_bpe",
    "tokenization": "text.tokenization",
    "inputs": "text.inputs",
    "model": "models.random_model",
    "analysis": "analyses.attention",
    "stats": "analyses.stats",
    "detectors": "analyses.detectors",
    "weighting": "analyses.weighting",
    "attribution": "analyses.attribution",
    "generation": "analyses.generation",
    "scanning": "analyses.scanning",
    "scan_runs": "analyses.scan_runs",
    "scan_series": "analyses.scan_series",
    "distributed": "analyses.distributed",
    "pipeline": "analyses.steps",
    "training": "analyses.training",
    "train_run": "analyses.train_run",
    "plot": "pictures.plot",
    "cells": "pictures.cells",
    "colours": "pictures.colours",
    "fonts": "pictures.fonts",
    "images": "pictures.images",
    "lines": "pictures.lines",
    "plot_steps": "pictures.steps",
    "plot_scan": "pictures.scan",
    "plot_attribute": "pictures.attribution",
    "plot_generate": "pictures.generation",
    "plot_series": "pictures.series",
    "plot_training": "pictures.training",
    "notebook": "display.notebook",
    "report": "display.report",
    "reporting": "display.report_contents",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``attnviz.<old name>`` and gives the module at its new place."""

    def find_spec(self, fullname, path=None, target=None):
        prefix, _, old = fullname.partition(".")
        if prefix == "attnviz" and old in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        module = importlib.import_module("attnviz." + MOVED[spec.name.partition(".")[2]])
        spec.loader_state = module.__spec__  # the import system sets __spec__ to the alias's
        return module

    def exec_module(self, module):
        module.__spec__ = module.__spec__.loader_state


sys.meta_path.append(_MovedModules())
