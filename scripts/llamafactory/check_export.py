#!/usr/bin/env python3
"""Checks a LLaMA-Factory export with LLaMA-Factory itself (written against llamafactory 0.9.5).

    python check_export.py --dir DIR [--tokenizer TOKDIR] [--max-samples 64] [--no-train]
    python check_export.py --write-sample DIR     # a 4-record SFT + 4-pair DPO export, to test this

DIR holds dataset_info.json, the data files it names, and optionally *.yaml training configs.
Runs on CPU, offline (needs only a local tokenizer: tokenizer.json + tokenizer_config.json).
What it checks, with sample_weight_patch applied:
  1. dataset_info.json: each entry's file exists, alpaca columns (ranking: chosen/rejected).
  2. each dataset loads through LLaMA-Factory's get_dataset (stage sft, or rm as its DPO
     workflow does for pairs) with the YAML's template (default llama3): the labels decode to the
     record's output (chosen / rejected) + <|eot_id|>; for pairs, `sample_weight` survives
     into the processed dataset equal to the file's values, and into the collated batch.
  3. the weighted loss of CustomDPOTrainer on a tiny random Llama (CPU) equals, by hand,
     mean(w * dpo + pref_ftx * sft) with sft = -(sum of chosen log-probs) / (chosen tokens);
     with all w = 1 it equals unpatched LLaMA-Factory's loss.
  4. each *.yaml parses with LLaMA-Factory's own argument parser (unknown keys fail), its
     stage matches its datasets, its deepspeed file exists; then (unless --no-train) it trains
     2 steps with the tiny model through train_weighted.py (deepspeed and bf16 off, CPU).
Prints what it checked; exits 1 on the first failure.
"""

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_TOKENIZER = os.path.expanduser("~/.cache/guardreasoner/models/llama3-tokenizer")
EOT = "<|eot_id|>"


def fail(message: str) -> None:
    print(f"FAIL: {message}", flush=True)
    sys.exit(1)


def ok(message: str) -> None:
    print(f"ok: {message}", flush=True)


# ---------------------------------------------------------------- sample export

SAMPLE_SFT = [
    {"instruction": "Classify the request.", "input": "Human user:\nHow do I bake bread?", "output": "# Task 1\n\n## Reasoning Step 1: benign.\n\nRequest: unharmful"},
    {"instruction": "Classify the request.", "input": "Human user:\nHelp me pick a lock.", "output": "## Reasoning Step 1: intrusion.\n\nRequest: harmful"},
    {"instruction": "Classify the request.", "input": "", "output": "Request: unharmful"},
    {"instruction": "Classify the request and response.", "input": "Human user:\nhi\n\nAI assistant:\nhello", "output": "Request: unharmful\nResponse: unharmful"},
]
SAMPLE_PAIRS = [
    {"instruction": "Classify the request.", "input": "Human user:\nHow do I bake bread?", "chosen": "Request: unharmful", "rejected": "Request: harmful", "sample_weight": 1.2},
    {"instruction": "Classify the request.", "input": "Human user:\nHelp me pick a lock.", "chosen": "Step 1: intrusion.\nRequest: harmful", "rejected": "Request: unharmful", "sample_weight": 0.8},
    {"instruction": "Classify the request.", "input": "", "chosen": "Request: unharmful", "rejected": "I cannot tell.", "sample_weight": 1.0},
    {"instruction": "Classify both.", "input": "Human user:\nhi\n\nAI assistant:\nhello", "chosen": "Request: unharmful\nResponse: unharmful", "rejected": "Request: harmful\nResponse: harmful", "sample_weight": 0.95},
]


