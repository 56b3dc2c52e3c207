"""Two-GPU checks and measurements (run under torchrun, one process per GPU; `multigpu` in the docs).

    torchrun --nproc-per-node 2 -m bench.multigpu [--layers 8] [--new 64]

Tensor parallel (transformers' own tp_plan="auto", 2 ranks): a Llama-3.1-8B-shaped model with random bf16
weights (fewer layers, --layers) is saved once, loaded sharded, and compared patched vs unpatched vs the same
model on one GPU: logits (relative error) and greedy decode tokens/s at batch 1 and 8 (HF generate).
FSDP2 (torch fully_shard per decoder layer): one training step of a Llama-3.2-1B-shaped model (random
weights, --fsdp-layers layers), patched vs unpatched: loss, gradients (relative error), step time, peak memory.
Rank 0 writes bench/results/multigpu-<gpu>.json (and $OUT/). Every section records its own error, if any.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import tempfile
import time
import traceback

import torch
import torch.distributed as dist

from bench.results_io import save_results

BF16 = torch.bfloat16


def log(*a):
    if dist.get_rank() == 0:
        print(*a, flush=True)


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def timed(fn, reps=1):
    torch.cuda.synchronize()
    dist.barrier()
    t = time.perf_counter()
    for _ in range(reps):
        out = fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / reps, out


def config_8b(layers):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=layers,
                       num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=8192,
                       rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                        "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                        "original_max_position_embeddings": 8192},
                       eos_token_id=None, pad_token_id=0)


def decode_rate(model, ids, new):
    kw = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0, eos_token_id=None)
    model.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=0, eos_token_id=None)
    t_pre, _ = timed(lambda: model.generate(ids, max_new_tokens=1, min_new_tokens=1, do_sample=False,
                                            pad_token_id=0, eos_token_id=None))
    t_all, out = timed(lambda: model.generate(ids, **kw))
    return ids.shape[0] * (new - 1) / (t_all - t_pre), out[:, ids.shape[1]:]


def tensor_parallel(args, res):
    from transformers import LlamaForCausalLM

    from litekernels.patches import apply_lite_llama, lite_llama_summary, revert_lite_llama

    rank = dist.get_rank()
    path = os.path.join(tempfile.gettempdir(), "lite-llama-tp-model")
    if rank == 0:
        torch.manual_seed(0)
        with torch.device("cuda"):
            LlamaForCausalLM(config_8b(args.layers)).to(BF16).save_pretrained(path)
    dist.barrier()
    model = LlamaForCausalLM.from_pretrained(path, dtype=BF16, tp_plan="auto").eval()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(10, 128000, (2, 256), generator=g).cuda()
    mask = torch.ones_like(ids)
    mask[1, :40] = 0
    out = {}
    with torch.no_grad():
        ref = model(ids, attention_mask=mask).logits
        apply_lite_llama(model)
        out["patched_summary"] = lite_llama_summary(model)
        got = model(ids, attention_mask=mask).logits
    out["tp_patched_vs_tp_unpatched_rel"] = [rel(got[0], ref[0]), rel(got[1, 40:], ref[1, 40:])]
    rates = {}
    for B in (1, 8):
        x = torch.randint(10, 128000, (B, 128), generator=g).cuda()
        revert_lite_llama(model)
        rates[f"tp2_unpatched_b{B}"], tok_ref = decode_rate(model, x, args.new)
        apply_lite_llama(model)
        rates[f"tp2_patched_b{B}"], tok = decode_rate(model, x, args.new)
        out[f"tp2_greedy_token_agreement_b{B}"] = (tok == tok_ref).float().mean().item()
    del model
    torch.cuda.empty_cache()
    if rank == 0:  # the same model on one GPU: reference logits and the 1-GPU rates
        single = LlamaForCausalLM.from_pretrained(path, dtype=BF16).cuda().eval()
        with torch.no_grad():
            one = single(ids, attention_mask=mask).logits
        out["tp_patched_vs_1gpu_unpatched_rel"] = [rel(got[0], one[0]), rel(got[1, 40:], one[1, 40:])]
        out["tp_unpatched_vs_1gpu_unpatched_rel"] = [rel(ref[0], one[0]), rel(ref[1, 40:], one[1, 40:])]
        for B in (1, 8):
            x = torch.randint(10, 128000, (B, 128), generator=torch.Generator().manual_seed(B)).cuda()
            revert_lite_llama(single)
            rates[f"1gpu_unpatched_b{B}"], _ = _local_rate(single, x, args.new)
            apply_lite_llama(single)
            rates[f"1gpu_patched_b{B}"], _ = _local_rate(single, x, args.new)
        del single
    dist.barrier()
    out["decode_tok_s"] = rates
    res["tensor_parallel"] = out


def _local_rate(model, ids, new):
    kw = dict(do_sample=False, pad_token_id=0, eos_token_id=None)
    model.generate(ids, max_new_tokens=4, min_new_tokens=4, **kw)
    torch.cuda.synchronize()
    t = time.perf_counter()
    model.generate(ids, max_new_tokens=1, min_new_tokens=1, **kw)
    torch.cuda.synchronize()
    t_pre = time.perf_counter() - t
    t = time.perf_counter()
    out = model.generate(ids, max_new_tokens=new, min_new_tokens=new, **kw)
    torch.cuda.synchronize()
    return ids.shape[0] * (new - 1) / (time.perf_counter() - t - t_pre), out


def fsdp(args, res):
    from torch.distributed.fsdp import fully_shard
    from transformers import LlamaConfig, LlamaForCausalLM

    from litekernels.patches import apply_lite_llama

    cfg = LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=8192, num_hidden_layers=args.fsdp_layers,
                      num_attention_heads=32, num_key_value_heads=8, head_dim=64, max_position_embeddings=4096)
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 32000, (4, 1024), generator=g).cuda()
    out = {}
    grads = {}
    for patched in (False, True):
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg).to("cuda", BF16)
        if patched:
            apply_lite_llama(model)
        for layer in model.model.layers:
            fully_shard(layer)
        fully_shard(model)
        model.train()

        def step():
            loss = model(ids, labels=ids).loss
            loss.backward()
            return loss

        step()  # warm-up (JIT)
        model.zero_grad(set_to_none=True)
        torch.cuda.reset_peak_memory_stats()
        t, loss = timed(step)
        name = "patched" if patched else "unpatched"
        out[f"{name}_loss"] = loss.item()
        out[f"{name}_step_s"] = t
        out[f"{name}_peak_mem_GB"] = torch.cuda.max_memory_allocated() / 1e9
        grads[name] = {n: p.grad.full_tensor().float() for n, p in model.named_parameters() if p.grad is not None}
        del model
        torch.cuda.empty_cache()
    worst = max(rel(grads["patched"][n], grads["unpatched"][n]) for n in grads["unpatched"])
    out["max_grad_rel_err"] = worst
    out["loss_abs_diff"] = abs(out["patched_loss"] - out["unpatched_loss"])
    res["fsdp2"] = out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--new", type=int, default=64)
    p.add_argument("--fsdp-layers", type=int, default=4)
    p.add_argument("--only", default="tp,fsdp")
    p.add_argument("--out", default=None, help="result file (default bench/results/multigpu-<gpu>.json)")
    args = p.parse_args()
    for var, val in (("NCCL_NVLS_ENABLE", "0"), ("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1"),
                     ("NVSHMEM_DISABLE_NVLS", "1")):
        if os.environ.get(var) != val:
            raise SystemExit(f"refusing to run: set {var}={val} (NVLink multicast must stay off on these hosts)")
    local = int(os.environ["LOCAL_RANK"])
    torch.cuda.set_device(local)
    dist.init_process_group("nccl")
    import transformers

    res = {"meta": {"device": torch.cuda.get_device_name(), "gpus": dist.get_world_size(), "torch": torch.__version__,
                    "transformers": transformers.__version__, "tp_model": f"Llama-3.1-8B shape, {args.layers} layers",
                    "fsdp_model": f"Llama-3.2-1B shape, {args.fsdp_layers} layers, vocab 32000, batch 4x1024",
                    "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}}
    for name, fn in (("tp", tensor_parallel), ("fsdp", fsdp)):
        if name not in args.only:
            continue
        try:
            fn(args, res)
        except Exception as e:  # noqa: BLE001 - record and go on to the next section
            res[f"{name}_error"] = repr(e)[:500]
            log(traceback.format_exc())
        log(json.dumps({k: v for k, v in res.items() if k != "meta"}, indent=1))
    if dist.get_rank() == 0:
        save_results(res, "multigpu", args.out)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
