"""attnviz: see what the heads of a (GPT-2 style) multi-head causal self-attention attend to.

Attention weights everywhere in attnviz follow one convention:
``[batch, head, query_pos, key_pos]`` — row ``i`` of a head's matrix is the distribution
of query ``i`` over the keys ``0..i`` (entries above the diagonal are exactly 0).
"""

__version__ = "0.1.0"