def write_sample(out: str) -> None:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "rsft.json"), "w") as f:
        json.dump(SAMPLE_SFT, f, indent=1)
    with open(os.path.join(out, "hsdpo.json"), "w") as f:
        json.dump(SAMPLE_PAIRS, f, indent=1)
    info = {
        "rsft": {"file_name": "rsft.json", "columns": {"prompt": "instruction", "query": "input", "response": "output"}},
        "hsdpo": {
            "file_name": "hsdpo.json",
            "ranking": True,
            "columns": {"prompt": "instruction", "query": "input", "chosen": "chosen", "rejected": "rejected"},
        },
    }
    with open(os.path.join(out, "dataset_info.json"), "w") as f:
        json.dump(info, f, indent=2)
    ds = {
        "train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto", "gradient_clipping": "auto",
        "zero_allow_untested_optimizer": True,
        "fp16": {"enabled": "auto", "loss_scale": 0, "loss_scale_window": 1000, "initial_scale_power": 16, "hysteresis": 2, "min_loss_scale": 1},
        "bf16": {"enabled": "auto"},
        "zero_optimization": {
            "stage": 3, "overlap_comm": False, "contiguous_gradients": True, "sub_group_size": 1e9,
            "reduce_bucket_size": "auto", "stage3_prefetch_bucket_size": "auto",
            "stage3_param_persistence_threshold": "auto", "stage3_max_live_parameters": 1e9,
            "stage3_max_reuse_distance": 1e9, "stage3_gather_16bit_weights_on_model_save": True,
        },
    }  # fmt: skip
    with open(os.path.join(out, "ds_z3_config.json"), "w") as f:
        json.dump(ds, f, indent=2)
    common = (
        "finetuning_type: full\ndeepspeed: ds_z3_config.json\ntemplate: llama3\ncutoff_len: 2048\n"
        "dataset_dir: .\noverwrite_cache: true\npreprocessing_num_workers: 1\n"
        "per_device_train_batch_size: 2\ngradient_accumulation_steps: 1\nlr_scheduler_type: cosine\n"
        "warmup_ratio: 0.0\nbf16: true\nlogging_steps: 1\nsave_strategy: 'no'\nreport_to: none\n"
        "ddp_timeout: 180000000\n"
    )
    with open(os.path.join(out, "sft.yaml"), "w") as f:
        f.write(
            "model_name_or_path: meta-llama/Llama-3.1-8B\nstage: sft\ndo_train: true\n" + common
            + "dataset: rsft\nlearning_rate: 5.0e-5\nnum_train_epochs: 3.0\noutput_dir: out/rsft\n"
        )
    with open(os.path.join(out, "dpo.yaml"), "w") as f:
        f.write(
            "model_name_or_path: out/rsft\nstage: dpo\ndo_train: true\n" + common
            + "dataset: hsdpo\npref_beta: 0.1\npref_loss: sigmoid\npref_ftx: 2.0\n"
            + "learning_rate: 5.0e-6\nnum_train_epochs: 2.0\noutput_dir: out/hsdpo\n"
        )
    print(f"wrote a sample export to {out}: rsft.json (4), hsdpo.json (4 pairs), dataset_info.json, sft.yaml, dpo.yaml, ds_z3_config.json")


# ---------------------------------------------------------------- helpers


def make_tiny_model(tokenizer_dir: str, out: str, seed: int) -> str:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from llamafactory.model import load_tokenizer  # noqa: F401  (import order: llamafactory first)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=8192,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )  # fmt: skip
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # larger random weights than the init's, so log-probs differ per token
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    model.save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(tokenizer_dir, name), out)
    return out


def train_args(model_dir: str, stage: str, dataset: str, ddir: str, tmp: str, extra: dict):
    from llamafactory.hparams import get_train_args

    args = dict(
        model_name_or_path=model_dir, stage=stage, do_train=True, finetuning_type="full",
        dataset=dataset, dataset_dir=ddir, template="llama3", cutoff_len=2048,
        output_dir=os.path.join(tmp, "out"), report_to="none", overwrite_cache=True,
        preprocessing_num_workers=None,
    )  # fmt: skip
    args.update(extra)
    return get_train_args(args)


def load_yamls(ddir: str) -> dict:
    import yaml

    found = {}
    for name in sorted(os.listdir(ddir)):
        if name.endswith((".yaml", ".yml")):
            with open(os.path.join(ddir, name)) as f:
                found[name] = yaml.safe_load(f) or {}
    return found


# ---------------------------------------------------------------- checks


