#!/usr/bin/env python3
"""Serving load test: our server against llama.cpp's own `llama-server`, in one run, on loopback.

Both serve the same GGUF with the same number of parallel slots (continuous batching; llama-server
with `cache_prompt`, ours with its shared-prefix cache), flash attention off, the same threads.
For each concurrency, rounds alternate between the two (so a slow spell of the machine falls on
both); in a round, `concurrency` clients send real guard conversations from the benchmarks (each
request a fresh one, rendered in the eval format, so only the instruction is reusable) to
llama-server's `/v1/completions` as the rendered prompt, and to ours as the conversation on the
guard endpoint `/v1/guard` (which renders it, checks it and parses the verdict: the work a guard
deployment asks of us; `--ours-endpoint completions` sends ours the rendered prompt instead),
streaming, greedy, a fixed number of new tokens (`ignore_eos` on both), for a fixed time. A request in flight at the deadline is awaited and counted. Prints checks/s, p50/p99
latency and p50/p99 time to first token per server and concurrency, the ratios, 5xx counts, each
server's CPU time per check and per prompt character (user + system time of its process over its
rounds: steadier than checks/s where the cores are shared with other tenants, and the second does
not depend on which long or short conversations a server happened to finish), and our server's memory before and after
its rounds; writes them as JSON and an SVG chart.

Then an overflow phase against ours alone, with a small queue: more clients than slots plus
queue, to show that overflow is answered at once with 429 and `Retry-After`, and that every
accepted request is answered.

    cargo build --release --bin guardreasoner
    scripts/bench/build-llama-server
    python3 scripts/bench/serve_load.py MODEL.gguf [--parallel 4] [--new-tokens 64] \
        [--seconds 20] [--concurrency 1,4,16] [--rounds 2] [--out docs/serving-load] [--peer PATH]

`--peer $(scripts/bench/build-llama-server --engine)` runs llama-server's own sources over the
llama.cpp our engine binds (kernels, graph, KV cache), so that only the servers differ.

It stops by itself: every phase is bounded in time, both servers are stopped at the end.
"""
import argparse
import http.client
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OURS = ROOT / "target/release/guardreasoner"
PEER = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "guardreasoner/peers/llama-server"
BENCHMARKS = ROOT.parent / "shared/data/benchmarks/benchmark"


HUMAN, ASSISTANT, NO_RESPONSE = "Human user:\n", "\n\nAI assistant:\n", "None"


def conversation(block):
    """The input block read back into `{prompt, response?}`, as `Conversation::from_input_block`."""
    body = block[len(HUMAN):-2] if block.startswith(HUMAN) and block.endswith("\n\n") else None
    if body is None or ASSISTANT not in body:
        sys.exit(f"error: not an input block: {block[:80]!r}")
    prompt, response = body.split(ASSISTANT, 1)
    return {"prompt": prompt} if response == NO_RESPONSE else {"prompt": prompt, "response": response}


