#!/usr/bin/env python3
"""`llamafactory-cli train CONFIG.yaml`, with sample_weight_patch applied in every process.

Usage (same arguments and environment as `llamafactory-cli train`, llamafactory 0.9.5):

    python train_weighted.py CONFIG.yaml [key=value ...]
    FORCE_TORCHRUN=1 [NPROC_PER_NODE=8] python train_weighted.py CONFIG.yaml
    FORCE_TORCHRUN=1 NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 MASTER_PORT=29500 \
        python train_weighted.py CONFIG.yaml        # and NODE_RANK=1 on the second node
    torchrun --nproc_per_node 8 train_weighted.py CONFIG.yaml

`llamafactory-cli train` cannot be used with the patch: for multi-GPU it re-launches
`torchrun .../llamafactory/launcher.py CONFIG.yaml`, whose worker processes would not import
the patch. So, like llamafactory/launcher.py's launch(), this script re-launches itself under
torchrun when FORCE_TORCHRUN is set or more than one device is visible, and each worker
imports the patch, then runs llamafactory.train.tuner.run_exp (which reads sys.argv[1:]).
"""

import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _launched_by_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def main() -> None:
    import sample_weight_patch  # noqa: F401  (imports llamafactory first, then patches)
    from llamafactory.extras.misc import find_available_port, get_device_count, is_env_enabled

    if len(sys.argv) < 2 or not sys.argv[1].endswith((".yaml", ".yml", ".json")):
        sys.exit(__doc__)

    if not _launched_by_torchrun() and (is_env_enabled("FORCE_TORCHRUN") or get_device_count() > 1):
        env = dict(os.environ)
        if is_env_enabled("OPTIM_TORCH", "1"):  # as llamafactory's launcher does
            env["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"
            env["TORCH_NCCL_AVOID_RECORD_STREAMS"] = "1"
        command = [
            "torchrun",
            "--nnodes", os.getenv("NNODES", "1"),
            "--node_rank", os.getenv("NODE_RANK", "0"),
            "--nproc_per_node", os.getenv("NPROC_PER_NODE", str(get_device_count())),
            "--master_addr", os.getenv("MASTER_ADDR", "127.0.0.1"),
            "--master_port", os.getenv("MASTER_PORT", str(find_available_port())),
            os.path.abspath(__file__),
            *sys.argv[1:],
        ]  # fmt: skip
        print("[train_weighted] " + " ".join(command), flush=True)
        sys.exit(subprocess.run(command, env=env).returncode)

    from llamafactory.train.tuner import run_exp

    run_exp()


if __name__ == "__main__":
    main()