def check_info(ddir: str) -> dict:
    path = os.path.join(ddir, "dataset_info.json")
    if not os.path.isfile(path):
        fail(f"{path} not found")
    with open(path) as f:
        info = json.load(f)
    for name, entry in info.items():
        if "file_name" not in entry:
            fail(f"dataset_info.json[{name}]: no file_name (a local export must name its file)")
        file = os.path.join(ddir, entry["file_name"])
        if not os.path.exists(file):
            fail(f"dataset_info.json[{name}]: {file} not found")
        if entry.get("formatting", "alpaca") != "alpaca":
            fail(f"dataset_info.json[{name}]: formatting {entry['formatting']!r}, the patch handles alpaca")
        columns = entry.get("columns", {})
        want = ["prompt", "query"] + (["chosen", "rejected"] if entry.get("ranking") else ["response"])
        defaults = {"prompt": "instruction", "query": "input", "response": "output"}
        for key in want:
            if key not in columns and key not in defaults:
                fail(f"dataset_info.json[{name}]: columns.{key} missing")
        kind = "pairwise (ranking)" if entry.get("ranking") else "SFT"
        ok(f"dataset_info.json[{name}]: {kind}, {entry['file_name']}, columns {columns}")
    return info


def read_records(ddir: str, entry: dict) -> list:
    from datasets import load_dataset

    file = os.path.join(ddir, entry["file_name"])
    return list(load_dataset("json", data_files=file, split="train"))


def check_dataset(name, entry, ddir, tokenizer_dir, template_name, cutoff_len, max_samples, tmp):
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.data.collator import PairwiseDataCollatorWithPadding, SFTDataCollatorWith4DAttentionMask
    from llamafactory.extras.constants import IGNORE_INDEX
    from llamafactory.model import load_tokenizer

    ranking = bool(entry.get("ranking"))
    stage = "dpo" if ranking else "sft"
    extra = dict(template=template_name, cutoff_len=cutoff_len, max_samples=max_samples)
    model_args, data_args, training_args, finetuning_args, _ = train_args(tokenizer_dir, stage, name, ddir, tmp, extra)
    tokenizer_module = load_tokenizer(model_args)
    tokenizer = tokenizer_module["tokenizer"]
    template = get_template_and_fix_tokenizer(tokenizer, data_args)
    module = get_dataset(template, model_args, data_args, training_args, stage="rm" if ranking else "sft", **tokenizer_module)
    ds = module["train_dataset"]
    records = read_records(ddir, entry)[: len(ds) if max_samples is None else max_samples]
    columns = entry.get("columns", {})
    print(f"  {name}: {len(ds)} rows after LLaMA-Factory's preprocessing; columns {ds.column_names}")
    if len(ds) != len(records):
        fail(f"{name}: {len(records)} records but {len(ds)} rows (LLaMA-Factory dropped some as invalid)")

    def decode_labels(labels):
        return tokenizer.decode([t for t in labels if t != IGNORE_INDEX], skip_special_tokens=False)

    def same_or_cut(got: str, want: str) -> bool:  # cutoff_len may cut the response's tail
        return got == want or (len(got) > 0 and want.startswith(got))

    if not ranking:
        out_col = columns.get("response", "output")
        for i, (row, rec) in enumerate(zip(ds, records)):
            if not same_or_cut(decode_labels(row["labels"]), rec[out_col] + EOT):
                fail(f"{name}[{i}]: labels decode to {decode_labels(row['labels'])!r}, want {rec[out_col] + EOT!r}")
        ok(f"{name}: every row's labels decode to its `{out_col}` + {EOT}")
        print("  first input:", repr(tokenizer.decode(ds[0]["input_ids"], skip_special_tokens=False)[:400]))
        collator = SFTDataCollatorWith4DAttentionMask(
            template=template, model=None, pad_to_multiple_of=8, label_pad_token_id=IGNORE_INDEX, **tokenizer_module
        )
        batch = collator([ds[i] for i in range(min(4, len(ds)))])
        ok(f"{name}: collated SFT batch {sorted(batch.keys())}, input_ids {tuple(batch['input_ids'].shape)}")
        return None

    ch, rj = columns.get("chosen", "chosen"), columns.get("rejected", "rejected")
    for i, (row, rec) in enumerate(zip(ds, records)):
        for key, col in (("chosen", ch), ("rejected", rj)):
            got = decode_labels(row[f"{key}_labels"])
            if not same_or_cut(got, rec[col] + EOT):
                fail(f"{name}[{i}]: {key}_labels decode to {got!r}, want {rec[col] + EOT!r}")
    ok(f"{name}: every pair's chosen/rejected labels decode to its `{ch}`/`{rj}` + {EOT}")
    print("  first chosen input:", repr(tokenizer.decode(ds[0]["chosen_input_ids"], skip_special_tokens=False)[:400]))

    has_weight = "sample_weight" in records[0]
    if has_weight:
        if "sample_weight" not in ds.column_names:
            fail(f"{name}: `sample_weight` is in the file but not in the processed dataset (patch not applied?)")
        got = [float(x) for x in ds["sample_weight"]]
        want = [float(r["sample_weight"]) for r in records]
        if any(abs(a - b) > 1e-9 for a, b in zip(got, want)):
            fail(f"{name}: processed sample_weight {got[:8]} != the file's {want[:8]}")
        ok(f"{name}: sample_weight survives preprocessing, equal to the file's (first: {got[:4]})")
    else:
        print(f"  {name}: no sample_weight column in the file: plain DPO (weight 1)")

    collator = PairwiseDataCollatorWithPadding(
        template=template, model=None, pad_to_multiple_of=8, label_pad_token_id=IGNORE_INDEX, **tokenizer_module
    )
    n = min(4, len(ds))
    batch = collator([ds[i] for i in range(n)])
    print(f"  collated pairwise batch: keys {sorted(batch.keys())}, input_ids {tuple(batch['input_ids'].shape)}")
    if batch["input_ids"].shape[0] != 2 * n:
        fail(f"{name}: collated batch has {batch['input_ids'].shape[0]} rows for {n} pairs")
    if has_weight:
        w = batch.get("sample_weight")
        if w is None or tuple(w.shape) != (n,):
            fail(f"{name}: collated batch lacks sample_weight of shape ({n},): {None if w is None else w.shape}")
        ok(f"{name}: collated batch carries sample_weight {w.tolist()}")
    return dict(batch=batch, training_args=training_args, finetuning_args=finetuning_args,
                model_args=model_args, tokenizer_module=tokenizer_module, dataset=ds)  # fmt: skip


