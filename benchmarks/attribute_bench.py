"""`attnviz attribute` benchmark (SPEC section 7): a 20-token prompt, zero ablation of all
144 heads plus direct logit attribution, GPT-2-small shape (random weights saved by
transformers as a GPT2LMHeadModel), whole process, against a transformers script that runs
the 144 ablations one forward each, the head zeroed by a forward pre-hook on ``c_proj``
(transformers 5 ignores ``head_mask``) and the effects saved with ``np.save``.

Each side is a fresh process, run alternately; the effects of both are checked equal.
``bench_attribute`` returns rows in the format of ``benchmarks/run.py``.

    python benchmarks/attribute_bench.py [--smoke] [--repeat N]
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from generate_bench import bench_prompt, make_checkpoint, run_standalone, wall  # noqa: E402

TRANSFORMERS = r"""
import sys, numpy as np, torch, transformers
model = transformers.GPT2LMHeadModel.from_pretrained(sys.argv[1], attn_implementation="eager").eval()
ids = torch.tensor([[int(t) for t in open(sys.argv[2]).read().split()]])
target = int(sys.argv[3])
n_layers, n_heads = model.config.n_layer, model.config.n_head
hd = model.config.n_embd // n_heads
with torch.no_grad():
    clean = float(model(ids).logits[0, -1, target])
    effects = np.zeros((n_layers, n_heads))
    for layer, block in enumerate(model.transformer.h):
        for head in range(n_heads):
            def zero(module, args, head=head):
                x = args[0].clone()
                x[..., head * hd:(head + 1) * hd] = 0
                return (x,)
            hook = block.attn.c_proj.register_forward_pre_hook(zero)
            effects[layer, head] = float(model(ids).logits[0, -1, target]) - clean
            hook.remove()
np.save(sys.argv[4], effects)
"""


def bench_attribute(tmp: Path, smoke: bool = False, repeat: int = 5) -> list[dict]:
    import numpy as np

    from attnviz.text.gpt2_bpe import encode

    n_prompt = 8 if smoke else 20
    repeat = 1 if smoke else repeat
    checkpoint = make_checkpoint(tmp / "gpt2-lm", smoke)
    text, _, ids_file = bench_prompt(tmp, n_prompt)
    target = " the"
    target_id = encode(target)[0]
    ours_json = tmp / "ours.json"
    ours = [sys.executable, "-c", "import sys; from attnviz.cli import main; sys.argv[0] = "
            f"'attnviz'; sys.stdout = open({str(ours_json)!r}, 'w'); main()",
            "attribute", text, "--weights", str(checkpoint), "--target", target,
            "--format", "json", "-q"]
    commands = {
        "transformers": [sys.executable, "-c", TRANSFORMERS, str(checkpoint), str(ids_file),
                         str(target_id), str(tmp / "transformers.npy")],
        "ours": ours,
    }
    for cmd in commands.values():
        wall(cmd)  # warm the file cache
    times: dict[str, list[float]] = {name: [] for name in commands}
    for i in range(repeat):
        for name in (list(commands) if i % 2 == 0 else list(commands)[::-1]):
            times[name].append(wall(commands[name]))
    median = {name: statistics.median(t) for name, t in times.items()}
    theirs = np.load(tmp / "transformers.npy")
    document = json.loads(ours_json.read_text())
    mine = np.zeros_like(theirs)
    for row in document["heads"]:
        mine[row["layer"], row["head"]] = row["ablation"]
    diff = float(np.abs(mine - theirs).max())
    shape = "tiny checkpoint" if smoke else "GPT-2-small shape (12 x 12 heads)"
    ratio = median["ours"] / median["transformers"]
    return [{
        "measure": f"`attnviz attribute`, {n_prompt}-token prompt, {theirs.size} zero ablations "
                   f"+ DLA, {shape}, whole process",
        "baseline": f"{median['transformers']:.2f} s (transformers: import, from_pretrained, "
                    f"{theirs.size} hooked forwards, np.save)",
        "attnviz": f"{median['ours']:.2f} s (effects max diff {diff:.1e})",
        "ratio": f"{ratio:.2f}x its time", "target": "<= 0.3x",
        "met": ratio <= 0.3 and diff < 1e-3,
    }]


def main(argv: list[str] | None = None) -> int:
    return run_standalone(bench_attribute, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
