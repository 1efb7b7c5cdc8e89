"""A lean re-statement of TransformerLens blocks for the fast path's per-step suffix run.

Context:
    On short prompts a training step is dominated by per-operation overhead, not arithmetic:
    a TransformerLens block runs about sixty small tensor operations and hook calls (a layer
    norm written out by hand, einops rearranges, a causal mask rebuilt per call, W_O copied per
    call). For the architectures it supports, ``LeanStack`` computes the same function with
    fused weights prepared once (QKV as one matrix, W_O flattened), ``F.layer_norm`` /
    ``F.rms_norm``, the causal-and-padding mask of the suffix prepared once, and rotary keys of
    the cached prefix rotated once. Everything else (MLPs, rotary helpers) is TransformerLens's
    own code. ``lean_unsupported_reason`` names the first feature it does not cover; the fast
    path then runs TransformerLens's blocks instead. Tests hold both against the naive path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float

from transformer_lens.utilities.activation_functions import apply_softcap

_NORMS = {"LayerNorm": "LN", "LayerNormPre": "LNPre", "RMSNorm": "RMS", "RMSNormPre": "RMSPre", "Identity": None}
_OFF_FLAGS = ("use_attn_in", "use_split_qkv_input", "use_qk_norm", "use_logn_attn", "use_attention_sinks",
              "use_normalization_before_and_after", "load_in_4bit", "use_dynamic_ntk_rope")


def lean_unsupported_reason(model, layers: range) -> str | None:
    """Why the lean path cannot run ``layers`` of ``model`` (None when it can)."""
    from transformer_lens.components import Attention, GroupedQueryAttention, TransformerBlock
    from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES

    cfg = model.cfg
    for flag in _OFF_FLAGS:
        if getattr(cfg, flag, False):
            return f"cfg.{flag}"
    if getattr(cfg, "clip_qkv", None) is not None:
        return "cfg.clip_qkv"
    if cfg.original_architecture in POST_NORM_ARCHITECTURES or (cfg.original_architecture or "").startswith("Olmo"):
        return f"architecture {cfg.original_architecture}"
    if cfg.positional_embedding_type not in ("standard", "rotary"):
        return f"positional embedding {cfg.positional_embedding_type!r}"
    if cfg.attention_dir != "causal":
        return "bidirectional attention"
    if cfg.n_devices > 1:
        return "a model split over several devices"
    if getattr(cfg, "num_experts", None):
        return "mixture-of-experts MLP"
    for layer in layers:
        block = model.blocks[layer]
        if type(block) is not TransformerBlock:
            return f"block type {type(block).__name__}"
        if type(block.attn) not in (Attention, GroupedQueryAttention):
            return f"attention type {type(block.attn).__name__}"
        if block.attn.attn_type != "global" or getattr(block.attn, "_attention_dir_override", None) not in (None, "causal"):
            return "local attention"
        for name in ("ln1", "ln2"):
            mod = getattr(block, name, None)
            if mod is not None and type(mod).__name__ not in _NORMS:
                return f"normalisation {type(mod).__name__}"
    ln_final = getattr(model, "ln_final", None)
    if ln_final is not None and type(ln_final).__name__ not in _NORMS:
        return f"normalisation {type(model.ln_final).__name__}"
    return None


def norm(mod, x: torch.Tensor) -> torch.Tensor:
    """TransformerLens's LayerNorm / LayerNormPre / RMSNorm / RMSNormPre / Identity as one fused op."""
    kind = _NORMS[type(mod).__name__]
    if kind is None:
        return x
    dtype = x.dtype
    if dtype not in (torch.float32, torch.float64):  # TransformerLens normalises in float32
        y = F.layer_norm(x.float(), x.shape[-1:], eps=mod.eps) if kind.startswith("LN") else F.rms_norm(x.float(), x.shape[-1:], eps=mod.eps)
        y = y.to(dtype)
        if kind == "LN":
            return y * mod.w + mod.b
        return y * mod.w if kind == "RMS" else y
    if kind == "LN":
        return F.layer_norm(x, x.shape[-1:], mod.w, mod.b, mod.eps)
    if kind == "LNPre":
        return F.layer_norm(x, x.shape[-1:], eps=mod.eps)
    return F.rms_norm(x, x.shape[-1:], mod.w if kind == "RMS" else None, mod.eps)


