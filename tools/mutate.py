"""Mutation testing with a curated list of one-line bugs: does the fast CPU suite catch each one?

Each mutation replaces one exact substring of one file (it must occur exactly once) in a scratch copy of the
repository under /tmp (the worktree is never modified), then runs the test files mapped to it under
TRITON_INTERPRET=1 with a timeout. A mutant is "caught" when those tests fail (or time out), "survived" when
they pass. An unmodified copy runs first: every mapped test must pass there, else the results mean nothing.

    python3 tools/mutate.py --list
    python3 tools/mutate.py                    # everything, one worker (~30 min on 2 busy cores)
    python3 tools/mutate.py -j 2 --only rms    # the mutations whose name contains "rms"

Not part of CI (it is expensive); run it after changing a kernel or its tests, and add a line here for each
bug you have seen or fear. Prints a table and the score; exits 1 when a mutant survives.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Mutation:
    name: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]  # pytest arguments (files, node ids, or "-k expr" pairs)
    why: str = ""


def M(name, file, old, new, *tests, why=""):
    flat = []
    for t in tests:
        for item in (t if isinstance(t, tuple) else (t,)):
            if item not in flat:
                flat.append(item)
    return Mutation(name, file, old, new, tuple(flat), why)


# Test selections, most specific first (pytest -x stops at the first failure, so a caught mutant costs one
# interpreter start plus the first failing test). Every entry is a file or node id from the fast suite.
T = "tests/"
P = T + "test_properties.py::"
RMS = (T + "test_rms_norm.py::test_output_rounds_where_hf_rounds", T + "test_rms_norm.py::test_tiny_rows_where_eps_matters",
       T + "test_rms_norm.py::test_row_strided_input_and_residual", P + "test_rms_norm_properties", T + "test_rms_norm.py")
ROPE = (P + "test_rope_properties", P + "test_rope_cache_write_properties",
        T + "test_rope.py::test_rope_per_batch_cos_and_2d_cos", T + "test_rope.py::test_rope_cache_write_matches_reference")
SWI = (T + "test_swiglu.py", P + "test_silu_mul_properties")
ATT = (T + "test_attention.py::test_flash_attention_half", T + "test_attention.py::test_flash_attention_per_query_mask",
       T + "test_attention.py::test_flash_attention_with_cached_prefix", P + "test_flash_attention_properties",
       T + "test_gpu_tiles.py::test_flash_attention_gpu_tiles", T + "test_attention.py")
DEC = (T + "test_attention.py::test_decode_attention", P + "test_decode_attention_properties",
       T + "test_gpu_tiles.py::test_decode_attention_gpu_tiles")
LIN = (T + "test_linear.py", P + "test_decode_linear_properties", T + "test_gpu_tiles.py::test_decode_linear_gpu_tiles")
GEN = (T + "test_generation.py::test_runtime_matches_hf_greedy_token_for_token_and_logits",
       T + "test_generation.py::test_generate_ragged_batch_matches_hf_greedy",
       T + "test_generation.py::test_top_k_top_p_only_pick_allowed_tokens_with_sane_frequencies", T + "test_generation.py")
PATCH = (T + "test_patches.py::test_patched_logits_match", T + "test_patches.py::test_generate_greedy_matches_with_left_padding",
         T + "test_patches.py::test_lite_attention_function_with_additive_and_bias_masks", T + "test_patches.py")
CE = (T + "test_cross_entropy.py::test_matches_reference", T + "test_cross_entropy.py")
CEP = (T + "test_cross_entropy.py::test_patched_loss_and_grads_match_hf_and_logits_are_none",
       T + "test_cross_entropy.py::test_patch_honours_num_items_shift_labels_and_return_dict", T + "test_cross_entropy.py")
LIB = (T + "test_library.py",)
FAM = (T + "test_families.py::test_qwen3_runtime_applies_qk_norm", T + "test_families.py::test_runtime_greedy_matches_hf_generate_on_ragged_batch",
       T + "test_families.py")
RTM = (T + "test_runtime_memory.py",)
SAFE = (T + "test_generation_safety.py",)
ATTV = (T + "test_attention_variants.py",)
PROPS = TILES = ()  # folded into the selections above
OPS = "litekernels/ops/"

MUTATIONS = [
    # --- RMSNorm -------------------------------------------------------------------------------------------
    M("rms_fwd_eps_dropped", OPS + "rms_norm.py", "/ n_cols + eps)", "/ n_cols)", RMS, PROPS,
      why="eps dropped: only a row whose mean square is comparable to eps sees it"),
    M("rms_fwd_rounding_point_moved", OPS + "rms_norm.py",
      "xn = (xf * rstd[:, None]).to(X.dtype.element_ty).to(tl.float32)", "xn = xf * rstd[:, None]", RMS,
      why="HF rounds x*rstd to x's dtype before the weight; skipping it is *more* accurate, so only the "
          "rounds-like-HF check sees it"),
    M("rms_fwd_mean_over_padded_block", OPS + "rms_norm.py", "tl.sum(xf * xf, axis=1) / n_cols", "tl.sum(xf * xf, axis=1) / BLOCK",
      RMS, PROPS),
    M("rms_fwd_row_stride_ignored", OPS + "rms_norm.py", "x = tl.load(X + rows[:, None] * stride_x", "x = tl.load(X + rows[:, None] * n_cols",
      RMS, PROPS, why="rows of a strided view read as if contiguous"),
    M("rms_fused_residual_not_rounded", OPS + "rms_norm.py",
      "x = (x.to(tl.float32) + r.to(tl.float32)).to(X.dtype.element_ty)", "x = x.to(tl.float32) + r.to(tl.float32)",
      RMS, why="torch rounds x + residual to the input dtype before normalising"),
    M("rms_bwd_sign", OPS + "rms_norm.py", "(g - xn * (tl.sum(g * xn, axis=1)", "(g + xn * (tl.sum(g * xn, axis=1)", RMS),
    M("rms_bwd_dh_dropped", OPS + "rms_norm.py", "dx += tl.load(DH", "dx += 0.0 * tl.load(DH", RMS),
    M("rms_bwd_dw_first_program_only", OPS + "rms_norm.py", "dw = dw_part.sum(0).to(weight.dtype)",
      "dw = dw_part[0].to(weight.dtype)", RMS),
    M("rms_bwd_last_row_band", OPS + "rms_norm.py", "row_end = tl.minimum(row_start + rows_per_program, n_rows)",
      "row_end = tl.minimum(row_start + rows_per_program, n_rows - 1)", RMS),
    # --- RoPE ----------------------------------------------------------------------------------------------
    M("rope_bwd_sign", OPS + "rope.py", "o2 = x2 * c2 - x1 * s1", "o2 = x2 * c2 + x1 * s1", ROPE),
    M("rope_fwd_first_half_cos_only", OPS + "rope.py", "o2 = x2 * c2 + x1 * s2", "o2 = x2 * c1 + x1 * s2", ROPE),
    M("rope_k_read_with_q_stride", OPS + "rope.py", "_rotate_rows(K + b * sk_b + t * sk_t", "_rotate_rows(K + b * sk_b + t * sq_t",
      ROPE, PROPS),
    M("rope_cache_write_wrong_position", OPS + "rope.py", "_load_cos_sin(COS + pos * s_cos_t, SIN + pos * s_cos_t",
      "_load_cos_sin(COS + (pos // 2) * s_cos_t, SIN + (pos // 2) * s_cos_t", ROPE, PROPS,
      why="RoPE applied at the wrong position in the decode step"),
    M("rope_cache_write_v_slot", OPS + "rope.py", "tl.store(VC + b * svc_b + pos * svc_t", "tl.store(VC + b * svc_b + 0 * svc_t",
      ROPE, PROPS),
    # --- SiLU * mul ----------------------------------------------------------------------------------------
    M("swiglu_bwd_sigmoid_derivative", OPS + "swiglu.py", "(1.0 + g * (1.0 - sig))", "(1.0 + g * (1.0 + sig))", SWI),
    M("swiglu_bwd_du_uses_sigmoid", OPS + "swiglu.py", "(dy * silu).to(DU.dtype.element_ty)", "(dy * sig).to(DU.dtype.element_ty)", SWI),
    M("swiglu_fwd_up_row_stride", OPS + "swiglu.py", "u = tl.load(U + row * stride_u + cols, mask=mask, other=0.0).to(tl.float32)\n    y",
      "u = tl.load(U + row * n_cols + cols, mask=mask, other=0.0).to(tl.float32)\n    y", SWI, PROPS),
    M("swiglu_fwd_1pct", OPS + "swiglu.py", "y = g * tl.sigmoid(g) * u", "y = g * tl.sigmoid(g) * u * 1.01", SWI,
      why="a 1% systematic error: inside the old 4-ulp floor, outside the RMS rule"),
    # --- flash-attention -----------------------------------------------------------------------------------
    M("attn_fwd_3pct", OPS + "attention.py", "tl.store(O + b * so_b + h * so_h + offs_m[:, None] * so_m + offs_d[None, :], out.to(",
      "tl.store(O + b * so_b + h * so_h + offs_m[:, None] * so_m + offs_d[None, :], (out * 1.03).to(", ATT,
      why="a 3% systematic error in attention's output"),
    M("attn_fwd_causal_off_by_one", OPS + "attention.py", "valid = valid & (n[None, :] <= offs_m[:, None] + OFFSET)\n        if HAS_MASK and not KEY_MASK:\n            mk = tl.load(MASK + mask_base + n[None, :] * stride_mn, mask=valid, other=0)\n            valid = valid & (mk != 0)\n        s = tl.where",
      "valid = valid & (n[None, :] < offs_m[:, None] + OFFSET)\n        if HAS_MASK and not KEY_MASK:\n            mk = tl.load(MASK + mask_base + n[None, :] * stride_mn, mask=valid, other=0)\n            valid = valid & (mk != 0)\n        s = tl.where", ATT),
    M("attn_fwd_mask_query_stride", OPS + "attention.py", "mask_base = b * smk_b + h * smk_h + offs_m[:, None] * smk_m\n    k_desc",
      "mask_base = b * smk_b + h * smk_h + offs_m[:, None] * 0\n    k_desc", ATT, PROPS,
      why="a mask read with the wrong stride: only a per-query mask sees it"),
    M("attn_fwd_band_end_uses_block_n", OPS + "attention.py", "hi = tl.minimum(Tk, m_start + BLOCK_M + OFFSET)",
      "hi = tl.minimum(Tk, m_start + BLOCK_N + OFFSET)", ATT,
      why="equivalent with 16x16 tiles; wrong with the GPU's 128x64"),
    M("attn_gqa_wrong_kv_head", OPS + "attention.py", "return pid_bh, pid_bh // H, h, h // GROUP,",
      "return pid_bh, pid_bh // H, h, h % (H // GROUP),", ATT),
    M("attn_bwd_delta_sign", OPS + "attention.py", "ds = p * (_dot(do, vt, IEEE) - delta[:, None])",
      "ds = p * (_dot(do, vt, IEEE) + delta[:, None])", ATT, why="a wrong sign in a backward"),
    M("attn_bwd_dq_scale", OPS + "attention.py", "(dq * scale).to(DQ.dtype.element_ty)", "dq.to(DQ.dtype.element_ty)", ATT),
    M("attn_bwd_dkdv_first_group_head", OPS + "attention.py", "for g in range(0, GROUP):", "for g in range(0, 1):", ATT),
    M("attn_bwd_dkdv_causal_start", OPS + "attention.py", "lo = tl.maximum(n_start - OFFSET, 0) // BLOCK_M * BLOCK_M",
      "lo = tl.maximum(n_start - OFFSET, 0) // BLOCK_M * BLOCK_M + BLOCK_M", ATT),
    # --- flash-decoding ------------------------------------------------------------------------------------
    M("decode_excludes_new_token", OPS + "decode_attention.py", "limit = length - Tq + 1 + t", "limit = length - Tq + t",
      DEC),
    M("decode_key_mask_ignored", OPS + "decode_attention.py", "valid = valid & (km != 0)[None, :]", "valid = valid", DEC),
    M("decode_split_drops_last_key", OPS + "decode_attention.py", "hi = tl.minimum(lo + chunk, length)",
      "hi = tl.minimum(lo + chunk - 1, length)", DEC),
    M("decode_combine_exp_base", OPS + "decode_attention.py", "w = tl.math.exp2(lse - m_safe)\n    total = tl.sum(w, 0)",
      "w = tl.math.exp(lse - m_safe)\n    total = tl.sum(w, 0)", DEC),
    M("decode_combine_3pct", OPS + "decode_attention.py", "out = tl.sum(parts * w[:, None], 0) / tl.where(total == 0.0, 1.0, total)",
      "out = 1.03 * tl.sum(parts * w[:, None], 0) / tl.where(total == 0.0, 1.0, total)", DEC),
    M("decode_one_split_not_direct", OPS + "decode_attention.py", "p.direct = p.splits == 1", "p.direct = False",
      T + "test_attention_variants.py::test_decode_one_split_is_one_launch",
      why="one split still launches the combine (two launches where one does)"),
    M("decode_direct_rows_unmasked", OPS + "decode_attention.py",
      "out.to(O.dtype.element_ty), mask=row_ok[:, None] & (offs_d[None, :] < D))",
      "out.to(O.dtype.element_ty), mask=(offs_d[None, :] < D))",
      T + "test_attention_variants.py::test_decode_variants", T + "test_attention_variants.py::test_decode_one_split_is_one_launch",
      why="the one-split store writes the padded rows of the tile into other heads' outputs"),
    M("decode_group_merge_row_order", OPS + "decode_attention.py", "g = r // Tq\n    t = r % Tq\n    tl.store(o_base",
      "g = r % Tq\n    t = r // Tq\n    tl.store(o_base", T + "test_attention_variants.py::test_decode_variants",
      why="the fused one-pass merge writes row (g, t) to (t, g) (Tq > 1)"),
    M("decode_splits_not_pow2_floor", OPS + "decode_attention.py", "want = 1 << (want.bit_length() - 1)",
      "want = 1 << want.bit_length()", T + "test_gpu_tiles.py::test_decode_split_counts"),
    M("decode_hot_scale_ignored", OPS + "decode_attention.py", "and scale == hot_scale and not", "and not",
      T + "test_hot_plans.py::test_decode_hot_plan", why="a hot plan reused for another softmax scale"),
    M("decode_hot_stale_settings", OPS + "decode_attention.py", "and _plans is _CALLS.source and not", "and not",
      T + "test_hot_plans.py::test_decode_hot_plan", why="a hot plan outliving swapped launch settings"),
    M("rope_hot_check_skipped", OPS + "rope.py", "if check(q, k, cos, sin) and not", "if True and not",
      T + "test_hot_plans.py::test_rope_hot_plan", why="the hot plan taken without testing the tensors' facts"),
    # --- skinny GEMM ---------------------------------------------------------------------------------------
    M("linear_last_k_chunk_only", OPS + "linear.py", "acc += _dot(x, tl.trans(w), IEEE)", "acc = _dot(x, tl.trans(w), IEEE)", LIN),
    M("linear_weight_row_stride", OPS + "linear.py", "w = tl.load(W + n[:, None] * sw_n", "w = tl.load(W + n[:, None] * K",
      LIN, PROPS, why="a weight that is a row slice of a fused projection"),
    M("linear_bias_dropped", OPS + "linear.py", "acc += tl.load(B + n, mask=n < N, other=0.0)", "acc += 0.0 * tl.load(B + n, mask=n < N, other=0.0)",
      LIN),
    M("linear_falls_back_silently", OPS + "linear.py", "if (rows > MAX_ROWS or not use_triton(x)", "if (True or rows > MAX_ROWS or not use_triton(x)",
      LIN, why="the kernel never runs and F.linear answers: a test must see which path ran"),
    # --- HF patch ------------------------------------------------------------------------------------------
    M("patch_mlp_gate_up_swapped", "litekernels/modules.py", "gate, up = self.gate_proj(x), self.up_proj(x)",
      "gate, up = self.up_proj(x), self.gate_proj(x)", PATCH),
    M("patch_rope_cos_sin_swapped", "patches/__init__.py", "return apply_rope_unchecked(q, k, cos, sin)",
      "return apply_rope_unchecked(q, k, sin, cos)", PATCH),
    M("patch_attention_not_causal", "patches/attention.py", 'causal = getattr(module, "is_causal", True)', "causal = False", PATCH),
    M("patch_decode_key_mask_dropped", "patches/attention.py", "key_mask = None\n        if mask is not None:",
      "key_mask = None\n        if False:", PATCH, why="left padding ignored in HF's static-cache decode step"),
    M("patch_int_mask_inverted", "patches/attention.py", "None if mask.is_floating_point() else mask != 0",
      "None if mask.is_floating_point() else mask == 0", PATCH, why="an integer 4-D mask read as 'nonzero = blocked'"),
    M("patch_eager_bool_mask_inverted", "patches/attention.py", ".masked_fill(\n                ~attention_mask,",
      ".masked_fill(\n                attention_mask,", T + "test_families.py::test_sliding_window_patched_matches_unpatched",
      why="a bool mask made additive for HF eager (sliding window) with the wrong polarity"),
    M("patch_rms_eps_ignored", "litekernels/modules.py", "LF.rms_norm(hidden_states, _local(self.weight), self.variance_epsilon)",
      "LF.rms_norm(hidden_states, _local(self.weight), 1e-6)", PATCH),
    # --- fused linear cross-entropy -------------------------------------------------------------------------
    M("ce_fwd_online_rescale_dropped", OPS + "cross_entropy.py", "s = s * tl.exp(m - m_new) + tl.sum", "s = s + tl.sum", CE,
      why="the online log-sum-exp forgets to rescale earlier vocab blocks (only a row longer than one block sees it)"),
    M("ce_fwd_loss_target_term", OPS + "cross_entropy.py", "loss = lse - (1.0 - label_smoothing) * z_y", "loss = lse - z_y", CE,
      why="label smoothing left out of the target term of the loss"),
    M("ce_fwd_smoothing_mean_over_block", OPS + "cross_entropy.py", "loss -= label_smoothing / n_cols * sum_z",
      "loss -= label_smoothing / BLOCK * sum_z", CE),
    M("ce_grad_target_sign", OPS + "cross_entropy.py", "g -= tl.where(cols == label, 1.0 - label_smoothing, 0.0)",
      "g += tl.where(cols == label, 1.0 - label_smoothing, 0.0)", CE, why="a wrong sign in a backward"),
    M("ce_grad_smoothing_dropped", OPS + "cross_entropy.py", "            g -= label_smoothing / n_cols\n",
      "            g -= 0.0 * label_smoothing / n_cols\n", CE),
    M("ce_ignore_index_gets_gradient", OPS + "cross_entropy.py", "scale = tl.where(ignored, 0.0, scale)", "scale = scale", CE),
    M("ce_ignore_index_gets_loss", OPS + "cross_entropy.py", "tl.store(LOSS + row, tl.where(ignored, 0.0, loss))",
      "tl.store(LOSS + row, loss)", CE),
    M("ce_softcap_fwd_half_argument", OPS + "cross_entropy.py", "2.0 * tl.sigmoid(2.0 * x / softcap) - 1.0",
      "2.0 * tl.sigmoid(x / softcap) - 1.0", CE),
    M("ce_softcap_grad_factor", OPS + "cross_entropy.py", "g *= 1.0 - t * t", "g *= 1.0 - t", CE),
    M("ce_z_loss_grad_factor", OPS + "cross_entropy.py", "p_scale = 1.0 + 2.0 * z_loss * lse", "p_scale = 1.0 + z_loss * lse", CE),
    M("ce_chunk_grad_weight_last_chunk_only", OPS + "cross_entropy.py", "first=s == 0)\n    del buf", "first=True)\n    del buf", CE,
      why="grad_weight overwritten by each chunk instead of accumulated (a chunk boundary)"),
    M("ce_chunk_recompute_upstream_rows", OPS + "cross_entropy.py", "g_rows[s:e], scale_stride=g_rows.stride(0)",
      "g_rows, scale_stride=g_rows.stride(0)", CE, why="reduction='none' backward: every chunk scaled by the first rows' gradient"),
    M("ce_n_items_ignored", OPS + "cross_entropy.py", "divisor = _mean_divisor(labels, ignore_index, n_items)",
      "divisor = _mean_divisor(labels, ignore_index, None)", CE),
    M("ce_upstream_grad_ignored_for_weight", OPS + "cross_entropy.py", "gw = scale_inplace(gw, go).to(ctx.weight_dtype)",
      "gw = gw.to(ctx.weight_dtype)", CE),
    # --- causal-LM patch (fused loss) -----------------------------------------------------------------------
    M("causal_lm_labels_not_shifted", "patches/causal_lm.py", "F.pad(labels, (0, 1), value=ignore_index)[..., 1:]",
      "F.pad(labels, (0, 1), value=ignore_index)[..., :-1]", CEP),
    M("causal_lm_num_items_dropped", "patches/causal_lm.py", "n_items=num_items_in_batch,", "n_items=None,", CEP,
      why="gradient accumulation's num_items_in_batch ignored: mean over this batch's labels instead"),
    M("causal_lm_fused_in_eval", "patches/causal_lm.py", "if not model.training or (", "if (", CEP,
      why="eval forward with labels loses its logits"),
    # --- torch.library registration ------------------------------------------------------------------------
    M("library_fake_decode_linear_shape", "litekernels/library.py", "x.new_empty((*x.shape[:-1], weight.shape[0]))",
      "x.new_empty((*x.shape[:-1], weight.shape[1]))", LIB),
    M("library_fake_attention_lse_dtype", "litekernels/library.py", "q.new_empty((B, H, Tq), dtype=torch.float32)",
      "q.new_empty((B, H, Tq))", T + "test_library.py::test_meta_tensors_go_through_the_fake_implementations", LIB),
    M("library_silu_backward_routed_swapped", "litekernels/library.py",
      "return torch.ops.litekernels.silu_mul_backward(dy, gate, up)", "return torch.ops.litekernels.silu_mul_backward(dy, up, gate)",
      LIB),
    M("library_rms_backward_drops_dweight", "litekernels/library.py", "return dx, dw, None", "return dx, None, None", LIB),
    # --- runtime: zero-copy fused projections, families -----------------------------------------------------
    M("runtime_rebind_wrong_rows", "litekernels/generation/runtime.py", "        t.data = fused[row: row + t.shape[0]]",
      "        t.data = fused[0: t.shape[0]]", RTM, GEN),
    M("runtime_adjacent_view_offset", "litekernels/generation/runtime.py",
      "return first.detach().as_strided(shape, strides, first.storage_offset())",
      "return first.detach().as_strided(shape, strides, first.storage_offset() + 1)", RTM, GEN,
      why="a second runtime views the already-fused parameters one element off"),
    M("runtime_gate_up_swapped", "litekernels/generation/runtime.py", "gate, up = self._proj(x, L.gu).split(", "up, gate = self._proj(x, L.gu).split(",
      GEN),
    M("runtime_qk_norm_skipped", "litekernels/generation/runtime.py", "if L.q_norm is not None:  # Qwen3", "if False:  # Qwen3", FAM),
    M("runtime_k_norm_uses_q_weight", "litekernels/generation/runtime.py", "qkv[..., H:H + KV, :], L.k_norm, L.qk_eps",
      "qkv[..., H:H + KV, :], L.q_norm, L.qk_eps", FAM),
    M("runtime_fused_bias_dropped", "litekernels/generation/runtime.py", "    if all(with_bias):\n        b = _adjacent(bs)",
      "    if False:\n        b = _adjacent(bs)", FAM, why="Qwen2's q/k/v bias lost when the projections are fused"),
    M("runtime_prefill_v_written_as_k", "litekernels/generation/runtime.py", "self.v_cache[i, :B, :, :T] = v",
      "self.v_cache[i, :B, :, :T] = k", GEN),
    # --- generate(): weight checks and the per-model lock ---------------------------------------------------
    M("api_reassigned_parameter_ignored", "litekernels/generation/api.py", "            if d.get(k) is not v:\n                return True",
      "            if False:\n                return True", SAFE, why="a parameter replaced by a new one is not noticed"),
    M("api_new_storage_ignored", "litekernels/generation/api.py", "if param_versions_matter or [(s[0], s[2], s[3]) for s in now] != [(s[0], s[2], s[3]) for s in self.param_state]:",
      "if param_versions_matter:",
      T + "test_generation_safety.py::test_runtime_follows_load_state_dict_reassignment_and_in_place_writes", SAFE, why="a parameter given new storage (param.data = ...) is not noticed"),
    M("api_generate_lock_not_taken", "litekernels/generation/api.py",
      "    st = _state(model)\n    with st.lock:\n        # greedy: the whole step",
      "    st = _state(model)\n    with __import__('contextlib').nullcontext():\n        # greedy: the whole step", SAFE),
    # --- flash-decoding launch plans, attention backward preprocess -----------------------------------------
    M("decode_plan_key_ignores_mask", OPS + "decode_attention.py", "q.dtype, q.device, has_mask, config_key(config), splits)",
      "q.dtype, q.device, config_key(config), splits)", DEC, ATTV, why="a plan built without a key mask reused for a masked call"),
    M("decode_plan_key_ignores_tq", OPS + "decode_attention.py", "key = (B, H, k_cache.shape[1], L, D, Tq, q.dtype",
      "key = (B, H, k_cache.shape[1], L, D, q.dtype", DEC, ATTV),
    M("attn_bwd_delta_uses_o_twice", OPS + "attention.py", "delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)",
      "delta = tl.sum(o.to(tl.float32) * o.to(tl.float32), 1)", ATT, ATTV),
    M("attn_bwd_delta_last_row_unwritten", OPS + "attention.py", "tl.store(DELTA + pid_bh * Tq + offs_m, delta, mask=offs_m < Tq)",
      "tl.store(DELTA + pid_bh * Tq + offs_m, delta, mask=offs_m < Tq - 1)", ATT, ATTV),
    # --- shared Triton helpers (attention and decode), family registry entries -----------------------------
    M("tl_common_acc_not_rescaled", OPS + "_tl_common.py", "acc = acc * alpha[:, None] + _dot(", "acc = acc + _dot(", ATT, DEC,
      why="the online softmax forgets to rescale the accumulator when the running max grows"),
    # (no mutant for _finish_rows' EMPTY_LSE: it is equivalent - decode stores -inf either way, and flash-attention's
    # backward zeroes every score of a fully masked row with tl.where before the lse can matter; checked 2026-11-29)
    M("qwen2_window_never_active", "patches/qwen2.py", 'if "sliding_attention" in', 'if "no_such_layer_type" in', FAM),
    M("mistral_window_ignored", "patches/mistral.py", '    return getattr(config, "sliding_window", None)', "    return None", FAM),
    M("qwen3_k_norm_path_is_q_norm", "patches/qwen3.py", 'k_norm="self_attn.k_norm"', 'k_norm="self_attn.q_norm"', FAM),
    # --- generation runtime --------------------------------------------------------------------------------
    M("runtime_decode_length_off_by_one", "litekernels/generation/runtime.py",
      "h = F.embedding(tokens[:, None], self.embed)\n        lengths = (positions + 1).to(torch.int32)",
      "h = F.embedding(tokens[:, None], self.embed)\n        lengths = positions.to(torch.int32)",
      T + "test_decode_fused.py::test_runtime_fused_equals_unfused", GEN,
      why="the new token does not attend to itself (the unfused step; the interpreter's default is the fused one)"),
    M("runtime_fused_decode_length_off_by_one", "litekernels/generation/runtime.py",
      "h = F.embedding(tokens, self.embed)  # (B, hidden)\n        lengths = (positions + 1).to(torch.int32)",
      "h = F.embedding(tokens, self.embed)  # (B, hidden)\n        lengths = positions.to(torch.int32)",
      T + "test_decode_fused.py::test_runtime_fused_equals_unfused", T + "test_decode_mixed.py",
      why="the fused step's new token does not attend to itself (fp16/bf16 models: GEN's fp32 ones run unfused)"),
    M("runtime_prefill_last_token_of_padded_batch", "litekernels/generation/runtime.py", "last = torch.as_tensor([n - 1 for n in lens]",
      "last = torch.as_tensor([T - 1 for n in lens]", GEN, why="ragged batch: logits taken at a padding position"),
    M("runtime_post_norm_weight", "litekernels/generation/runtime.py", "LF.fused_add_rms_norm(a, residual, L.w_post, L.eps_post)",
      "LF.fused_add_rms_norm(a, residual, L.w_in, L.eps_post)", GEN),
    M("runtime_attention_scale_3pct", "litekernels/generation/runtime.py", "self.scale = float(get_path(layers[0], arch.attention).scaling)",
      "self.scale = float(get_path(layers[0], arch.attention).scaling) * 1.03", GEN),
    M("runtime_decode_rope_position_shift", "litekernels/generation/runtime.py",
      "q = LF.rope_cache_write(qkv[:, 0], self.cos, self.sin, positions, kc, vc, self.n_heads, self.n_kv)",
      "q = LF.rope_cache_write(qkv[:, 0], self.cos.roll(1, 0), self.sin.roll(1, 0), positions, kc, vc, self.n_heads, self.n_kv)",
      GEN, why="RoPE at position p-1 in every decode step (prefill is right)"),
    M("runtime_eps_dropped", "litekernels/generation/runtime.py", "self.eps = norm_mod.variance_epsilon", "self.eps = 0.0",
      T + "test_generation.py::test_runtime_reads_each_norms_own_eps", GEN,
      why="only the final norm reads self.eps: its input is O(1), so only a large eps shows"),
    M("runtime_layer_eps_swapped", "litekernels/generation/runtime.py", "LF.fused_add_rms_norm(h, residual, L.w_in, L.eps_in)",
      "LF.fused_add_rms_norm(h, residual, L.w_in, L.eps_post)", T + "test_generation.py::test_runtime_reads_each_norms_own_eps", GEN),
    M("api_positions_not_advanced", "litekernels/generation/api.py", "                positions += 1  # (every row",
      "                positions += 0  # (every row", GEN),
    M("greedy_steps_positions_not_advanced", "litekernels/generation/runtime.py",
      "self.pos += (~self.fin).long()", "self.pos += 0 * (~self.fin).long()", GEN),
    M("greedy_steps_history_off_by_one", "litekernels/generation/runtime.py",
      "self.hist.scatter_(1, self.step.expand(", "self.hist.scatter_(1, (self.step - 1).expand(", GEN),
    M("greedy_steps_eos_ignored", "litekernels/generation/runtime.py",
      "return (tok[:, None] == self.eos[None, :]).any(-1) | (last <= step)", "return last <= step", GEN),
    # --- fused decode kernels, direct launcher, memory-lean MLP backward ---------------------------------------
    M("decode_fused_rope_sign", "litekernels/ops/decode_fused.py", "o1 = tl.where(rot, x1 * c1 - x2 * s1, x1)",
      "o1 = tl.where(rot, x1 * c1 + x2 * s1, x1)", T + "test_decode_fused.py::test_norm_gemv_rope_cache"),
    M("decode_fused_silu_on_up", "litekernels/ops/decode_fused.py", "(g * tl.sigmoid(g) * u)", "(u * tl.sigmoid(u) * g)",
      T + "test_decode_fused.py::test_norm_gemv_silu_mul"),
    M("decode_fused_one_chunk_residual_never_written", "litekernels/ops/decode_fused.py",
      "mask=(m[:, None] < tl.where(pid == 0, M, 0))", "mask=(m[:, None] < tl.where(pid == 0, 0, 0))",
      T + "test_decode_fused.py::test_norm_gemv_none"),
    M("decode_fused_one_chunk_no_norm_weight", "litekernels/ops/decode_fused.py",
      "a_all = (xn * nw_all[None, :]).to(X.dtype.element_ty)", "a_all = xn.to(X.dtype.element_ty)",
      T + "test_decode_fused.py::test_norm_gemv_none", T + "test_decode_fused.py::test_norm_gemv_silu_mul"),
    M("decode_fused_one_chunk_tile_not_advanced", "litekernels/ops/decode_fused.py",
      "                wa = na\n                if PAIRED:\n                    wb = nb",
      "                wa = wa\n                if PAIRED:\n                    wb = nb",
      T + "test_decode_fused.py::test_norm_gemv_none", T + "test_decode_fused.py::test_gemv"),
    M("decode_fused_residual_never_written", "litekernels/ops/decode_fused.py", "m_write = tl.where(pid == 0, M, 0)",
      "m_write = tl.where(pid == 0, 0, 0)", T + "test_decode_fused.py::test_norm_gemv_none",
      T + "test_decode_fused.py::test_runtime_fused_equals_unfused"),
    M("launch_key_ignores_alignment", "litekernels/ops/_launch.py", "            add(not p & 15)", "            add(True)",
      T + "test_fast_launch.py"),
    M("launch_key_int_one_not_special", "litekernels/ops/_launch.py", "            if a == 1:\n                add(\"1\")",
      "            if a == 1:\n                add(\"N\")", T + "test_fast_launch.py"),
    M("silu_mul_linear_dw_from_gate", "litekernels/ops/swiglu.py", "dw = d2.t().mm(dy.view(-1, dy.shape[-1]))",
      "dw = d2.t().mm(gate.reshape(-1, gate.shape[-1]))", T + "test_train_memory.py"),
    M("silu_mul_linear_weight_only_dw_from_gate", "litekernels/ops/swiglu.py",
      "dw = d2.t().mm(y.reshape(-1, y.shape[-1]))", "dw = d2.t().mm(gate.reshape(-1, gate.shape[-1]))",
      T + "test_train_memory.py"),
    M("swiglu_bwd_recomputed_product_wrong", "litekernels/ops/swiglu.py",
      "tl.store(DY + row * stride_dy + cols, (silu * u)", "tl.store(DY + row * stride_dy + cols, (silu * g)",
      T + "test_train_memory.py"),
    M("silu_mul_linear_bias_grad_dropped", "litekernels/ops/swiglu.py", "return dg, du, dw, db if ctx.has_bias else None",
      "return dg, du, dw, None", T + "test_train_memory.py", T + "test_patches.py"),
    # --- the CLI's transformers-free weight container ----------------------------------------------------------
    M("lite_model_llama3_medium_band", "litekernels/generation/lite_model.py",
      "is_medium_freq = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)",
      "is_medium_freq = ~(wavelen < high_freq_wavelen) * (wavelen > low_freq_wavelen)", T + "test_lite_model.py"),
    M("lite_model_default_rope_half_dim", "litekernels/generation/lite_model.py",
      "return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float) / dim)), 1.0",
      "return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float) / (dim - 2))), 1.0", T + "test_lite_model.py"),
    M("lite_model_untied_head", "litekernels/generation/lite_model.py",
      "        model.lm_head.weight = model.model.embed_tokens.weight  # one Parameter, as HF ties them",
      "        pass", T + "test_lite_model.py"),
    M("sampling_top_p_keeps_one_more", "litekernels/generation/sampling.py", "drop = (probs.cumsum(-1) - probs) >= top_p",
      "drop = (probs.cumsum(-1) - 2 * probs) >= top_p", GEN),
    # --- key-padding masks (KEY_MASK) and the "lite" mask builder ---------------------------------------------
    M("key_mask_fwd_not_applied", "litekernels/ops/attention.py",
      "        s = tl.where(km[None, :] != 0, s, float(\"-inf\"))\n    if MASKED:", "    if MASKED:",
      T + "test_attention.py::test_flash_attention_key_mask_fast_path", T + "test_attention.py::test_flash_attention_left_padding_mask"),
    M("key_mask_bwd_not_applied", "litekernels/ops/attention.py", "        valid = valid & (km[None, :] != 0)\n    elif HAS_MASK:",
      "        valid = valid\n    elif HAS_MASK:", T + "test_attention.py::test_flash_attention_key_mask_fast_path"),
    M("key_mask_taken_for_per_query_masks", "litekernels/ops/attention.py",
      "(ms[1] == 0 or H == 1) and (ms[2] == 0 or Tq == 1)", "(ms[1] == 0 or H == 1)",
      T + "test_attention.py::test_flash_attention_per_query_mask"),
    M("lite_mask_drops_padding", "patches/attention.py",
      "            if pad is None or (not tracing() and bool(pad.all())):", "            if True:",
      T + "test_patches.py::test_lite_mask_key_row_on_the_kernel_and_the_eager_fallback",
      T + "test_patches.py::test_generate_greedy_matches_with_left_padding"),
    M("lite_attention_ignores_call_is_causal", "patches/attention.py", '    causal = kwargs.get("is_causal")\n',
      "    causal = None\n", T + "test_patches.py::test_lite_attention_reads_the_calls_is_causal_and_keeps_paths_consistent"),
    M("eager_fallback_forgets_causal_of_key_row", "patches/attention.py",
      "            attention_mask = attention_mask & torch.ones(Tq, Tk, dtype=torch.bool, device=query.device).tril(Tk - Tq)",
      "            attention_mask = attention_mask",
      T + "test_patches.py::test_lite_mask_key_row_on_the_kernel_and_the_eager_fallback"),
    # --- attention mode "auto" (patches/attention.py lite_auto_attention_forward) ----------------------------
    M("auto_sends_masked_calls_to_sdpa", "patches/attention.py",
      "    if attention_mask is None and query.shape[2] > 1 and softcap is None",
      "    if query.shape[2] > 1 and softcap is None", T + "test_attention_auto.py"),
    M("auto_sends_decode_to_sdpa", "patches/attention.py",
      "attention_mask is None and query.shape[2] > 1 and", "attention_mask is None and query.shape[2] >= 1 and",
      T + "test_attention_auto.py"),
    M("auto_mode_is_ours", "patches/__init__.py", 'ATTENTION_MODES = {"auto": "lite_auto",',
      'ATTENTION_MODES = {"auto": "lite",', T + "test_attention_auto.py"),
]


def _copy_tree(dst: Path) -> None:
    ignore = shutil.ignore_patterns(".git", "__pycache__", "*.pyc", ".pytest_cache", ".hypothesis", "results", "img",
                                    "*.egg-info")
    shutil.copytree(ROOT, dst, symlinks=True, ignore=ignore)
    # `litekernels.patches` is the top-level patches/ folder (a package-dir mapping): in an editable install the
    # import would resolve to the ORIGINAL checkout's patches/, so a mutant planted there would never run. A link
    # inside the copy makes the copy's own patches/ the one imported (PYTHONPATH puts the copy first).
    link = dst / "litekernels" / "patches"
    if not link.exists():
        link.symlink_to(Path("..") / "patches", target_is_directory=True)


def _pytest(where: Path, tests, timeout: float) -> tuple[str, float, str]:
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONDONTWRITEBYTECODE="1", PYTHONPATH=str(where))
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-m", "not gpu and not slow", *tests]
    t0 = time.time()
    try:
        p = subprocess.run(cmd, cwd=where, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", time.time() - t0, ""
    tail = (p.stdout + p.stderr).strip().splitlines()
    line = next((ln for ln in reversed(tail) if "passed" in ln or "failed" in ln or "error" in ln), tail[-1] if tail else "")
    return ("pass" if p.returncode == 0 else "fail"), time.time() - t0, line


def _run_tests(where: Path, tests, timeout: float) -> tuple[str, float, str]:
    """The targeted tests (node ids) first; only when they all pass, the whole files (pytest would otherwise
    run a file's tests in file order, whatever order the node ids were given in)."""
    nodes = [t for t in tests if "::" in t]
    files = [t for t in tests if "::" not in t]
    status, secs, line = _pytest(where, nodes, timeout) if nodes else ("pass", 0.0, "")
    if status == "pass" and files:
        status, more, line = _pytest(where, files, timeout)
        secs += more
    return status, secs, line


def _check_applies(m: Mutation) -> None:
    text = (ROOT / m.file).read_text()
    n = text.count(m.old)
    if n != 1:
        raise SystemExit(f"mutation {m.name}: {m.old!r} occurs {n} times in {m.file} (must be exactly once)")


def _worker(m: Mutation, copy: Path, timeout: float):
    path = copy / m.file
    original = path.read_text()
    try:
        path.write_text(original.replace(m.old, m.new, 1))
        status, secs, line = _run_tests(copy, m.tests, timeout)
    finally:
        path.write_text(original)
    return m, ("caught" if status == "fail" else "caught (timeout)" if status == "timeout" else "SURVIVED"), secs, line


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--list", action="store_true", help="print the mutations and exit")
    ap.add_argument("--only", help="run the mutations whose name contains this (comma-separated)")
    ap.add_argument("-j", type=int, default=1, help="parallel workers (one repository copy each)")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per mutant's test run")
    ap.add_argument("--no-baseline", action="store_true", help="skip the unmutated run")
    args = ap.parse_args(argv)
    todo = MUTATIONS
    if args.only:
        keys = args.only.split(",")
        todo = [m for m in MUTATIONS if any(k in m.name for k in keys)]
    for m in todo:
        _check_applies(m)
    if args.list:
        for m in todo:
            print(f"{m.name:42s} {m.file:38s} {' '.join(m.tests)}")
            if m.why:
                print(f"{'':42s} ({m.why})")
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="lite-mutate-"))
    copies = []
    try:
        for i in range(max(1, args.j)):
            _copy_tree(tmp / f"w{i}")
            copies.append(tmp / f"w{i}")
        probe = subprocess.run([sys.executable, "-c", "import litekernels; print(litekernels.__file__)"], cwd=copies[0],
                               env=dict(os.environ, PYTHONPATH=str(copies[0])), capture_output=True, text=True)
        if not probe.stdout.strip().startswith(str(copies[0])):
            print(f"the copy imports litekernels from {probe.stdout.strip() or probe.stderr}, not from {copies[0]}")
            return 2
        if not args.no_baseline:
            all_tests = sorted({t for m in todo for t in m.tests})
            status, secs, line = _run_tests(copies[0], all_tests, args.timeout * 3)
            print(f"baseline (unmutated): {status} in {secs:.0f}s  {line}", flush=True)
            if status != "pass":
                print("the unmutated tests do not pass; fix that first")
                return 2
        results = []
        free = list(copies)
        with cf.ThreadPoolExecutor(max_workers=len(copies)) as ex:
            pending = {}
            queue = list(todo)
            while queue or pending:
                while queue and free:
                    m, c = queue.pop(0), free.pop()
                    pending[ex.submit(_worker, m, c, args.timeout)] = c
                done, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                for fut in done:
                    free.append(pending.pop(fut))
                    m, verdict, secs, line = fut.result()
                    results.append((m, verdict, secs))
                    print(f"{verdict:17s} {m.name:42s} {secs:5.0f}s  {line}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    order = {m.name: i for i, m in enumerate(MUTATIONS)}
    results.sort(key=lambda r: order[r[0].name])
    caught = sum(v.startswith("caught") for _, v, _ in results)
    print()
    print(f"{'mutation':42s} {'file':38s} result")
    for m, v, _ in results:
        print(f"{m.name:42s} {m.file:38s} {v}")
    print(f"\nscore: {caught}/{len(results)} caught")
    return 0 if caught == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