def prompts():
    """Guard conversations from every benchmark file, shuffled with a fixed seed: each as its
    rendered prompt (eval format, what llama-server is sent) and as the conversation."""
    out = []
    for path in sorted(BENCHMARKS.glob("*.json")):
        for record in json.loads(path.read_text()):
            out.append((record["instruction"] + "\n" + record["input"], conversation(record["input"])))
    if not out:
        sys.exit(f"error: no benchmark files under {BENCHMARKS}")
    random.Random(0).shuffle(out)
    return out


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, name, command, port, health):
        self.name, self.port, self.health = name, port, health
        self.log = open(f"/tmp/serve_load_{name}.log", "w")
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.process.poll() is not None:
                sys.exit(f"error: {name} exited; see {self.log.name}")
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                connection.request("GET", health)
                if connection.getresponse().status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        sys.exit(f"error: {name} did not become ready; see {self.log.name}")

    def rss_mib(self):
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def cpu_seconds(self):
        """User + system CPU time of the server process (all its threads) so far. Unlike the wall
        clock, it does not count the time the process waits while another tenant of a shared
        machine holds the cores, so its ratio between servers is steadier than checks/s."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def one_request(port, text, new_tokens, extra):
    """Streams one check; returns (status, latency, time to first token, headers). `text` is the
    rendered prompt and the conversation; `extra["endpoint"]` says which the server is sent."""
    rendered, conversation = text
    extra = dict(extra)
    guard = extra.pop("endpoint", "completions") == "guard"
    if guard:
        path = "/v1/guard"
        body = {**conversation, "max_new_tokens": new_tokens, "ignore_eos": True, "stream": True}
    else:
        path = "/v1/completions"
        body = {"prompt": rendered, "max_tokens": new_tokens, "temperature": 0, "ignore_eos": True, "stream": True,
                **extra}
    started = time.perf_counter()
    first = None
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    connection.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    response = connection.getresponse()
    if response.status != 200:
        response.read()
        return response.status, time.perf_counter() - started, None, dict(response.getheaders())
    status, event = 200, None
    for raw in response:
        line = raw.decode("utf-8", "replace").strip()
        if line.startswith("event: "):
            event = line[7:]
            continue
        if not line.startswith("data: "):
            continue
        data = line[6:]
        if data == "[DONE]":
            break
        chunk = json.loads(data)
        if guard:
            if event == "token" and first is None and chunk.get("text"):
                first = time.perf_counter() - started
            elif event == "error":
                status = 500
            elif event == "verdict":
                # A verdict is a check answered; one without labels would be an error object.
                status = 200 if "labels" in chunk else 500
                break
        elif first is None and any(c.get("text") for c in chunk.get("choices", [])):
            first = time.perf_counter() - started
    connection.close()
    return status, time.perf_counter() - started, first, {}


def load(server, texts, counter, concurrency, seconds, new_tokens, extra, requests=None):
    """`concurrency` clients for `seconds`, or (with `requests`) until that many prompts from
    `counter` on have been sent, however long they take; every request's outcome."""
    results, lock = [], threading.Lock()
    deadline = time.perf_counter() + seconds
    end = counter[0] + requests if requests else None

    def client():
        # Timed: until the deadline. Counted: until the prompts run out (decided under the lock).
        while end is not None or time.perf_counter() < deadline:
            with lock:
                if end is not None and counter[0] >= end:
                    break
                prompt = texts[counter[0] % len(texts)]
                counter[0] += 1
            try:
                outcome = one_request(server.port, prompt, new_tokens, extra)
            except OSError as error:
                outcome = (0, 0.0, None, {"error": str(error)})
            with lock:
                # The prompt's length rides along: the work a check costs is mostly its prefill.
                results.append((*outcome, len(prompt[0])))

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, time.perf_counter() - started


def percentile(values, q):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def summary(results, elapsed):
    ok = [r for r in results if r[0] == 200]
    latencies = [r[1] for r in ok]
    ttfts = [r[2] for r in ok if r[2] is not None]
    return {
        "requests": len(results),
        "ok": len(ok),
        "5xx": sum(1 for r in results if r[0] >= 500),
        "errors": sum(1 for r in results if r[0] == 0),
        "checks_per_s": len(ok) / elapsed,
        "prompt_chars": sum(r[4] for r in ok),
        "p50_s": percentile(latencies, 50),
        "p99_s": percentile(latencies, 99),
        "ttft_p50_s": percentile(ttfts, 50),
        "ttft_p99_s": percentile(ttfts, 99),
    }


def merge(rounds):
    """Checks/s summed over rounds' time; latency percentiles over all requests."""
    results = [r for rs, _ in rounds for r in rs]
    elapsed = sum(e for _, e in rounds)
    return summary(results, elapsed)


def overflow(model, args, texts):
    """Ours alone with a queue of 2: more clients than it can hold; every answer is 200 or 429."""
    port = free_port()
    server = Server("ours-overflow", [str(OURS), "serve", "--model", model, "--parallel", str(args.parallel),
                                      "--queue", "2", "--max-new-tokens", str(args.new_tokens), "--context", "4096",
                                      "--flash-attention", "off", "--addr", f"127.0.0.1:{port}"]
                    + (["--threads", str(args.threads)] if args.threads else []), port, "/health")
    counter = [0]
    clients = args.parallel + 2 + 8
    results, elapsed = load(server, texts, counter, clients, 5, args.new_tokens, {"endpoint": args.ours_endpoint})
    server.stop()
    statuses = {}
    for status, *_ in results:
        statuses[status] = statuses.get(status, 0) + 1
    rejected = [r for r in results if r[0] == 429]
    return {
        "clients": clients,
        "statuses": statuses,
        "rejected_with_retry_after": sum(1 for r in rejected if r[3].get("retry-after") or r[3].get("Retry-After")),
        "rejected_max_latency_s": max((r[1] for r in rejected), default=0.0),
    }


