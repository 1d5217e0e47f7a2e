#!/usr/bin/env python3
"""Writes a Llama-3.2-1B-shaped GGUF with random weights and the real Llama 3 tokenizer, then
quantizes it to Q4_K_M with llama.cpp (through llama-cpp-python's binding of llama_model_quantize).
Its speed is what a GuardReasoner-1B user gets; its outputs are noise.

    pip install gguf numpy llama-cpp-python
    scripts/fetch-test-model      # the Llama 3 tokenizer
    python3 scripts/bench/make_llama1b_gguf.py   # prints the Q4_K_M path
"""
import ctypes
import json
import os
import sys
from pathlib import Path

import gguf
import numpy as np

CACHE = Path(os.environ.get("GUARDREASONER_MODELS_DIR", Path.home() / ".cache/guardreasoner/models"))
OUT = CACHE / "bench"
TOKENIZER = CACHE / "llama3-tokenizer/tokenizer.json"

# Llama-3.2-1B.
HIDDEN, LAYERS, HEADS, KV_HEADS, FFN = 2048, 16, 32, 8, 8192
HEAD_DIM = HIDDEN // HEADS


def tokenizer_parts():
    data = json.loads(TOKENIZER.read_text())
    vocab = dict(data["model"]["vocab"])
    special = {t["content"]: t["id"] for t in data["added_tokens"]}
    vocab.update(special)
    size = max(vocab.values()) + 1
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [gguf.TokenType.NORMAL] * size
    for token, index in vocab.items():
        tokens[index] = token
        if token in special:
            types[index] = gguf.TokenType.CONTROL
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    return tokens, types, merges


def write_f16(path):
    tokens, types, merges = tokenizer_parts()
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("llama-3.2-1b-shaped-random")
    writer.add_context_length(131072)
    writer.add_embedding_length(HIDDEN)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_dimension_count(HEAD_DIM)
    writer.add_rope_freq_base(500000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("llama-bpe")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(128000)
    writer.add_eos_token_id(128009)
    writer.add_add_bos_token(True)

    rng = np.random.default_rng(0)
    def matrix(rows, cols):
        return (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02).astype(np.float16)
    writer.add_tensor("token_embd.weight", matrix(len(tokens), HIDDEN))
    # Llama 3 RoPE scaling as llama.cpp stores it: a divisor per frequency.
    inv = 1.0 / 500000.0 ** (np.arange(0, HEAD_DIM, 2) / HEAD_DIM)
    wavelen = 2 * np.pi / inv
    factors = np.where(wavelen > 8192, 32.0, np.where(wavelen < 2048, 1.0, 32.0 / (1 + 31 * (8192 / wavelen - 1) / 3)))
    writer.add_tensor("rope_freqs.weight", factors.astype(np.float32))
    for layer in range(LAYERS):
        b = f"blk.{layer}"
        writer.add_tensor(f"{b}.attn_norm.weight", np.ones(HIDDEN, dtype=np.float32))
        writer.add_tensor(f"{b}.attn_q.weight", matrix(HEADS * HEAD_DIM, HIDDEN))
        writer.add_tensor(f"{b}.attn_k.weight", matrix(KV_HEADS * HEAD_DIM, HIDDEN))
        writer.add_tensor(f"{b}.attn_v.weight", matrix(KV_HEADS * HEAD_DIM, HIDDEN))
        writer.add_tensor(f"{b}.attn_output.weight", matrix(HIDDEN, HEADS * HEAD_DIM))
        writer.add_tensor(f"{b}.ffn_norm.weight", np.ones(HIDDEN, dtype=np.float32))
        writer.add_tensor(f"{b}.ffn_gate.weight", matrix(FFN, HIDDEN))
        writer.add_tensor(f"{b}.ffn_up.weight", matrix(FFN, HIDDEN))
        writer.add_tensor(f"{b}.ffn_down.weight", matrix(HIDDEN, FFN))
    writer.add_tensor("output_norm.weight", np.ones(HIDDEN, dtype=np.float32))
    # No output.weight: tied embeddings, as in Llama-3.2-1B.
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def quantize(source, target):
    import llama_cpp
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
    params.nthread = os.cpu_count() or 1
    status = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params))
    if status != 0:
        sys.exit(f"llama_model_quantize failed ({status})")


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    f16 = OUT / "llama-3.2-1b-shaped.f16.gguf"
    q4 = OUT / "llama-3.2-1b-shaped.Q4_K_M.gguf"
    if not q4.exists():
        if not f16.exists():
            write_f16(f16)
        quantize(f16, q4)
        f16.unlink()
    print(q4)


if __name__ == "__main__":
    main()
