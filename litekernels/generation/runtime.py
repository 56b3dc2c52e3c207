"""A static-KV-cache runtime over a Hugging Face Llama model's weights, with CUDA-graph decode.

Invariants (the graph rules):
  * the cache (all layers, `max_batch` rows, `max_seq_len` slots) is allocated once, after loading;
  * prefill runs eagerly with flash-attention on right-padded prompts (sequence b's tokens sit in slots
    0..n_b-1, so causal attention never sees padding and no mask is needed);
  * a decode step is captured once per batch-size bucket (1, 2, 4, 8, ...) into a CUDA graph whose inputs
    are persistent buffers filled with `copy_` (token ids, positions); positions live on the device, so replay
    needs no host sync and lengths grow inside the graph (flash-decoding reads them);
  * warm-up and capture write only the last cache slot, which a sequence overwrites before it can attend it;
  * without CUDA (or with use_cuda_graph=False) the same step runs eagerly: graph output equals eager output.

Per layer a decode step launches: fused residual-add+RMSNorm, one GEMM for q/k/v (weights concatenated once
by the runtime; the HF parameters are untouched), one kernel for RoPE + the KV-cache write, flash-decoding
(split + combine), the o-projection, fused add+RMSNorm, one GEMM for gate/up, SiLU*mul and the down projection.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from .. import functional as LF


@dataclasses.dataclass
class _Layer:
    w_in: torch.Tensor
    w_post: torch.Tensor
    wqkv: torch.Tensor
    bqkv: torch.Tensor | None
    wo: torch.Tensor
    bo: torch.Tensor | None
    wgu: torch.Tensor
    bgu: torch.Tensor | None
    wdown: torch.Tensor
    bdown: torch.Tensor | None


def _cat(*ts):
    return None if ts[0] is None else torch.cat(ts, 0)


def _bucket(n: int) -> int:
    b = 1
    while b < n:
        b *= 2
    return b


class LlamaRuntime:
    """Inference runtime for a (patched or not) Llama-family `...ForCausalLM`.

    runtime = LlamaRuntime(model, max_batch=8, max_seq_len=2048)
    logits = runtime.prefill([[1, 2, 3], [4, 5]])          # (B, vocab) at each prompt's last token
    logits = runtime.decode(next_tokens, positions)         # one token per sequence
    """

    def __init__(self, model, *, max_batch: int = 8, max_seq_len: int = 2048, use_cuda_graph: bool | None = None,
                 skinny_gemm: bool | None = None):
        from litekernels.patches.registry import find_architecture

        find_architecture(model)  # TypeError for non-Llama models
        if max_batch < 1 or max_seq_len < 2:
            raise ValueError(f"max_batch must be >= 1 and max_seq_len >= 2, got {max_batch}, {max_seq_len}")
        cfg = model.config
        base = model.model
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.use_cuda_graph = (self.device.type == "cuda") if use_cuda_graph is None else use_cuda_graph
        if self.use_cuda_graph and self.device.type != "cuda":
            raise ValueError("use_cuda_graph=True needs the model on a CUDA device")
        self.config = cfg
        # Opt-in: decode projections through our skinny GEMM (ops/linear.py). Measured end to end on an H200
        # (bench/results/generate-H200.json) it ties cuBLAS at batch 1 (870 vs 870 tok/s) and trails at batch 8
        # (6430 vs 6622), so cuBLAS (F.linear) is the default.
        self.skinny_gemm = bool(skinny_gemm)
        self._linear = LF.decode_linear if skinny_gemm else F.linear
        self.max_batch, self.max_seq_len = max_batch, max_seq_len
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.inter = cfg.intermediate_size
        self.eps = base.norm.variance_epsilon
        attn0 = base.layers[0].self_attn
        self.scale = float(attn0.scaling)
        with torch.no_grad():
            self.layers = []
            for layer in base.layers:
                a, m = layer.self_attn, layer.mlp
                self.layers.append(_Layer(
                    w_in=layer.input_layernorm.weight, w_post=layer.post_attention_layernorm.weight,
                    wqkv=_cat(a.q_proj.weight, a.k_proj.weight, a.v_proj.weight),
                    bqkv=_cat(a.q_proj.bias, a.k_proj.bias, a.v_proj.bias), wo=a.o_proj.weight, bo=a.o_proj.bias,
                    wgu=_cat(m.gate_proj.weight, m.up_proj.weight), bgu=_cat(m.gate_proj.bias, m.up_proj.bias),
                    wdown=m.down_proj.weight, bdown=m.down_proj.bias))
            self.embed = base.embed_tokens.weight
            self.norm_w = base.norm.weight
            self.lm_head = model.lm_head.weight
            self.lm_bias = getattr(model.lm_head, "bias", None)
            # cos/sin for every position, computed by HF's own rotary module (llama3 / yarn scaling included)
            pos = torch.arange(max_seq_len, device=self.device)[None]
            probe = torch.empty(1, dtype=self.dtype, device=self.device)
            cos, sin = base.rotary_emb(probe, pos)
            self.cos, self.sin = cos[0].contiguous(), sin[0].contiguous()  # (L, D)
            shape = (len(self.layers), max_batch, self.n_kv, max_seq_len, self.head_dim)
            self.k_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)
            self.v_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self._graphs: dict[int, tuple] = {}

    # ---------------------------------------------------------------------------------------------------------
    def _layers(self, h, attend):
        """The decoder stack; attend(i, qkv (B, T, H + 2*Hkv, D)) does RoPE, the cache write and attention."""
        H, KV, D = self.n_heads, self.n_kv, self.head_dim
        residual = None
        for i, L in enumerate(self.layers):
            if residual is None:
                x, residual = LF.rms_norm(h, L.w_in, self.eps), h
            else:
                x, residual = LF.fused_add_rms_norm(h, residual, L.w_in, self.eps)
            B, T, _ = x.shape
            o = attend(i, self._linear(x, L.wqkv, L.bqkv).view(B, T, H + 2 * KV, D))  # (B, H, T, D)
            h = self._linear(o.transpose(1, 2).reshape(B, T, H * D), L.wo, L.bo)
            x, residual = LF.fused_add_rms_norm(h, residual, L.w_post, self.eps)
            gate, up = self._linear(x, L.wgu, L.bgu).split(self.inter, dim=-1)
            h = self._linear(LF.silu_mul(gate, up), L.wdown, L.bdown)
        x, _ = LF.fused_add_rms_norm(h, residual, self.norm_w, self.eps)
        return x

    def _logits(self, x):
        return self._linear(x, self.lm_head, self.lm_bias)

    @torch.no_grad()
    def prefill(self, prompts: list[list[int]]) -> torch.Tensor:
        """Fill cache rows 0..B-1 with the prompts; returns logits (B, vocab) at each prompt's last token."""
        B = len(prompts)
        if B == 0:
            raise ValueError("prompts is empty")
        if B > self.max_batch:
            raise ValueError(f"{B} prompts exceed this runtime's max_batch={self.max_batch}")
        lens = [len(p) for p in prompts]
        if min(lens) == 0:
            raise ValueError("a prompt has no tokens")
        T = max(lens)
        if T > self.max_seq_len:
            raise ValueError(f"a prompt of {T} tokens exceeds the KV cache of {self.max_seq_len} slots")
        ids = torch.zeros(B, T, dtype=torch.long)
        for b, p in enumerate(prompts):
            ids[b, : len(p)] = torch.as_tensor(p, dtype=torch.long)
        ids = ids.to(self.device)
        h = F.embedding(ids, self.embed)
        cos, sin = self.cos[:T], self.sin[:T]
        H, KV = self.n_heads, self.n_kv

        def attend(i, qkv):
            q, k, v = (t.transpose(1, 2) for t in qkv.split([H, KV, KV], dim=2))
            q, k = LF.apply_rope(q, k, cos, sin)
            self.k_cache[i, :B, :, :T] = k
            self.v_cache[i, :B, :, :T] = v
            return LF.flash_attention(q, k, v, causal=True, scale=self.scale)

        x = self._layers(h, attend)
        last = torch.as_tensor([n - 1 for n in lens], device=self.device)
        return self._logits(x[torch.arange(B, device=self.device), last])

    def _decode_eager(self, tokens, positions):
        B = tokens.shape[0]
        h = F.embedding(tokens[:, None], self.embed)
        lengths = (positions + 1).to(torch.int32)

        def attend(i, qkv):
            kc, vc = self.k_cache[i, :B], self.v_cache[i, :B]
            # one kernel: RoPE on q and k, k and v written into slot positions[b] of row b
            q = LF.rope_cache_write(qkv[:, 0], self.cos, self.sin, positions, kc, vc, self.n_heads, self.n_kv)
            return LF.decode_attention(q, kc, vc, lengths, scale=self.scale)

        return self._logits(self._layers(h, attend)[:, 0])

    def _graph(self, bucket: int):
        if bucket not in self._graphs:
            tokens = torch.zeros(bucket, dtype=torch.long, device=self.device)
            # warm-up and capture write only the last slot, which a sequence overwrites before it attends it
            positions = torch.full((bucket,), self.max_seq_len - 1, dtype=torch.long, device=self.device)
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):  # JIT compilation and autotuning happen here, outside capture
                    self._decode_eager(tokens, positions)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                logits = self._decode_eager(tokens, positions)
            self._graphs[bucket] = (graph, tokens, positions, logits)
        return self._graphs[bucket]

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """One step: token b is written at cache slot positions[b] of row b; returns logits (B, vocab).

        tokens, positions: (B,) int64 on the runtime's device. Positions must be < max_seq_len (checked by the
        caller that owns them, without a device sync).
        """
        B = tokens.shape[0]
        if not self.use_cuda_graph:
            return self._decode_eager(tokens, positions)
        graph, s_tok, s_pos, s_logits = self._graph(min(_bucket(B), self.max_batch))
        s_tok[:B].copy_(tokens)
        s_pos[:B].copy_(positions)
        if B < s_tok.shape[0]:
            s_pos[B:].fill_(self.max_seq_len - 1)
        graph.replay()
        return s_logits[:B]

    def capture(self, batch_size: int) -> None:
        """Capture the decode graph for `batch_size`'s bucket now (otherwise done at its first decode)."""
        if self.use_cuda_graph:
            self._graph(min(_bucket(batch_size), self.max_batch))
