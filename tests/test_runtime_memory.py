"""The runtime holds no copies of the model's weights (issue #12).

After a runtime is built, every tensor it holds other than the KV cache and the RoPE tables lives in storage
the model's parameters also live in, and the parameters' storages add up to no more than the parameters
themselves. The fusion must be invisible to everything else: same Parameter objects and names, state_dict
values bit-equal, save_pretrained/from_pretrained round trip, HF forward logits and gradients bit-equal,
optimizer steps seen by the runtime, `is_stale()` when a parameter gets new storage. Easy mistakes this
catches: a torch.cat left in the runtime, fused buffers that keep the old parameters alive, a rebinding that
swaps Parameter objects (breaks optimizers and tied weights), a second runtime that fuses again instead of
viewing.
"""

import copy
import gc

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from litekernels.generation import LlamaRuntime

PROMPTS = [[1, 5, 9, 33, 7], [1, 2]]


def make(tie=True, seed=0):
    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=96, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                      num_attention_heads=6, num_key_value_heads=2, head_dim=16, max_position_embeddings=64,
                      tie_word_embeddings=tie)
    model = Qwen2ForCausalLM(cfg).eval()  # q/k/v biases: the fusion covers biases too
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.15)
    return model


def storages(tensors):
    return {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}


def test_runtime_owns_no_weight_storage():
    model = make()
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    rt = LlamaRuntime(model, max_batch=2, max_seq_len=16, use_cuda_graph=False)
    params = storages(model.parameters())
    own = {"k_cache", "v_cache", "cos", "sin"}
    extra = {name: t for name, t in rt.runtime_tensors().items()
             if name not in own and t.untyped_storage().data_ptr() not in params}
    assert not extra, f"runtime tensors with storage of their own: {sorted(extra)}"
    assert all(rt.layers[i].qkv.weight is not None and rt.layers[i].gu.weight is not None for i in range(2))
    # no hidden copies either: the parameters' storages hold the parameters and nothing else
    assert sum(params.values()) == param_bytes


def test_fusion_is_invisible_to_the_model(tmp_path):
    model = make(tie=False)
    ids = torch.randint(1, 96, (2, 9))
    with torch.no_grad():
        ref = model(ids).logits
    before_sd = {k: v.clone() for k, v in model.state_dict().items()}
    def describe(m):
        return {n: (id(p), p.requires_grad, p.dtype, tuple(p.shape)) for n, p in m.named_parameters()}

    before_params = describe(model)
    twin = copy.deepcopy(model)  # never fused: the gradient reference
    LlamaRuntime(model, max_batch=2, max_seq_len=16, use_cuda_graph=False)
    after = model.state_dict()
    assert list(after) == list(before_sd)
    for k, v in before_sd.items():
        assert after[k].dtype == v.dtype and after[k].shape == v.shape and torch.equal(after[k], v), k
    assert describe(model) == before_params
    assert all(p.is_leaf for p in model.parameters())
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref)
    # training through the HF forward: gradients identical to the never-fused twin
    model.train(), twin.train()
    grads = torch.autograd.grad(model(ids, labels=ids).loss, list(model.parameters()))
    ref_grads = torch.autograd.grad(twin(ids, labels=ids).loss, list(twin.parameters()))
    for (n, _), a, b in zip(model.named_parameters(), grads, ref_grads):
        assert torch.equal(a, b), n
    # save_pretrained / from_pretrained (safetensors refuses shared storage unless transformers splits it)
    model.save_pretrained(tmp_path)
    loaded = Qwen2ForCausalLM.from_pretrained(tmp_path).eval()
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, before_sd[k]), k
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    for k, v in torch.load(tmp_path / "sd.pt").items():
        assert torch.equal(v, before_sd[k]), k


def test_in_place_updates_reach_the_runtime_and_replacements_make_it_stale():
    model = make()
    rt = LlamaRuntime(model, max_batch=2, max_seq_len=16, use_cuda_graph=False)
    assert not rt.is_stale()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    ids = torch.tensor([PROMPTS[0]])
    model(ids, labels=ids).loss.backward()
    opt.step()
    model.eval()
    assert not rt.is_stale()  # an optimizer step updates the parameters in place
    after_step = rt.prefill(PROMPTS)
    fresh = LlamaRuntime(model, max_batch=2, max_seq_len=16, use_cuda_graph=False, fuse_weights=False)
    assert torch.equal(after_step, fresh.prefill(PROMPTS))
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight.mul_(-1)
    assert not torch.equal(rt.prefill(PROMPTS), after_step)  # seen without a rebuild
    # a new storage for one parameter: the runtime would read the old one, and says so
    k_proj = model.model.layers[1].self_attn.k_proj
    k_proj.weight.data = k_proj.weight.data.clone()
    assert rt.is_stale()
    rt2 = LlamaRuntime(model, max_batch=2, max_seq_len=16, use_cuda_graph=False)
    assert not rt2.is_stale()
    model.load_state_dict(copy.deepcopy(model.state_dict()), assign=True)
    assert rt2.is_stale()


