"""The model layer: one description of a decoder-only model (``spec``), one forward pass
(``forward``), and one reader per checkpoint layout mapping onto them.

``load(weights)`` resolves ``--weights`` (path -> local cache -> Hub, ``resolve``), reads the
config's ``model_type`` and hands the files to that family's reader, which returns a
``Checkpoint``: the spec, the tensors under the forward's names, and the tokenizer.
"""

from attnviz.models.families import READERS, SUPPORTED, check_model_type
from attnviz.models.loading import load

__all__ = ["READERS", "SUPPORTED", "check_model_type", "load"]