def chart(report, path):
    """Checks/s per concurrency, ours beside llama-server's, as an SVG bar chart."""
    levels = [row["concurrency"] for row in report["rows"]]
    top = max(max(r["ours"]["checks_per_s"], r["peer"]["checks_per_s"]) for r in report["rows"]) or 1
    width, height, left, bottom = 120 + 140 * len(levels), 320, 60, 40
    bar = 40
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
             f'<text x="{width / 2}" y="18" text-anchor="middle" font-size="14">checks/s ({report["new_tokens"]} new tokens, {report["parallel"]} slots)</text>']
    for i, row in enumerate(report["rows"]):
        x0 = left + 20 + i * 140
        for j, (name, colour) in enumerate((("ours", "#2b6cb0"), ("peer", "#c05621"))):
            value = row[name]["checks_per_s"]
            h = (height - bottom - 40) * value / top
            x = x0 + j * (bar + 6)
            parts.append(f'<rect x="{x}" y="{height - bottom - h}" width="{bar}" height="{h}" fill="{colour}"/>')
            parts.append(f'<text x="{x + bar / 2}" y="{height - bottom - h - 4}" text-anchor="middle">{value:.2f}</text>')
        parts.append(f'<text x="{x0 + bar + 3}" y="{height - bottom + 16}" text-anchor="middle">{row["concurrency"]} clients</text>')
    parts.append(f'<rect x="{width - 170}" y="30" width="12" height="12" fill="#2b6cb0"/><text x="{width - 152}" y="40">guardreasoner serve</text>')
    parts.append(f'<rect x="{width - 170}" y="48" width="12" height="12" fill="#c05621"/><text x="{width - 152}" y="58">llama-server</text>')
    parts.append("</svg>")
    Path(path).write_text("\n".join(parts))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None, help="write OUT.json and OUT.svg")
    parser.add_argument("--requests", type=int, default=None,
                        help="instead of --seconds: the same N prompts to each server per round (equal work: "
                             "wall time and CPU time compare directly)")
    parser.add_argument("--min-chars", type=int, default=0, help="only rendered prompts at least this long")
    parser.add_argument("--max-chars", type=int, default=10**9, help="only rendered prompts at most this long")
    parser.add_argument("--skip", type=int, default=0, help="leave out the first N of the (filtered) conversations")
    parser.add_argument("--ours-args", default="", help="more flags for our server, e.g. '--step-tokens 2048'")
    parser.add_argument("--peer-args", default="", help="more flags for llama-server, e.g. '--batch-size 512'")
    parser.add_argument("--peer", type=Path, default=PEER,
                        help="the llama-server binary (default: scripts/bench/build-llama-server's)")
    parser.add_argument("--ours-endpoint", choices=("guard", "completions"), default="guard",
                        help="send ours conversations on /v1/guard (default) or rendered prompts on /v1/completions")
    args = parser.parse_args()
    for binary in (OURS, args.peer):
        if not binary.exists():
            sys.exit(f"error: {binary} is missing (see this script's usage)")
    texts = [t for t in prompts() if args.min_chars <= len(t[0]) <= args.max_chars][args.skip:]
    if not texts:
        sys.exit("error: no conversation within --min-chars and --max-chars")
    model = str(Path(args.model).resolve())
    threads = ["--threads", str(args.threads)] if args.threads else []
    ours_port, peer_port = free_port(), free_port()
    ours = Server("ours", [str(OURS), "serve", "--model", model, "--parallel", str(args.parallel), "--queue", "256",
                           "--max-new-tokens", str(args.new_tokens), "--context", "4096", "--flash-attention", "off",
                           "--addr", f"127.0.0.1:{ours_port}"] + threads + args.ours_args.split(), ours_port, "/health")
    peer = Server("peer", [str(args.peer), "-m", model, "--parallel", str(args.parallel), "-c", str(4096 * args.parallel),
                           "--cont-batching", "-fa", "off", "--host", "127.0.0.1", "--port", str(peer_port),
                           "-n", str(args.new_tokens)] + threads + args.peer_args.split(), peer_port, "/health")
    report = {"model": model, "parallel": args.parallel, "new_tokens": args.new_tokens, "seconds": args.seconds,
              "rounds": args.rounds, "requests": args.requests, "cpu": cpu_name(), "ours_endpoint": args.ours_endpoint,
              "ours_args": args.ours_args, "peer_args": args.peer_args, "peer": str(args.peer), "rows": []}
    counters = {"ours": [0], "peer": [0]}
    try:
        for concurrency in [int(c) for c in args.concurrency.split(",")]:
            rounds = {"ours": [], "peer": []}
            cpu = {"ours": 0.0, "peer": 0.0}
            memory = []
            for round_index in range(args.rounds):
                order = [("ours", ours, {"endpoint": args.ours_endpoint}), ("peer", peer, {"cache_prompt": True})]
                if round_index % 2:
                    order.reverse()
                for name, server, extra in order:
                    before, cpu_before = ours.rss_mib(), server.cpu_seconds()
                    if args.requests:
                        # Both servers get the same prompts this round.
                        counters[name][0] = (len(report["rows"]) * args.rounds + round_index) * args.requests
                    rounds[name].append(load(server, texts, counters[name], concurrency, args.seconds, args.new_tokens,
                                             extra, args.requests))
                    cpu[name] += server.cpu_seconds() - cpu_before
                    if name == "ours":
                        memory.append((before, ours.rss_mib()))
            row = {"concurrency": concurrency, "ours": merge(rounds["ours"]), "peer": merge(rounds["peer"]),
                   "ours_rss_mib": memory}
            row["ratio_checks"] = row["ours"]["checks_per_s"] / max(row["peer"]["checks_per_s"], 1e-9)
            row["ratio_p99"] = row["ours"]["p99_s"] / max(row["peer"]["p99_s"], 1e-9)
            for name in ("ours", "peer"):
                row[name]["cpu_s"] = cpu[name]
                row[name]["cpu_s_per_check"] = cpu[name] / max(row[name]["ok"], 1)
                # The servers draw the same prompts in the same order but finish different numbers
                # of them, long and short: CPU time per prompt character compares like with like.
                row[name]["cpu_ms_per_1k_chars"] = 1e6 * cpu[name] / max(row[name]["prompt_chars"], 1)
            row["ratio_cpu_per_char"] = row["ours"]["cpu_ms_per_1k_chars"] / max(row["peer"]["cpu_ms_per_1k_chars"], 1e-9)
            report["rows"].append(row)
            print(f"{concurrency:>3} clients: ours {row['ours']['checks_per_s']:.2f} checks/s "
                  f"(p50 {row['ours']['p50_s']:.2f}s p99 {row['ours']['p99_s']:.2f}s ttft p50 {row['ours']['ttft_p50_s']:.2f}s, "
                  f"5xx {row['ours']['5xx']}), llama-server {row['peer']['checks_per_s']:.2f} "
                  f"(p50 {row['peer']['p50_s']:.2f}s p99 {row['peer']['p99_s']:.2f}s ttft p50 {row['peer']['ttft_p50_s']:.2f}s, "
                  f"5xx {row['peer']['5xx']}); ratio {row['ratio_checks']:.2f}x checks/s, "
                  f"{row['ratio_p99']:.2f}x p99, {row['ratio_cpu_per_char']:.2f}x CPU time per prompt character; our RSS {memory[0][0]:.0f} -> {memory[-1][1]:.0f} MiB", flush=True)
    finally:
        ours.stop()
        peer.stop()
    report["overflow"] = overflow(model, args, texts)
    print("overflow (ours, queue 2):", json.dumps(report["overflow"]))
    if args.out:
        Path(args.out + ".json").write_text(json.dumps(report, indent=2) + "\n")
        chart(report, args.out + ".svg")
        print(f"wrote {args.out}.json and {args.out}.svg")


def cpu_name():
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


if __name__ == "__main__":
    main()
