#!/usr/bin/env bash
# `guardreasoner convert` beside llama.cpp's own convert_hf_to_gguf.py on a Llama-3.2-1B-shaped
# checkpoint (1.24 B parameters, bf16, two shards, random weights, the Llama 3 tokenizer): time
# and peak resident memory of each, interleaved, the page cache dropped before each run, and
# whether the files are identical. Then the other types, and loading (candle on the directory,
# llama.cpp on the file, and through the models cache). The page cache is dropped only as root.
#
#     scripts/bench/convert_compare.sh [ROUNDS]
#
# Needs: a release build (cargo build --release), scripts/fetch-test-model (the Llama 3
# tokenizer), a python with torch, transformers and safetensors (PYTHON, default the fixtures
# venv of scripts/fixtures/reference_convert.py), and llama-cpp-python 0.3.36's source
# distribution unpacked (LLAMA_CPP_TREE: its vendor/llama.cpp).
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds="${1:-2}"
bin="$PWD/target/release/guardreasoner"
python="${PYTHON:-$HOME/.cache/guardreasoner/fixtures-venv/bin/python}"
tree="${LLAMA_CPP_TREE:?set LLAMA_CPP_TREE to llama-cpp-python 0.3.36 vendor/llama.cpp}"
work="${WORK:-/tmp/guardreasoner-convert-bench}"
cache="${GUARDREASONER_MODELS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/guardreasoner/models}"
model="$work/Llama-3.2-1B-shaped"
mkdir -p "$work"

if [ ! -f "$model/config.json" ]; then
    "$python" - "$model" "$cache/llama3-tokenizer" <<'PY'
import json, os, shutil, sys, torch
from safetensors.torch import save_file
out, tokenizer = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
c = dict(architectures=["LlamaForCausalLM"], model_type="llama", torch_dtype="bfloat16", vocab_size=128257,
         hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
         num_key_value_heads=8, head_dim=64, rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=True,
         max_position_embeddings=131072,
         rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                       "original_max_position_embeddings": 8192},
         bos_token_id=128000, eos_token_id=[128001, 128008, 128009])
os.makedirs(out, exist_ok=True)
h, i, q, kv = 2048, 8192, 32 * 64, 8 * 64
t = {"model.embed_tokens.weight": torch.randn(c["vocab_size"], h, dtype=torch.bfloat16) * 0.02,
     "model.norm.weight": torch.ones(h, dtype=torch.bfloat16)}
for l in range(c["num_hidden_layers"]):
    p = f"model.layers.{l}"
    for n in ["input_layernorm", "post_attention_layernorm"]:
        t[f"{p}.{n}.weight"] = torch.ones(h, dtype=torch.bfloat16)
    for n, s in [("self_attn.q_proj", (q, h)), ("self_attn.k_proj", (kv, h)), ("self_attn.v_proj", (kv, h)),
                 ("self_attn.o_proj", (h, q)), ("mlp.gate_proj", (i, h)), ("mlp.up_proj", (i, h)),
                 ("mlp.down_proj", (h, i))]:
        t[f"{p}.{n}.weight"] = torch.randn(s, dtype=torch.bfloat16) * 0.02
names = sorted(t)
shards = {"model-00001-of-00002.safetensors": names[:len(names) // 2],
          "model-00002-of-00002.safetensors": names[len(names) // 2:]}
weight_map = {}
for file, members in shards.items():
    save_file({n: t[n] for n in members}, f"{out}/{file}", metadata={"format": "pt"})
    weight_map.update({n: file for n in members})
json.dump({"metadata": {}, "weight_map": weight_map}, open(f"{out}/model.safetensors.index.json", "w"))
json.dump(c, open(f"{out}/config.json", "w"), indent=2)
for f in ["tokenizer.json", "tokenizer_config.json"]:
    shutil.copy(f"{tokenizer}/{f}", f"{out}/{f}")
PY
fi

drop() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; }
timed() { # LABEL COMMAND...
    local label="$1"; shift
    drop
    /usr/bin/time -o "$work/time" -f "$label: %e s, peak RSS %M KB" "$@" > /dev/null 2>"$work/stderr" \
        || { cat "$work/stderr" >&2; exit 1; }
    cat "$work/time"
}
for round in $(seq "$rounds"); do
    timed "round $round: guardreasoner convert q8_0" "$bin" convert --model "$model" --out "$work/ours.q8_0.gguf" --type q8_0
    timed "round $round: convert_hf_to_gguf.py q8_0" "$python" "$tree/convert_hf_to_gguf.py" "$model" \
        --outtype q8_0 --outfile "$work/python.q8_0.gguf"
    cmp -s "$work/ours.q8_0.gguf" "$work/python.q8_0.gguf" && echo "q8_0 files identical" || echo "q8_0 files DIFFER"
done
for type in bf16 q4_k_m; do
    timed "guardreasoner convert $type" "$bin" convert --model "$model" --out "$work/ours.$type.gguf" --type "$type"
done
ls -l "$work"/*.gguf
timed "check on candle (safetensors, f32 on the CPU)" "$bin" check --model "$model" --backend candle \
    --prompt hello --max-new-tokens 1 --context 256
timed "check on llama.cpp (the Q8_0 file)" "$bin" check --model "$work/ours.q8_0.gguf" \
    --prompt hello --max-new-tokens 1 --context 256
rm -rf "$work/cache"
timed "check --backend llama-cpp on the directory, first use (converts into the cache)" \
    env GUARDREASONER_MODELS_DIR="$work/cache" "$bin" check --model "$model" --backend llama-cpp \
    --prompt hello --max-new-tokens 1 --context 256
timed "check --backend llama-cpp on the directory, the conversion cached" \
    env GUARDREASONER_MODELS_DIR="$work/cache" "$bin" check --model "$model" --backend llama-cpp \
    --prompt hello --max-new-tokens 1 --context 256