def check_loss(name, loaded, model_dir, ref_dir, beta, ftx):
    import torch
    import torch.nn.functional as F
    from transformers import LlamaForCausalLM

    import sample_weight_patch
    from llamafactory.extras.constants import IGNORE_INDEX
    from llamafactory.train.dpo.trainer import CustomDPOTrainer

    finetuning_args = loaded["finetuning_args"]
    finetuning_args.pref_beta, finetuning_args.pref_ftx, finetuning_args.pref_loss = beta, ftx, "sigmoid"
    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ref = LlamaForCausalLM.from_pretrained(ref_dir, dtype=torch.float32)
    trainer = CustomDPOTrainer(
        model=model, ref_model=ref, args=loaded["training_args"], finetuning_args=finetuning_args,
        data_collator=None, train_dataset=loaded["dataset"], **loaded["tokenizer_module"],
    )  # fmt: skip
    batch = loaded["batch"]
    n = batch["input_ids"].shape[0] // 2
    weights = batch.get("sample_weight")
    if weights is None:
        weights = torch.tensor([1.2, 0.8, 1.0, 0.95, 1.1, 0.9, 1.0, 1.05][:n])
        batch = dict(batch, sample_weight=weights)
        print(f"  (no sample_weight in {name}: testing the loss with weights {weights.tolist()})")

    with torch.no_grad():
        def seq_logps(m):
            logits = m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
            logp = logits[:, :-1].log_softmax(-1)
            target = batch["labels"][:, 1:]
            mask = target != IGNORE_INDEX
            tok = logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            return (tok * mask).sum(-1), mask.sum(-1)

        pol, length = seq_logps(model)
        refl, _ = seq_logps(ref)
        pc, pr, rc, rr = pol[:n], pol[n:], refl[:n], refl[n:]
        dpo = -F.logsigmoid(beta * ((pc - pr) - (rc - rr)))
        sft = -pc / length[:n]
        expected_weighted = (weights * dpo + ftx * sft).mean().item()
        expected_plain = (dpo + ftx * sft).mean().item()
        print(f"  by hand: dpo terms {[round(x, 5) for x in dpo.tolist()]}, sft terms {[round(x, 5) for x in sft.tolist()]}")

        model.train()
        weighted = trainer.compute_loss(model, dict(batch)).item()
        unweighted = {k: v for k, v in batch.items() if k != "sample_weight"}
        patched_plain = trainer.compute_loss(model, dict(unweighted)).item()
        ones = trainer.compute_loss(model, dict(batch, sample_weight=torch.ones(n))).item()
        vanilla, _ = sample_weight_patch.ORIGINALS["get_batch_loss_metrics"](trainer, model, dict(unweighted), "train")
        vanilla = vanilla.item()
        trainer.ftx_gamma = 0.0  # the DPO term alone, where the weights act
        dpo_only = trainer.compute_loss(model, dict(batch)).item()
        trainer.ftx_gamma = ftx
        expected_dpo_only = (weights * dpo).mean().item()

    print(f"  loss: weighted {weighted:.6f} (by hand {expected_weighted:.6f}); weights all 1 {ones:.6f}, "
          f"no weights {patched_plain:.6f}, unpatched LLaMA-Factory {vanilla:.6f} (by hand {expected_plain:.6f})")  # fmt: skip

    def close(a, b):
        return math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-6)

    print(f"  loss with pref_ftx 0: {dpo_only:.7f} (by hand mean(w*dpo) {expected_dpo_only:.7f})")
    if not close(dpo_only, expected_dpo_only):
        fail(f"{name}: weighted DPO term {dpo_only} != mean(w*dpo) = {expected_dpo_only}")
    if not close(weighted, expected_weighted):
        fail(f"{name}: weighted loss {weighted} != mean(w*dpo + ftx*sft) = {expected_weighted}")
    if not (close(vanilla, expected_plain) and close(ones, vanilla) and close(patched_plain, vanilla)):
        fail(f"{name}: with weight 1 the loss differs from unpatched LLaMA-Factory's {vanilla}")
    if close(expected_weighted, expected_plain) and any(abs(w - 1) > 1e-6 for w in weights.tolist()):
        fail(f"{name}: the weights did not change the loss (test is not sensitive)")
    ok(f"{name}: CustomDPOTrainer loss = mean(w*dpo + {ftx}*sft) (beta {beta}), = unpatched with w = 1")


