"""``scan`` over a Dask cluster: the corpus cut into shards (``scan_runs``), one task per
shard on the workers, the partials merged. Needs ``pip install attnviz[dask]``.

>>> from dask.distributed import Client, LocalCluster              # doctest: +SKIP
>>> with LocalCluster(n_workers=2, threads_per_worker=1) as cluster, Client(cluster) as client:
...     result = scan_distributed(prompts, weights="gpt2", client=client, layer="all")
>>> result.mean["induction_head"].shape                              # doctest: +SKIP
(12, 12)

Each worker loads the model once per task (from its own disk or Hub cache: the weights are
not shipped) and returns a few kilobytes of aggregates; the result equals one ``scan`` of
the whole corpus, as ``attnviz scan-merge`` of the same shards does.
"""

from __future__ import annotations

from collections.abc import Sequence

from attnviz.analyses.attention import load_model, parse_layers
from attnviz.analyses.scan_runs import merge_documents, scan_partial
from attnviz.analyses.scanning import SLICE, ScanResult
from attnviz.core.config import ModelConfig
from attnviz.core.errors import InputError


def _shard_task(records, weights, config, layer, shard, options) -> dict:
    model = load_model(config, weights)
    return scan_partial(model, records, parse_layers(layer, model.n_layers), shard,
                        bos=config.bos, **options)


def scan_distributed(prompts: Sequence[str], weights: str | None = None, *, client,
                     shards: int | None = None, layer="all", config: ModelConfig | None = None,
                     batch_size: int = 16, exclude_first: bool = False, exclude_self: bool = False,
                     truncate: bool = False, allow_special: bool = False) -> ScanResult:
    """Scan ``prompts`` (texts; empty ones skipped, as in a file) on the Dask ``client``'s
    workers in ``shards`` shards (default: one per worker, at most one per 256-prompt
    slice) and merge them. The options are ``attnviz scan``'s."""
    records = [(i, text) for i, text in enumerate(prompts, start=1) if text.strip()]
    if not records:
        raise InputError("no prompts to scan")
    n_slices = -(-len(records) // SLICE)
    if shards is None:
        shards = max(1, min(len(client.scheduler_info()["workers"]), n_slices))
    if not 1 <= shards <= n_slices:
        raise InputError(f"{shards} shards for {len(records)} prompts: at most {n_slices} "
                         f"(one per slice of {SLICE})")
    config = config or ModelConfig()
    options = {"batch_size": batch_size, "exclude_first": exclude_first,
               "exclude_self": exclude_self, "truncate": truncate, "allow_special": allow_special}
    shared = client.scatter(records, broadcast=True)
    futures = [client.submit(_shard_task, shared, weights, config, layer, (k, shards), options,
                             pure=False) for k in range(shards)]
    documents = client.gather(futures)
    result, _ = merge_documents([(f"shard {k}", doc) for k, doc in enumerate(documents)])
    return result
