#!/usr/bin/env python3
"""Speed of one guard check, in one run: our llama.cpp backend, llama.cpp on its own (its Python
binding, llama-cpp-python), and our candle backend, on the same GGUF and the same guard prompt.
Prints tokens/s and the ratios: medians of --runs rounds, each running every runner once in turn
(so that a slow spell of the machine falls on all of them); greedy; all cores; the same
flash-attention setting on both llama.cpp runners.

    cargo build --release --bin guardreasoner
    scripts/bench/install-peer        # llama-cpp-python 0.3.36 from source, our C/C++ flags
    python3 scripts/bench/compare.py MODEL.gguf [--new-tokens 127] [--runs 5] [--concurrency 4] [--flash-attention off|on]

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
import llama_cpp
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


class Peer:
    """llama.cpp alone, loaded once and measured once per round."""

    def __init__(self, model, prompts, new_tokens, threads, flash_attention):
        self.llm = Llama(model_path=str(model), n_ctx=2048, n_batch=512, n_threads=threads,
                         n_threads_batch=threads, flash_attn=flash_attention, verbose=False)
        self.prompts, self.new_tokens = prompts, new_tokens
        self.check(prompts[0])  # warm-up

    def check(self, prompt):
        llm = self.llm
        ids = llm.tokenize(prompt.encode(), add_bos=True, special=True)
        llm.reset()
        start = time.perf_counter()
        llm.eval(ids)
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        first = time.perf_counter()
        for _ in range(self.new_tokens - 1):
            llm.eval([token])
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        end = time.perf_counter()
        return len(ids), len(ids) / (first - start), (self.new_tokens - 1) / (end - first), end - start

    def round(self):
        prompt_tokens, prefill, decode, seconds = self.check(self.prompts[0])
        start = time.perf_counter()
        for prompt in self.prompts:
            self.check(prompt)
        return {
            "prompt_tokens": prompt_tokens,
            "prefill_tokens_per_second": prefill,
            "decode_tokens_per_second": decode,
            "seconds_per_check": seconds,
            "concurrent_seconds_per_check": (time.perf_counter() - start) / len(self.prompts),
            # The Python process's peak, interpreter and numpy included.
            "peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }


def ours(model, backend, new_tokens, concurrency, threads, flash_attention):
    """One round of `guardreasoner bench` (its own warm-up, then one measurement)."""
    command = [str(BINARY), "bench", "--model", str(model), "--backend", backend, "--new-tokens", str(new_tokens),
               "--runs", "1", "--concurrency", str(concurrency), "--threads", str(threads),
               "--flash-attention", "on" if flash_attention else "off", "--json"]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stderr}")
    return json.loads(result.stdout)


def medians(rounds):
    keys = ["prefill_tokens_per_second", "decode_tokens_per_second", "seconds_per_check",
            "concurrent_seconds_per_check", "peak_memory_mb"]
    row = {}
    for key in keys:
        values = [r[key] for r in rounds if r.get(key) is not None]
        row[key] = statistics.median(values) if values else float("nan")
    row["prompt_tokens"] = rounds[0]["prompt_tokens"]
    return row


def main():
    peer_build = llama_cpp.llama_print_system_info().decode().strip()
    if "AMX" in peer_build:
        sys.exit("error: this llama-cpp-python has ggml's AMX kernels, which die with SIGILL here when GCC 12 "
                 "builds them; rebuild it with scripts/bench/install-peer (our own llama.cpp is built without them)")
    parser = argparse.ArgumentParser()
    parser.add_argument("model", type=Path)
    parser.add_argument("--new-tokens", type=int, default=127)
    parser.add_argument("--runs", type=int, default=5, help="rounds; each runs every runner once, in turn")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--flash-attention", choices=["off", "on"], default="off",
                        help="llama.cpp's fused attention, the same for both llama.cpp runners "
                             "(off: llama-cpp-python's default)")
    parser.add_argument("--skip-candle", action="store_true")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    flash = args.flash_attention == "on"
    runners = {"llama.cpp alone (llama-cpp-python)": Peer(args.model, guard_prompts(args.concurrency), args.new_tokens,
                                                          args.threads, flash).round,
               "ours, llama.cpp backend": lambda: ours(args.model, "llama-cpp", args.new_tokens, args.concurrency,
                                                       args.threads, flash)}
    if not args.skip_candle:
        runners["ours, candle backend"] = lambda: ours(args.model, "candle", args.new_tokens, args.concurrency,
                                                       args.threads, flash)
    # Rounds interleave the runners, so that a slow spell of the machine falls on all of them.
    rounds = {name: [] for name in runners}
    for _ in range(args.runs):
        for name, run in runners.items():
            rounds[name].append(run())
    rows = {name: medians(r) for name, r in rounds.items()}

    base = rows["llama.cpp alone (llama-cpp-python)"]
    # Our binary names the CPU it runs on and what it was built for (`--version`).
    version = subprocess.run([str(BINARY), "--version"], capture_output=True, text=True, check=True).stdout
    line = lambda key: next((l.split(": ", 1)[1] for l in version.splitlines() if l.startswith(key + ": ")), "?")
    print(f"cpu: {line('running on')}, {os.cpu_count()} cores; built for: {line('built for')}")
    print(f"peer's llama.cpp: {peer_build}")
    print(f"model: {args.model.name}; guard prompt {base['prompt_tokens']} tokens, {args.new_tokens} new tokens, "
          f"{args.threads} threads, flash attention {args.flash_attention}, medians of {args.runs} interleaved rounds")
    header = f"{'':38} {'prefill t/s':>12} {'decode t/s':>11} {'s/check':>8} {'s/check @' + str(args.concurrency):>11} {'decode vs peer':>15} {'@' + str(args.concurrency) + ' vs peer':>12} {'peak MB':>8}"
    print(header)
    for name, row in rows.items():
        ratio = row["decode_tokens_per_second"] / base["decode_tokens_per_second"]
        concurrent = base["concurrent_seconds_per_check"] / row["concurrent_seconds_per_check"]
        print(f"{name:38} {row['prefill_tokens_per_second']:12.1f} {row['decode_tokens_per_second']:11.1f} "
              f"{row['seconds_per_check']:8.2f} {row['concurrent_seconds_per_check']:11.2f} {ratio:14.2f}x {concurrent:11.2f}x {row['peak_memory_mb']:8.0f}")
    ours_rounds, peer_rounds = rounds["ours, llama.cpp backend"], rounds["llama.cpp alone (llama-cpp-python)"]
    per_round = [o["decode_tokens_per_second"] / p["decode_tokens_per_second"] for o, p in zip(ours_rounds, peer_rounds)]
    print("decode, ours / llama.cpp alone, round by round: " + ", ".join(f"{r:.3f}" for r in per_round)
          + f" (median {statistics.median(per_round):.3f})")


if __name__ == "__main__":
    main()
