"""`attnviz why` benchmark (issue 41): a 100-token prompt, one head of the last layer (the
most components), `--key all`, the report page and the whole split written as .npz,
GPT-2-small shape (random weights saved by transformers as a GPT2LMHeadModel), whole
process, against a transformers script that computes the same matrix with hooks: one forward
capturing every head's context (the input of ``c_proj``) and every MLP's output, then the
components frozen through ``ln_1`` and projected in torch, the matrix and the key-side totals
saved with ``np.save``.

Each side is a fresh process, run alternately; both sides' matrices are checked equal.
``bench_why`` returns rows in the format of ``benchmarks/run.py``.

    python benchmarks/why_bench.py [--smoke] [--repeat N]
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from generate_bench import bench_prompt, make_checkpoint, run_standalone, wall  # noqa: E402

TRANSFORMERS = r"""
import sys, numpy as np, torch, transformers
model = transformers.GPT2LMHeadModel.from_pretrained(sys.argv[1], attn_implementation="eager").eval()
ids = torch.tensor([[int(t) for t in open(sys.argv[2]).read().split()]])
layer, head = int(sys.argv[3]), int(sys.argv[4])
n, query = ids.shape[1], ids.shape[1] - 1
nh, d = model.config.n_head, model.config.n_embd
hd = d // nh
blocks = model.transformer.h
seen = {}
for i in range(layer):
    blocks[i].attn.c_proj.register_forward_hook(
        lambda m, args, out, i=i: seen.__setitem__(("context", i), args[0][0].double()))
    blocks[i].mlp.register_forward_hook(
        lambda m, args, out, i=i: seen.__setitem__(("mlp", i), out[0].double()))
with torch.no_grad():
    out = model(ids, output_hidden_states=True, output_attentions=True)
    stream = out.hidden_states[layer][0].double()
    positions = model.transformer.wpe.weight[:n].double()
    components = [out.hidden_states[0][0].double() - positions, positions]
    for i in range(layer):
        w_o = blocks[i].attn.c_proj.weight.double()  # Conv1D: (nh*hd, d)
        context = seen[("context", i)].view(n, nh, hd)
        components += [context[:, h] @ w_o[h * hd:(h + 1) * hd] for h in range(nh)]
        components += [blocks[i].attn.c_proj.bias.double().expand(n, d), seen[("mlp", i)]]
    components = torch.stack(components)  # (C, T, d)
    ln = blocks[layer].ln_1
    sigma = torch.sqrt(stream.var(-1, unbiased=False, keepdim=True) + ln.eps)
    normed = (components - components.mean(-1, keepdim=True)) / sigma * ln.weight.double()
    weight, bias = blocks[layer].attn.c_attn.weight.double(), blocks[layer].attn.c_attn.bias.double()
    q_cols, k_cols = slice(head * hd, (head + 1) * hd), slice(d + head * hd, d + (head + 1) * hd)
    beta = ln.bias.double()
    q_parts = torch.cat([normed[:, query] @ weight[:, q_cols], (beta @ weight[:, q_cols])[None],
                         bias[q_cols][None]]) / hd ** 0.5
    k_parts = torch.cat([normed @ weight[:, k_cols], (beta @ weight[:, k_cols]).expand(1, n, hd),
                         bias[k_cols].expand(1, n, hd)])
    key = int(out.attentions[layer][0, head, query].argmax())
    matrix = q_parts @ k_parts[:, key].T
    totals = torch.einsum("d,ckd->ck", q_parts.sum(0), k_parts)
np.save(sys.argv[5], matrix.numpy())
np.save(sys.argv[6], totals.numpy())
"""


def bench_why(tmp: Path, smoke: bool = False, repeat: int = 5) -> list[dict]:
    import numpy as np

    n_prompt = 16 if smoke else 100
    repeat = 1 if smoke else repeat
    checkpoint = make_checkpoint(tmp / "gpt2-lm", smoke)
    text, _, ids_file = bench_prompt(tmp, n_prompt)
    layer, head = (1, 1) if smoke else (11, 3)
    ours_npz = tmp / "ours.npz"
    ours = [sys.executable, "-c", "import sys; from attnviz.cli import main; sys.argv[0] = "
            "'attnviz'; main()", "why", text, "--weights", str(checkpoint),
            "--head", f"{layer}.{head}", "--query", "-1", "--key", "all", "-o", str(ours_npz),
            "--report", str(tmp / "why.html"), "-q"]
    commands = {
        "transformers": [sys.executable, "-c", TRANSFORMERS, str(checkpoint), str(ids_file),
                         str(layer), str(head), str(tmp / "matrix.npy"), str(tmp / "totals.npy")],
        "ours": ours,
    }
    for cmd in commands.values():
        wall(cmd)  # warm the file cache
    times: dict[str, list[float]] = {name: [] for name in commands}
    for i in range(repeat):
        for name in (list(commands) if i % 2 == 0 else list(commands)[::-1]):
            times[name].append(wall(commands[name]))
    median = {name: statistics.median(t) for name, t in times.items()}
    mine = np.load(ours_npz)
    theirs, totals = np.load(tmp / "matrix.npy"), np.load(tmp / "totals.npy")
    diff = max(float(np.abs(mine["contributions"] - theirs).max() / np.abs(theirs).max()),
               float(np.abs(mine["key_totals"] - totals).max() / np.abs(totals).max()))
    shape = "tiny checkpoint" if smoke else "GPT-2-small shape"
    ratio = median["ours"] / median["transformers"]
    return [{
        "measure": f"`attnviz why --key all --report -o`, {n_prompt}-token prompt, head {layer}.{head} "
                   f"({theirs.shape[0]} x {theirs.shape[0]} contributions), {shape}, whole process",
        "baseline": f"{median['transformers']:.2f} s (transformers: import, from_pretrained, one "
                    f"hooked forward, the projections in torch, np.save)",
        "attnviz": f"{median['ours']:.2f} s (max relative diff {diff:.1e})",
        "ratio": f"{ratio:.2f}x its time", "target": "<= 0.3x",
        "met": ratio <= 0.3 and diff < 1e-5,
    }]


def main(argv: list[str] | None = None) -> int:
    return run_standalone(bench_why, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