def test_second_runtime_views_the_same_buffers():
    model = make()
    rt1 = LlamaRuntime(model, max_batch=1, max_seq_len=16, use_cuda_graph=False)
    ptrs = [p.data_ptr() for p in model.parameters()]
    rt2 = LlamaRuntime(model, max_batch=2, max_seq_len=32, use_cuda_graph=False)
    assert [p.data_ptr() for p in model.parameters()] == ptrs
    for a, b in zip(rt1.layers, rt2.layers):
        assert a.qkv.weight.data_ptr() == b.qkv.weight.data_ptr() and a.gu.bias is None
        assert a.qkv.bias.data_ptr() == b.qkv.bias.data_ptr()
    assert torch.equal(rt1.prefill(PROMPTS[:1]), rt2.prefill(PROMPTS[:1]))


def test_unfused_path_leaves_parameters_alone_and_gives_the_same_logits():
    model = make()
    ptrs = {n: p.data_ptr() for n, p in model.named_parameters()}
    split = LlamaRuntime(model, max_batch=2, max_seq_len=16, use_cuda_graph=False, fuse_weights=False)
    assert {n: p.data_ptr() for n, p in model.named_parameters()} == ptrs
    assert all(L.qkv.weight is None and len(L.qkv.parts) == 3 for L in split.layers)
    params = storages(model.parameters())
    assert all(t.untyped_storage().data_ptr() in params for n, t in split.runtime_tensors().items()
               if n not in ("k_cache", "v_cache", "cos", "sin"))
    a = split.prefill(PROMPTS)
    fused = LlamaRuntime(model, max_batch=2, max_seq_len=16, use_cuda_graph=False)
    # one GEMM vs three: the same fp32 sums, possibly in another order
    torch.testing.assert_close(fused.prefill(PROMPTS), a, atol=1e-5, rtol=1e-5)


def test_shared_parameter_between_groups_is_not_moved():
    """A parameter used by two groups (here: gate_proj of layer 1 is layer 0's) cannot be a view of both
    buffers: the second group runs unfused, and both layers still read the live parameter."""
    model = make()
    m0, m1 = model.model.layers[0].mlp, model.model.layers[1].mlp
    m1.gate_proj.weight = m0.gate_proj.weight
    rt = LlamaRuntime(model, max_batch=1, max_seq_len=16, use_cuda_graph=False)
    assert rt.layers[0].gu.weight is not None and rt.layers[1].gu.weight is None
    with torch.no_grad():
        m0.gate_proj.weight.mul_(2)
    fresh = LlamaRuntime(model, max_batch=1, max_seq_len=16, use_cuda_graph=False, fuse_weights=False)
    torch.testing.assert_close(rt.prefill(PROMPTS[:1]), fresh.prefill(PROMPTS[:1]), atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
def test_gpu_runtime_allocates_only_cache_and_rope_tables():
    """On CUDA the allocator's count must grow by the KV cache and cos/sin only (plus < 1 MiB of slack)."""
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=32000, hidden_size=1024, intermediate_size=4096, num_hidden_layers=4,
                      num_attention_heads=16, num_key_value_heads=4, max_position_embeddings=4096)
    model = Qwen2ForCausalLM(cfg).to("cuda", torch.bfloat16).eval()
    # the first matmul of the process allocates cuBLAS's workspace through the caching allocator (one-time, not
    # the runtime's): HF's rotary module, which the runtime calls for its cos/sin tables, runs one. Do it first.
    model.model.rotary_emb(torch.empty(1, device="cuda", dtype=torch.bfloat16), torch.arange(8, device="cuda")[None])
    # One runtime first: process-wide state settles there - e.g. a plan cache that an earlier test made stale
    # (tests/test_gpu_tiles.py swaps decode's plan table) drops its plans, and their scratch, on its next hit,
    # which would otherwise land inside the measured window (seen on the H200: grown 0.5 MiB below own). A weight
    # copy belongs to each runtime, so the measured one below would still show it.
    warm = LlamaRuntime(model, max_batch=2, max_seq_len=1024, use_cuda_graph=False)
    del warm
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    record = getattr(torch.cuda.memory, "_record_memory_history", None)
    if record is not None:  # so a failure names where the extra blocks were allocated
        record(max_entries=100000)
    before_blocks = _live_blocks()
    before = torch.cuda.memory_allocated()
    rt = LlamaRuntime(model, max_batch=2, max_seq_len=1024, use_cuda_graph=False)
    torch.cuda.synchronize()
    grown = torch.cuda.memory_allocated() - before
    own = sum(t.numel() * t.element_size() for t in (rt.k_cache, rt.v_cache, rt.cos, rt.sin))
    new = [b for addr, b in _live_blocks().items() if addr not in before_blocks]
    if record is not None:
        record(enabled=None)
    where = [(b["size"], [f"{f['filename'].split('/')[-1]}:{f['line']} {f['name']}" for f in b.get("frames", [])
                          if f["filename"].endswith(".py")][:6]) for b in new]
    # Slack: on the H200 (torch 2.11) the allocator's count grew by 1.5-2.0 MiB more than the cache and tables,
    # in blocks the runtime does not hold (the CPU test above walks every tensor it owns); not yet attributed.
    # The test is after weight copies: the smallest possible one here, one layer's fused q/k/v, is 3 MiB.
    assert own <= grown <= own + 5 * 2**19, (grown, own, where)


