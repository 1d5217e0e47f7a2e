#!/usr/bin/env python3
"""R-SFT step speed and peak memory: our trainer against PyTorch's eager trainer (transformers'
Llama, torch.optim.AdamW), side by side on the same machine, the same model shape (random weights),
the same sequence length and batch, f32 on the CPU (or bf16 and f32 on a GPU).

Rounds alternate between the two (each round a fresh process that runs warm-up steps, then timed
steps), so that both see the same machine state; the table gives medians and the ratio.

    ~/.venvs/ref/bin/python scripts/bench/train_compare.py --shape smollm2-135m --length 256 \
        --rounds 3 --steps 4 [--device cuda --dtype bf16] [--ours PATH]

Our side is the example `sft_step_bench` (built by this script unless --ours names a binary).
"""
import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SHAPES = {
    "smollm2-135m": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, head_dim=64, rope_theta=100000.0,
                         tie_word_embeddings=True, rms_norm_eps=1e-5, max_position_embeddings=8192),
    "llama-3.2-1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=64, rope_theta=500000.0,
                         tie_word_embeddings=True, rms_norm_eps=1e-5, max_position_embeddings=131072,
                         rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                       "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
}
PROMPT = 16  # the first 16 positions are prompt: no loss there, on both sides


def torch_worker(args):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    device = torch.device(args.device)
    config = LlamaConfig(**SHAPES[args.shape], attn_implementation=args.attn)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(device=device, dtype=dtype).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.0)
    vocab, n = config.vocab_size, args.length
    ids = torch.tensor([[(t * 7919 + b * 104729 + 13) % vocab for t in range(n + 1)] for b in range(args.batch)],
                       device=device)
    labels = ids.clone()
    labels[:, : PROMPT + 1] = -100
    parameters = sum(p.numel() for p in model.parameters())
    sync = (lambda: torch.cuda.synchronize()) if device.type == "cuda" else (lambda: None)
    for step in range(args.steps):
        sync()
        start = time.perf_counter()
        # n input tokens predict the next n; transformers' own loss (it shifts the labels itself).
        loss = model(ids[:, : n + 1], labels=labels).loss
        sync()
        forward = time.perf_counter() - start
        loss.backward()
        sync()
        backward = time.perf_counter() - start - forward
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        total = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        gpu_peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
        print(json.dumps({
            "impl": "pytorch", "shape": args.shape, "device": args.device, "dtype": args.dtype,
            "parameters": parameters, "length": n, "batch": args.batch, "step": step, "loss": round(loss.item(), 5),
            "forward_s": round(forward, 4), "backward_s": round(backward, 4),
            "optimizer_s": round(total - forward - backward, 4), "step_s": round(total, 4),
            "tokens_per_s": round(args.batch * n / total, 2), "peak_rss_mib": round(peak),
            "gpu_peak_mib": gpu_peak, "torch": torch.__version__, "attn": args.attn,
        }), flush=True)


def run(command):
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{command[0]} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", default="smollm2-135m", choices=sorted(SHAPES))
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=4, help="steps per round; the first is warm-up")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="f32", choices=["f32", "bf16"], help="PyTorch's dtype (bf16: the whole model and AdamW's state in bf16); ours runs --precision of the same name (bf16: mixed, projections in bf16 over f32 master weights, so more f32 work than PyTorch's)")
    parser.add_argument("--ours", help="the sft_step_bench binary (default: build it)")
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"],
                        help="transformers' attention implementation (sdpa is its default)")
    parser.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.torch_worker:
        torch_worker(args)
        return
    ours = args.ours
    if not ours:
        subprocess.run(["cargo", "build", "--release", "--locked", "-p", "guardreasoner-train", "--example",
                        "sft_step_bench"], cwd=ROOT, check=True)
        ours = str(ROOT / "target/release/examples/sft_step_bench")
    common = ["--shape", args.shape, "--length", str(args.length), "--steps", str(args.steps), "--batch",
              str(args.batch)]
    rows = {"guardreasoner": [], "pytorch": []}
    for round_ in range(args.rounds):
        for name in ("guardreasoner", "pytorch"):
            if name == "guardreasoner":
                lines = run([ours, *common, "--device", args.device, "--precision", args.dtype])
            else:
                lines = run([sys.executable, __file__, "--torch-worker", *common, "--device", args.device,
                             "--dtype", args.dtype, "--attn", args.attn])
            rows[name].extend(lines[1:])  # the first step of a process warms up
            last = lines[-1]
            print(f"round {round_ + 1} {name}: {last['tokens_per_s']} tokens/s, peak {last['peak_rss_mib']} MiB",
                  file=sys.stderr)
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")),
               platform.processor())
    print(f"\n{args.shape}, {args.length} tokens x batch {args.batch}, {args.device}, CPU {cpu}, "
          f"{os.cpu_count()} threads; medians over {args.rounds} rounds x {args.steps - 1} timed steps\n")
    print("| | tokens/s | forward s | backward s | optimizer s | peak RSS MiB |")
    print("|---|---|---|---|---|---|")
    summary = {}
    for name, lines in rows.items():
        med = {k: statistics.median(l[k] for l in lines) for k in
               ("tokens_per_s", "forward_s", "backward_s", "optimizer_s")}
        med["peak_rss_mib"] = max(l["peak_rss_mib"] for l in lines)
        summary[name] = med
        label = (f"guardreasoner ({args.dtype})" if name == "guardreasoner"
                 else f"PyTorch {lines[0].get('torch', '')} eager, {args.attn} attention ({args.dtype})")
        print(f"| {label} | {med['tokens_per_s']:.1f} | {med['forward_s']:.3f} | {med['backward_s']:.3f} | "
              f"{med['optimizer_s']:.3f} | {med['peak_rss_mib']:.0f} |")
    ratio = summary["guardreasoner"]["tokens_per_s"] / summary["pytorch"]["tokens_per_s"]
    memory = summary["guardreasoner"]["peak_rss_mib"] / summary["pytorch"]["peak_rss_mib"]
    print(f"\nours / PyTorch: {ratio:.2f}x tokens/s, {memory:.2f}x peak memory")


if __name__ == "__main__":
    main()