class _LeanAttention:
    """One layer's attention over a frozen prefix, with weights fused once."""

    def __init__(self, attn, keys, values, prefix_mask, suffix_pos) -> None:
        from transformer_lens.components import GroupedQueryAttention

        cfg = attn.cfg
        grouped = isinstance(attn, GroupedQueryAttention) and not cfg.ungroup_grouped_query_attention
        w_k, b_k = (attn._W_K, attn._b_K) if grouped else (attn.W_K, attn.b_K)
        w_v, b_v = (attn._W_V, attn._b_V) if grouped else (attn.W_V, attn.b_V)
        self.attn = attn
        self.n_heads, self.n_kv = attn.W_Q.shape[0], w_k.shape[0]
        self.d_head = attn.W_Q.shape[-1]
        with torch.no_grad():
            flat = lambda w: w.detach().permute(1, 0, 2).reshape(w.shape[1], -1)  # noqa: E731  [d_model, heads*d_head]
            self.w_qkv = torch.cat([flat(attn.W_Q), flat(w_k), flat(w_v)], dim=1).contiguous()
            self.b_qkv = torch.cat([attn.b_Q.detach().reshape(-1), b_k.detach().reshape(-1), b_v.detach().reshape(-1)])
            self.w_o = attn.W_O.detach().reshape(-1, attn.W_O.shape[-1]).contiguous()  # [heads*d_head, d_model]
            self.b_o = attn.b_O.detach()
        self.scale = attn.attn_scale
        self.softcap = cfg.attn_scores_soft_cap
        self.rotary = cfg.positional_embedding_type == "rotary"
        self.keys, self.values = keys, values
        if self.rotary:
            with torch.no_grad():
                width = prefix_mask.shape[1] + suffix_pos.shape[1]
                # TransformerLens grows its rotary tables lazily: let it cover every position first
                attn.apply_rotary(torch.zeros(1, width, 1, self.d_head, dtype=attn.rotary_cos.dtype, device=attn.rotary_cos.device))
                if keys.shape[1]:  # TransformerLens rotates the cached keys on every call; once is enough
                    self.keys = attn.apply_rotary(keys, 0, prefix_mask)
                self.cos = attn.rotary_cos[suffix_pos][:, :, None, :]  # [batch, suffix, 1, rotary_dim]
                self.sin = attn.rotary_sin[suffix_pos][:, :, None, :]
            self.rotary_dim = cfg.rotary_dim

    def _rotate(self, x, cos, sin):
        x_rot, x_pass = x[..., : self.rotary_dim], x[..., self.rotary_dim :]
        return torch.cat([x_rot * cos + self.attn.rotate_every_two(x_rot) * sin, x_pass], dim=-1)

    def __call__(self, x: Float[torch.Tensor, "batch suffix d_model"], idx, mask: Bool[torch.Tensor, "batch 1 suffix pos"]):
        b, s, d = x.shape
        h, hkv, dh = self.n_heads, self.n_kv, self.d_head
        qkv = torch.addmm(self.b_qkv, x.reshape(b * s, d), self.w_qkv).view(b, s, h + 2 * hkv, dh)
        q, k, v = qkv.split([h, hkv, hkv], dim=2)
        if self.rotary:
            cos, sin = (self.cos, self.sin) if idx is None else (self.cos[idx], self.sin[idx])
            q, k = self._rotate(q, cos, sin), self._rotate(k, cos, sin)
        keys, values = (self.keys, self.values) if idx is None else (self.keys[idx], self.values[idx])
        k, v = torch.cat([keys, k], dim=1), torch.cat([values, v], dim=1)  # [batch, pos, kv_heads, d_head]
        if hkv != h:
            k, v = k.repeat_interleave(h // hkv, dim=2), v.repeat_interleave(h // hkv, dim=2)
        scores = q.transpose(1, 2) @ k.permute(0, 2, 3, 1) / self.scale  # [batch, head, suffix, pos]
        scores = apply_softcap(scores, self.softcap)
        pattern = torch.softmax(torch.where(mask, scores, float("-inf")), dim=-1).nan_to_num(0.0)
        z = (pattern.to(v.dtype) @ v.transpose(1, 2)).transpose(1, 2).reshape(b * s, h * dh)
        return torch.addmm(self.b_o, z, self.w_o).view(b, s, -1)


class LeanStack:
    """Blocks ``l0..n_layers-1`` restated for a fixed prepared batch (see the module docstring)."""

    def __init__(self, model, l0: int, c0: int, attention_mask, keys, values) -> None:
        from transformer_lens.utilities.tensors import get_offset_position_ids

        width = attention_mask.shape[1]
        qpos = torch.arange(c0, width)[:, None]
        causal = torch.arange(width)[None, :] <= qpos  # [suffix, pos]
        self.mask = (causal[None] & attention_mask.bool()[:, None, :])[:, None]  # [batch, 1, suffix, pos]
        suffix_pos = get_offset_position_ids(c0, attention_mask)  # [batch, suffix]
        self.blocks = {}
        for layer in range(l0, model.cfg.n_layers):
            block = model.blocks[layer]
            attn = _LeanAttention(block.attn, keys[layer], values[layer], attention_mask[:, :c0], suffix_pos)
            self.blocks[layer] = (block, attn)
        self.cfg = model.cfg

    def block(self, layer: int, resid: Float[torch.Tensor, "batch suffix d_model"], idx) -> torch.Tensor:
        """``model.blocks[layer]`` on the suffix of rows ``idx`` (all rows when None)."""
        block, attn = self.blocks[layer]
        mask = self.mask if idx is None else self.mask[idx]
        attn_out = attn(norm(block.ln1, resid), idx, mask)
        if self.cfg.attn_only:
            return resid + attn_out
        if self.cfg.parallel_attn_mlp:
            return resid + attn_out + block.mlp(norm(block.ln2, resid))
        mid = resid + attn_out
        return mid + block.mlp(norm(block.ln2, mid))
