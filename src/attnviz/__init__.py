"""attnviz: see what the heads of a (GPT-2 style) multi-head causal self-attention attend to.

The Python API (``attnviz.api``), for notebooks and scripts::

    import attnviz
    gpt2 = attnviz.load("gpt2")                  # read once, reused by every call
    attnviz.show("When Mary and John went to the store", gpt2, layer="all")
    attnviz.scan(["a prompt", "another"], gpt2)  # detectors over many prompts
    attnviz.attribute("… John gave a drink to", gpt2, target=" Mary", contrast=" John")

Attention weights everywhere in attnviz follow one convention:
``[batch, head, query_pos, key_pos]`` — row ``i`` of a head's matrix is the distribution
of query ``i`` over the keys ``0..i`` (entries above the diagonal are exactly 0).
"""

from attnviz.api import Model, analyze, attribute, load, report_page, scan, show

__version__ = "0.1.0"
__all__ = ["Model", "analyze", "attribute", "load", "report_page", "scan", "scan_distributed",
           "show"]


def __getattr__(name: str):
    """``attnviz.scan_distributed`` (needs ``attnviz[dask]``), imported when first used."""
    if name == "scan_distributed":
        from attnviz.distributed import scan_distributed

        return scan_distributed
    raise AttributeError(f"module 'attnviz' has no attribute {name!r}")
