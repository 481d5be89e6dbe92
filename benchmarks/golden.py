"""Byte-identical check for refactors: run a fixed set of commands, hash every file and stdout.

    python benchmarks/golden.py record golden.json    # before a move
    python benchmarks/golden.py check golden.json     # after it: lists every output that changed

Covers random-mode GPT-2, a GPT-2 checkpoint saved by transformers, a Llama-family and a
Gemma 2 fixture checkpoint (built once into --fixtures, seeded, so reruns reuse them), and the
commands heatmap, compare-heads (table/JSON/CSV), tokens, export, steps, report, scan,
generate, attribute and a short train. Commands run in-process (Typer's CliRunner), each in
its own output folder under a fixed root, so the paths printed are the same on every run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

TEXT = "When Mary and John went to the store, John gave a drink to"
PROMPTS = "The cat sat on the mat. The cat sat on the mat.\nOne two three four one two three four\n"


def fixtures(root: Path) -> dict[str, Path]:
    from helpers import make_family_checkpoint, make_hf_checkpoint, write_bpe_tokenizer

    root.mkdir(parents=True, exist_ok=True)
    made = {"gpt2": root / "gpt2", "llama": root / "llama", "gemma": root / "gemma2"}
    if not made["gpt2"].exists():
        make_hf_checkpoint(made["gpt2"], n_layer=3, n_head=4, n_embd=64, lm_head=True)
    if not made["llama"].exists():
        make_family_checkpoint(made["llama"], "llama")
    if not made["gemma"].exists():
        import torch
        import transformers

        config = transformers.Gemma2Config(
            vocab_size=300, max_position_embeddings=2048, pad_token_id=None, bos_token_id=None,
            eos_token_id=None, hidden_size=64, intermediate_size=128, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16, num_hidden_layers=4,
            sliding_window=6, attn_logit_softcapping=20.0)
        torch.manual_seed(3)
        model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "q_norm" in name or "k_norm" in name:
                    param.uniform_(1.0, 2.0)
                elif "norm" in name:
                    param.uniform_(-0.3, 0.3)
                else:
                    param.normal_(0.0, 0.25)
        model.save_pretrained(made["gemma"])
        write_bpe_tokenizer(made["gemma"], vocab_size=300, bos="<bos>")
    (root / "prompts.txt").write_text(PROMPTS)
    return made


def commands(fx: dict[str, Path], prompts: Path) -> dict[str, list[str]]:
    small = ["--heads", "4", "--d-model", "32"]
    runs = {
        "random-heatmap": ["heatmap", TEXT, "--out", "{out}"],
        "random-heatmap-small-lines": ["heatmap", TEXT, *small, "--view", "lines", "--out", "{out}"],
        "random-heatmap-svg": ["heatmap", "Your journey starts", *small, "--image-format", "svg",
                               "--head", "1", "--out", "{out}"],
        "random-compare-table": ["compare-heads", TEXT],
        "random-compare-json": ["compare-heads", TEXT, "--format", "json"],
        "random-compare-csv": ["compare-heads", TEXT, "--format", "csv"],
        "random-compare-similarity": ["compare-heads", TEXT, "--similarity", "--plot", "{out}/pair.png",
                                      "--head", "1", "--head", "7"],
        "random-tokens": ["tokens", "Hello,  world! naïve 東京"],
        "random-export": ["export", TEXT, *small, "-o", "{out}/w.npz", "--include-params"],
        "random-steps": ["steps", TEXT, "--head", "3", "-o", "{out}/steps.png"],
        "random-report": ["report", TEXT, *small, "-o", "{out}/report.html"],
        "random-scan": ["scan", "--file", str(prompts), *small, "--plot", "{out}/maps"],
        "random-scan-json": ["scan", "--file", str(prompts), *small, "--format", "json"],
    }
    for name, folder in fx.items():
        w = ["--weights", str(folder)]
        runs |= {
            f"{name}-heatmap-all": ["heatmap", TEXT, *w, "--layer", "all", "--out", "{out}"],
            f"{name}-heatmap-norm": ["heatmap", TEXT, *w, "--weighting", "norm", "--out", "{out}"],
            f"{name}-heatmap-rollout": ["heatmap", TEXT, *w, "--view", "rollout", "--out", "{out}"],
            f"{name}-compare-json": ["compare-heads", TEXT, *w, "--layer", "all", "--format", "json"],
            f"{name}-compare-csv": ["compare-heads", TEXT, *w, "--format", "csv"],
            f"{name}-compare-table": ["compare-heads", TEXT, *w, "--layer", "1"],
            f"{name}-export": ["export", TEXT, *w, "--layer", "all", "-o", "{out}/w.npz"],
            f"{name}-steps": ["steps", TEXT, *w, "--layer", "1", "--head", "1", "-o", "{out}/steps.png"],
            f"{name}-report": ["report", TEXT, *w, "--layer", "all", "-o", "{out}/report.html"],
            f"{name}-scan": ["scan", "--file", str(prompts), *w, "--layer", "all", "--format", "json",
                             "--plot", "{out}/maps"],
            f"{name}-generate": ["generate", "The cat sat", *w, "-n", "4", "--out", "{out}/gen",
                                 "--format", "json", "-o", "{out}/gen.npz"],
            f"{name}-attribute": ["attribute", TEXT, *w, "--plot", "{out}/maps", "--format", "json"],
        }
    runs["train"] = ["train", "--out", "{out}/run", "--steps", "4", "--snapshot-every", "2",
                     "--batch-size", "4", "--format", "json"]
    return runs


# wall-clock times, the only parts of an output that may differ from run to run
SECONDS = re.compile(rb'"seconds": [0-9.]+|, [0-9]+\.[0-9] s\b')


def digest(data: bytes) -> str:
    return hashlib.sha256(SECONDS.sub(b"<time>", data)).hexdigest()[:16]


def run_all(fixture_root: Path, out_root: Path) -> dict[str, dict[str, str]]:
    from typer.testing import CliRunner

    from attnviz.cli import app

    fx = fixtures(fixture_root)
    shutil.rmtree(out_root, ignore_errors=True)
    runner = CliRunner()
    hashes: dict[str, dict[str, str]] = {}
    for name, args in commands(fx, fixture_root / "prompts.txt").items():
        out = out_root / name
        out.mkdir(parents=True)
        args = [a.replace("{out}", str(out)) for a in args]
        result = runner.invoke(app, args, env={"COLUMNS": "120"})
        entry = {"exit": str(result.exit_code), "stdout": digest(result.stdout.encode())}
        for path in sorted(p for p in out.rglob("*") if p.is_file()):
            if path.name in {"training_state.pt"}:  # torch.save: holds no output of ours
                continue
            entry[str(path.relative_to(out))] = digest(path.read_bytes())
        hashes[name] = entry
        (out_root / f"{name}.stdout.txt").write_text(result.stdout)  # to read what changed
        print(f"{name}: exit {result.exit_code}, {len(entry) - 2} files", file=sys.stderr)
    return hashes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["record", "check"])
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--fixtures", type=Path, default=Path("/tmp/attnviz-golden-fixtures"))
    parser.add_argument("--outputs", type=Path, default=Path("/tmp/attnviz-golden-out"))
    args = parser.parse_args()
    hashes = run_all(args.fixtures, args.outputs)
    if args.mode == "record":
        args.manifest.write_text(json.dumps(hashes, indent=1, sort_keys=True))
        print(f"recorded {sum(len(v) for v in hashes.values())} hashes in {args.manifest}")
        return 0
    old = json.loads(args.manifest.read_text())
    changed = [f"{cmd}: {key}" for cmd in sorted(set(old) | set(hashes))
               for key in sorted(set(old.get(cmd, {})) | set(hashes.get(cmd, {})))
               if old.get(cmd, {}).get(key) != hashes.get(cmd, {}).get(key)]
    for line in changed:
        print("changed:", line)
    print(f"{len(changed)} of {sum(len(v) for v in old.values())} outputs changed")
    return 1 if changed else 0


if __name__ == "__main__":
    sys.exit(main())
