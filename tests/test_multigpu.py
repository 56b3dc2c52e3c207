"""Two GPUs: transformers' tensor parallel and FSDP2 with the patched model (bench/multigpu.py under torchrun).
Skipped without two CUDA devices; run on the 2-GPU machine with `pytest -m multigpu`."""

import json
import os
import subprocess
import sys

import pytest
import torch

pytestmark = [pytest.mark.multigpu,
              pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")]


def test_tp_and_fsdp_match_unpatched(tmp_path):
    env = dict(os.environ, NCCL_NVLS_ENABLE="0", TORCH_SYMM_MEM_DISABLE_MULTICAST="1", NVSHMEM_DISABLE_NVLS="1")
    env.pop("OUT", None)
    out = tmp_path / "multigpu.json"  # not bench/results: the committed results come from the full-size run
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "bench.multigpu",
           "--layers", "2", "--new", "8", "--fsdp-layers", "2", "--out", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.load(open(out))
    assert "tp_error" not in res and "fsdp_error" not in res, res
    tp, fs = res["tensor_parallel"], res["fsdp2"]
    # bf16 through the model; patched and unpatched round at different points (relative-norm check)
    assert max(tp["tp_patched_vs_tp_unpatched_rel"]) < 2e-2
    assert max(tp["tp_patched_vs_1gpu_unpatched_rel"]) < 2e-2
    assert fs["loss_abs_diff"] < 1e-2 and fs["max_grad_rel_err"] < 5e-2
