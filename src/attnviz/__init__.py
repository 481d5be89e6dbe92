"""attnviz: see what the heads of a (GPT-2 style) multi-head causal self-attention attend to.

Attention weights everywhere in attnviz follow one convention:
``[batch, head, query_pos, key_pos]`` — row ``i`` of a head's matrix is the distribution
of query ``i`` over the keys ``0..i`` (entries above the diagonal are exactly 0).
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    """``attnviz.scan_distributed`` (needs ``attnviz[dask]``), imported when first used."""
    if name == "scan_distributed":
        from attnviz.distributed import scan_distributed

        return scan_distributed
    raise AttributeError(f"module 'attnviz' has no attribute {name!r}")