def _live_blocks() -> dict:
    """address -> block dict of every allocated block of the CUDA caching allocator."""
    out = {}
    for seg in torch.cuda.memory_snapshot():
        addr = seg["address"]
        for b in seg["blocks"]:
            if b["state"] == "active_allocated":
                out[addr] = b
            addr += b["size"]
    return out


def test_unfuse_weights_gives_each_parameter_its_own_storage(tmp_path, monkeypatch):
    """accelerate's clean_state_dict_for_safetensors (Accelerator.save_model) keeps one name per storage: on
    a fused model it would drop k/v/up from the checkpoint. unfuse_weights undoes the sharing before that."""
    import logging

    from safetensors.torch import load_file, save_file

    from litekernels.generation.runtime import unfuse_weights

    other = pytest.importorskip("accelerate.utils.other")
    monkeypatch.setattr(other, "logger", logging.getLogger("test"))  # its own logger needs an Accelerator()
    clean = other.clean_state_dict_for_safetensors
    model = make(tie=False)  # tied embeddings would share a storage for another, legitimate reason
    rt = LlamaRuntime(model, max_batch=1, max_seq_len=16, use_cuda_graph=False)
    logits = rt.prefill(PROMPTS[:1])
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    save_file(model.state_dict(), str(tmp_path / "fused.safetensors"))  # safetensors splits disjoint views
    assert all(torch.equal(v, sd[k]) for k, v in load_file(str(tmp_path / "fused.safetensors")).items())
    assert len(clean(model.state_dict())) < len(sd)  # the hazard
    assert unfuse_weights(model) == 2 * (3 + 3 + 2)  # per layer: q/k/v weights and biases, gate/up weights
    assert rt.is_stale()
    assert len(clean(model.state_dict())) == len(sd)
    assert all(torch.equal(v, sd[k]) for k, v in model.state_dict().items())
    params = storages(model.parameters())
    assert len(params) == len(list(model.parameters()))
    assert sum(params.values()) == sum(p.numel() * p.element_size() for p in model.parameters())
    rebuilt = LlamaRuntime(model, max_batch=1, max_seq_len=16, use_cuda_graph=False)
    assert torch.equal(rebuilt.prefill(PROMPTS[:1]), logits)


def test_runtime_built_in_inference_mode_leaves_the_model_trainable():
    """Tensors made under torch.inference_mode are inference tensors: parameters rebound to such a buffer
    could not be trained, and a cache made there could not be written outside inference mode."""
    model = make()
    with torch.inference_mode():
        rt = LlamaRuntime(model, max_batch=2, max_seq_len=16, use_cuda_graph=False)
        inside = rt.prefill(PROMPTS)
    assert not any(p.is_inference() for p in model.parameters())
    assert rt.layers[0].qkv.weight is not None  # fused
    assert not rt.k_cache.is_inference() and not rt.layers[0].qkv.weight.is_inference()
    assert torch.equal(rt.prefill(PROMPTS), inside)  # cache written outside inference mode
    model.train()
    ids = torch.tensor([PROMPTS[0]])
    model(ids, labels=ids).loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_model_created_in_inference_mode_runs_unfused():
    with torch.inference_mode():
        model = make()
    rt = LlamaRuntime(model, max_batch=2, max_seq_len=16, use_cuda_graph=False)
    assert rt.layers[0].qkv.weight is None  # its parameters cannot be viewed outside inference mode
    with torch.inference_mode():
        again = LlamaRuntime(model, max_batch=2, max_seq_len=16, use_cuda_graph=False)
        assert torch.equal(again.prefill(PROMPTS), rt.prefill(PROMPTS))
