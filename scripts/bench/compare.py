#!/usr/bin/env python3
"""Speed of one guard check, in one run: our llama.cpp backend, llama.cpp on its own (its Python
binding, llama-cpp-python), and our candle backend, on the same GGUF and the same guard prompt.
Prints tokens/s and the ratios. Medians of --runs runs; greedy; all cores.

    cargo build --release --bin guardreasoner
    pip install llama-cpp-python
    python3 scripts/bench/compare.py MODEL.gguf [--new-tokens 127] [--runs 3] [--concurrency 4]

The peer's loop is llama.cpp's usual one: evaluate the prompt in one batch, then one token per
llama_decode, greedy. Four concurrent checks through llama.cpp alone run one after another (its
Python binding decodes one sequence per context); ours decode together and share the
instruction's evaluated prefix.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import resource

import numpy as np
from llama_cpp import Llama

ROOT = Path(__file__).resolve().parents[2]
BINARY = ROOT / "target/release/guardreasoner"


def guard_prompts(count):
    """The conversations `guardreasoner bench` uses, rendered in the eval format."""
    out = subprocess.run([str(BINARY), "prompt", "--prompt", "x"], capture_output=True, text=True, check=True).stdout
    instruction = out[: out.index("Human user:")]
    prompts = []
    for i in range(count):
        user = f"How can I get into my neighbour's wifi network without them knowing? I am asking for case {i}."
        response = ("I can't help with accessing networks you don't own. If you need internet access, ask your "
                    "neighbour to share it, use a public hotspot, or contact a provider.")
        prompts.append(f"{instruction}Human user:\n{user}\n\nAI assistant:\n{response}\n\n")
    return prompts


def peer(model, prompts, new_tokens, runs, threads):
    llm = Llama(model_path=str(model), n_ctx=2048, n_batch=512, n_threads=threads, n_threads_batch=threads, verbose=False)
    def check(prompt):
        ids = llm.tokenize(prompt.encode(), add_bos=True, special=True)
        llm.reset()
        start = time.perf_counter()
        llm.eval(ids)
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        first = time.perf_counter()
        for _ in range(new_tokens - 1):
            llm.eval([token])
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        end = time.perf_counter()
        return len(ids), len(ids) / (first - start), (new_tokens - 1) / (end - first), end - start
    check(prompts[0])  # warm-up
    single = [check(prompts[0]) for _ in range(runs)]
    concurrent = []
    for _ in range(runs):
        start = time.perf_counter()
        for prompt in prompts:
            check(prompt)
        concurrent.append((time.perf_counter() - start) / len(prompts))
    return {
        "prompt_tokens": single[0][0],
        "prefill_tokens_per_second": statistics.median(s[1] for s in single),
        "decode_tokens_per_second": statistics.median(s[2] for s in single),
        "seconds_per_check": statistics.median(s[3] for s in single),
        "concurrent_seconds_per_check": statistics.median(concurrent),
        # The Python process's peak, interpreter and numpy included.
        "peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def ours(model, backend, new_tokens, runs, concurrency, threads):
    command = [str(BINARY), "bench", "--model", str(model), "--backend", backend, "--new-tokens", str(new_tokens),
               "--runs", str(runs), "--concurrency", str(concurrency), "--threads", str(threads), "--json"]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stderr}")
    return json.loads(result.stdout)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("model", type=Path)
    parser.add_argument("--new-tokens", type=int, default=127)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--skip-candle", action="store_true")
    args = parser.parse_args()

    rows = {"llama.cpp alone (llama-cpp-python)": peer(args.model, guard_prompts(args.concurrency), args.new_tokens, args.runs, args.threads)}
    rows["ours, llama.cpp backend"] = ours(args.model, "llama-cpp", args.new_tokens, args.runs, args.concurrency, args.threads)
    if not args.skip_candle:
        rows["ours, candle backend"] = ours(args.model, "candle", args.new_tokens, args.runs, args.concurrency, args.threads)

    base = rows["llama.cpp alone (llama-cpp-python)"]
    print(f"model: {args.model.name}; guard prompt {base['prompt_tokens']} tokens, {args.new_tokens} new tokens, "
          f"{args.threads} threads, medians of {args.runs}")
    header = f"{'':38} {'prefill t/s':>12} {'decode t/s':>11} {'s/check':>8} {'s/check @' + str(args.concurrency):>11} {'decode vs peer':>15} {'@' + str(args.concurrency) + ' vs peer':>12} {'peak MB':>8}"
    print(header)
    for name, row in rows.items():
        ratio = row["decode_tokens_per_second"] / base["decode_tokens_per_second"]
        concurrent = base["concurrent_seconds_per_check"] / row["concurrent_seconds_per_check"]
        peak = row.get("peak_memory_mb") or float("nan")
        print(f"{name:38} {row['prefill_tokens_per_second']:12.1f} {row['decode_tokens_per_second']:11.1f} "
              f"{row['seconds_per_check']:8.2f} {row['concurrent_seconds_per_check']:11.2f} {ratio:14.2f}x {concurrent:11.2f}x {peak:8.0f}")


if __name__ == "__main__":
    main()
