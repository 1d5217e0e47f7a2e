#!/usr/bin/env python3
"""Writes crates/data/data/manifest.json: every file `guardreasoner data fetch` downloads, with its
public origin, size and SHA-256, computed from a local copy of the data laid out as the cache is
(benchmarks/benchmark, benchmarks/wildguardtest, benchmarks/test).

    python3 scripts/data/make_manifest.py ../shared/data > crates/data/data/manifest.json
"""
import hashlib
import json
import sys
from pathlib import Path

GUARDREASONER = "https://raw.githubusercontent.com/yueliu1999/GuardReasoner/bb7e686dc0535884d6994de5f950a072772e7fe2/data/"
WILDGUARDTEST = "https://raw.githubusercontent.com/sharzilnfz/llmSafetyClassification/ff7f31b8d46fe09fbb5f82a4b805864048e0c2ef/data/wildguardtest.parquet"


def entry(root, relative, group, url):
    data = (root / relative).read_bytes()
    return {"path": relative, "group": group, "url": url, "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest()}


def main():
    root = Path(sys.argv[1])
    files = []
    for path in sorted((root / "benchmarks/benchmark").glob("*.json")):
        relative = path.relative_to(root).as_posix()
        files.append(entry(root, relative, "benchmarks", GUARDREASONER + "benchmark/" + path.name))
    files.append(entry(root, "benchmarks/wildguardtest/wildguardtest.parquet", "benchmarks", WILDGUARDTEST))
    for path in sorted((root / "benchmarks/test").glob("*/*/generated_predictions.jsonl")):
        relative = path.relative_to(root).as_posix()
        origin = GUARDREASONER + path.relative_to(root / "benchmarks").as_posix()
        files.append(entry(root, relative, "outputs", origin))
    json.dump({"files": files}, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