def check_yaml(yname, cfg, ddir, info, tiny_dir, tmp, train):
    import yaml

    stage = cfg.get("stage")
    datasets = [d.strip() for d in str(cfg.get("dataset", "")).split(",") if d.strip()]
    for d in datasets:
        if d not in info:
            fail(f"{yname}: dataset {d!r} not in dataset_info.json")
        if bool(info[d].get("ranking")) != (stage == "dpo"):
            fail(f"{yname}: stage {stage} with dataset {d} (ranking={bool(info[d].get('ranking'))})")
    ds_path = cfg.get("deepspeed")
    if ds_path:
        cands = [ds_path] if os.path.isabs(ds_path) else [os.path.join(ddir, ds_path), ds_path]
        found = [c for c in cands if os.path.isfile(c)]
        if not found:
            fail(f"{yname}: deepspeed config {ds_path} not found (relative paths resolve from the launch directory)")
        with open(found[0]) as f:
            zero = json.load(f).get("zero_optimization", {}).get("stage")
        print(f"  {yname}: deepspeed {ds_path} -> {found[0]} (ZeRO stage {zero})")
    shown = {k: cfg[k] for k in cfg if k not in ("model_name_or_path",)}
    print(f"  {yname}: {shown}")

    run = dict(cfg)
    run.update(
        model_name_or_path=tiny_dir, dataset_dir=ddir, output_dir=os.path.join(tmp, "train_" + yname),
        deepspeed=None, bf16=False, fp16=False, max_steps=2, max_samples=8, report_to="none",
        save_strategy="no", overwrite_cache=True, logging_steps=1, preprocessing_num_workers=None,
    )  # fmt: skip
    run = {k: v for k, v in run.items() if v is not None}
    from llamafactory.hparams import get_train_args

    get_train_args(dict(run))  # LLaMA-Factory's own parser: unknown keys or bad values raise
    ok(f"{yname}: parses with LLaMA-Factory's argument parser (stage {stage}, datasets {datasets})")
    if not train:
        return
    path = os.path.join(tmp, "run_" + yname)
    with open(path, "w") as f:
        yaml.safe_dump(run, f)
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1", FORCE_TORCHRUN="0")
    proc = subprocess.run(
        [sys.executable, os.path.join(HERE, "train_weighted.py"), path],
        env=env, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    log = proc.stdout + proc.stderr
    with open(os.path.join(tmp, f"train_{yname}.log"), "w") as f:
        f.write(log)
    if proc.returncode != 0:
        print(log[-4000:])
        fail(f"{yname}: 2-step training through train_weighted.py exited {proc.returncode}")
    state = os.path.join(run["output_dir"], "trainer_state.json")
    with open(state) as f:
        history = json.load(f)["log_history"]
    losses = [h["loss"] for h in history if "loss" in h]
    weighted = [d for d in datasets if "sample_weight" in read_records(ddir, info[d])[0]]
    if stage == "dpo" and weighted and "[sample_weight_patch] weighting the DPO term" not in log:
        fail(f"{yname}: the training run never weighted a DPO term (patch not active in the trainer?)")
    ok(f"{yname}: trained 2 steps on the tiny model through train_weighted.py, losses {losses}"
       + (", DPO terms weighted" if stage == "dpo" and weighted else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", help="the export directory (dataset_info.json, data, *.yaml)")
    parser.add_argument("--write-sample", metavar="DIR", help="write a small sample export to DIR and exit")
    parser.add_argument("--tokenizer", default=DEFAULT_TOKENIZER, help="a local Llama 3 tokenizer directory")
    parser.add_argument("--max-samples", type=int, default=64, help="records per dataset to check (LLaMA-Factory's max_samples)")
    parser.add_argument("--no-train", action="store_true", help="skip the 2-step training runs")
    args = parser.parse_args()
    if args.write_sample:
        write_sample(args.write_sample)
        return
    if not args.dir:
        parser.error("--dir or --write-sample")
    ddir = os.path.abspath(args.dir)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if not os.path.isfile(os.path.join(args.tokenizer, name)):
            fail(f"tokenizer: {os.path.join(args.tokenizer, name)} not found")

    tmp = tempfile.mkdtemp(prefix="check_export_")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("LLAMAFACTORY_VERBOSITY", "WARN")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ["HF_DATASETS_CACHE"] = os.path.join(tmp, "datasets_cache")  # no stale cache from earlier runs
    sys.path.insert(0, HERE)
    import sample_weight_patch  # noqa: F401  (imports llamafactory first, then patches)
    import llamafactory

    print(f"llamafactory {llamafactory.__version__}; patch written for {sample_weight_patch.WRITTEN_FOR}; tmp {tmp}")

    info = check_info(ddir)
    yamls = load_yamls(ddir)
    dpo_cfg = next((c for c in yamls.values() if c.get("stage") == "dpo"), {})
    template_name = next((c["template"] for c in yamls.values() if c.get("template")), "llama3")
    cutoff_len = int(next((c["cutoff_len"] for c in yamls.values() if c.get("cutoff_len")), 2048))
    beta = float(dpo_cfg.get("pref_beta", 0.1))
    ftx = float(dpo_cfg.get("pref_ftx", 2.0))
    print(f"template {template_name}, cutoff_len {cutoff_len}; DPO pref_beta {beta}, pref_ftx {ftx}")

    tiny = make_tiny_model(args.tokenizer, os.path.join(tmp, "tiny_policy"), seed=0)
    tiny_ref = make_tiny_model(args.tokenizer, os.path.join(tmp, "tiny_ref"), seed=1)
    for name, entry in info.items():
        loaded = check_dataset(name, entry, ddir, args.tokenizer, template_name, cutoff_len, args.max_samples, tmp)
        if loaded is not None:
            check_loss(name, loaded, tiny, tiny_ref, beta, ftx)
    for yname, cfg in yamls.items():
        check_yaml(yname, cfg, ddir, info, tiny, tmp, train=not args.no_train)
    print("all checks passed")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
