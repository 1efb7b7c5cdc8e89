"""The engine's fast suffix blocks: replicas share their prompt's cached keys and values.

Context:
    On short suffixes a block's cost is per-operation overhead, not arithmetic: a TransformerLens
    block runs about sixty small tensor operations and, given a KV-cache entry, concatenates the
    cached keys and values with the new ones and rotates every key again on every call, so a
    suffix run of ``c`` replicas of ``n`` prompts moves ``c * n * pos`` keys per layer although
    only ``n`` distinct prefixes exist. Here the weights are fused once (QKV as one matrix, W_O
    flattened, norms as ``F.layer_norm`` / ``F.rms_norm``), the prefix keys are rotated once, and
    every replica's queries meet its prompt's prefix keys in one matmul per prompt (replicas
    stacked along the query axis, no copy); the few suffix keys are handled apart and both parts
    share one softmax. The block's hook points that edits use (``hook_resid_pre``,
    ``attn.hook_pattern``, ``attn.hook_z``, ``hook_attn_out``, ``hook_resid_mid``, the MLP's hooks,
    ``hook_mlp_out``, ``hook_resid_post``) are called in TransformerLens's order (attention-only and
    parallel attention/MLP blocks included); :func:`lean_hooks_reason` sends any other hook, and
    any architecture :func:`lean_unsupported_reason` does not cover, to the TransformerLens blocks.
    The oracle tests (``tests/test_engine.py``, ``tests/test_ltv_lean.py``) hold both against the
    full forward.
"""


from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float

from transformer_lens.utilities.activation_functions import apply_softcap

from tvlens import _backend


_NORMS = {"LayerNorm": "LN", "LayerNormPre": "LNPre", "RMSNorm": "RMS", "RMSNormPre": "RMSPre", "Identity": None}
_OFF_FLAGS = ("use_attn_in", "use_split_qkv_input", "use_qk_norm", "use_logn_attn", "use_attention_sinks",
              "use_normalization_before_and_after", "load_in_4bit", "use_dynamic_ntk_rope")


def lean_unsupported_reason(model, layers: range) -> str | None:
    """Why the lean path cannot run ``layers`` of ``model`` (None when it can)."""
    if reason := _backend.lean_blocks_unsupported_reason(model):
        return reason
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
    """One layer's attention weights fused once, and its prefix keys rotated once (the shared part)."""

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


_FIRED = ("hook_resid_pre", "attn.hook_pattern", "attn.hook_z", "hook_attn_out", "hook_resid_mid", "hook_mlp_out",
          "hook_resid_post")


def lean_hooks_reason(model, names, start: int) -> str | None:
    """Why the lean blocks cannot serve hooks ``names`` from layer ``start`` (None when they can)."""
    cfg = model.cfg
    if cfg.use_attn_result or cfg.use_hook_mlp_in:
        return "block layout (attention result or mlp_in hooks)"
    if reason := lean_unsupported_reason(model, range(start, cfg.n_layers)):
        return reason
    for n in names:
        rest = n.split(".", 2)[2] if n.startswith("blocks.") else n
        if rest not in _FIRED and not rest.startswith("mlp."):
            return f"hook {n} is not called by the lean blocks"
    return None


class SharedPrefixAttention(_LeanAttention):
    """One layer's attention for rows that are replicas of prompts sharing a cached prefix."""

    def __call__(self, x: Float[torch.Tensor, "row suffix d_model"], prompts: torch.Tensor, replicas: int,
                 prefix_ok: Bool[torch.Tensor, "prompt 1 1 prefix"], suffix_ok: Bool[torch.Tensor, "row 1 suffix suffix"]):
        r, s, d = x.shape
        h, hkv, dh = self.n_heads, self.n_kv, self.d_head
        n, g = len(prompts), h // hkv
        qkv = torch.addmm(self.b_qkv, x.reshape(r * s, d), self.w_qkv).view(r, s, h + 2 * hkv, dh)
        q, k, v = qkv.split([h, hkv, hkv], dim=2)
        if self.rotary:
            rows = prompts.repeat(replicas)
            q, k = self._rotate(q, self.cos[rows], self.sin[rows]), self._rotate(k, self.cos[rows], self.sin[rows])
        pk, pv = self.keys[prompts], self.values[prompts]  # [prompt, prefix, kv_head, d_head]: each prefix once
        T = pk.shape[1]
        # replica-major rows (replica c of prompt i = row c * n + i): stack replicas and queries per kv head
        qg = q.reshape(replicas, n, s, hkv, g, dh).permute(1, 3, 0, 2, 4, 5).reshape(n, hkv, replicas * s * g, dh)
        sp = (qg @ pk.permute(0, 2, 3, 1))  # [prompt, kv_head, replica*suffix*group, prefix]
        sp = sp.reshape(n, hkv, replicas, s, g, T).permute(2, 0, 1, 4, 3, 5).reshape(r, h, s, T)  # [row, head, suffix, prefix]
        ks = k.repeat_interleave(g, dim=2) if g > 1 else k  # the suffix's own keys: a few columns
        ss = q.transpose(1, 2) @ ks.permute(0, 2, 3, 1)  # [row, head, suffix, suffix]
        pmask = prefix_ok.repeat(replicas, 1, 1, 1)
        scores = apply_softcap(torch.cat([sp, ss], dim=-1) / self.scale, self.softcap)
        scores = torch.where(torch.cat([pmask.expand(-1, -1, s, -1), suffix_ok], dim=-1), scores, float("-inf"))
        pattern = self.attn.hook_pattern(torch.softmax(scores, dim=-1).nan_to_num(0.0))  # [row, head, suffix, pos]
        pattern = pattern.to(v.dtype)
        pp = pattern[..., :T].reshape(replicas, n, hkv, g, s, T).permute(1, 2, 0, 3, 4, 5).reshape(n, hkv, replicas * g * s, T)
        zp = (pp @ pv.transpose(1, 2))  # [prompt, kv_head, replica*group*suffix, d_head]
        zp = zp.reshape(n, hkv, replicas, g, s, dh).permute(2, 0, 4, 1, 3, 5).reshape(r, s, h, dh)
        vs = v.repeat_interleave(g, dim=2) if g > 1 else v
        zs = (pattern[..., T:] @ vs.transpose(1, 2)).transpose(1, 2)  # [row, suffix, head, d_head]
        z = self.attn.hook_z(zp + zs)
        return torch.addmm(self.b_o, z.reshape(r * s, h * dh), self.w_o).view(r, s, -1)


class SharedPrefixStack:
    """Blocks ``l0..`` of a :class:`tvlens._engine.Prefix` over its suffix columns (lean, hooks called)."""

    def __init__(self, model, l0: int, c0: int, attention_mask, keys, values) -> None:
        from transformer_lens.utilities.tensors import get_offset_position_ids

        width = attention_mask.shape[1]
        causal = torch.arange(c0, width)[None, :] <= torch.arange(c0, width)[:, None]  # [suffix q, suffix k]
        real = attention_mask.bool()
        self.prefix_ok = real[:, None, None, :c0]  # [prompt, 1, 1, prefix]
        self.suffix_ok = (causal[None] & real[:, None, c0:])[:, None]  # [prompt, 1, suffix, suffix]
        suffix_pos = get_offset_position_ids(c0, attention_mask)  # [prompt, suffix]
        self.model = model
        self.attn = {lay: SharedPrefixAttention(model.blocks[lay].attn, keys[lay], values[lay], attention_mask[:, :c0], suffix_pos)
                     for lay in range(l0, model.cfg.n_layers)}
        # TransformerLens's gated MLP copies its transposed weights on every call: copied once here
        self.gated = {lay: tuple(w.detach().T.contiguous() for w in (mlp.W_gate, mlp.W_in, mlp.W_out))
                      for lay in range(l0, model.cfg.n_layers)
                      if type(mlp := getattr(model.blocks[lay], "mlp", None)).__name__ == "GatedMLP" and not model.cfg.is_layer_norm_activation()}

    def _mlp(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """The block's MLP output (before hook_mlp_out): TransformerLens's ops, weights transposed once."""
        block = self.model.blocks[layer]
        mlp = block.mlp
        if layer not in self.gated or any(hp.fwd_hooks for hp in (mlp.hook_pre, mlp.hook_pre_linear, mlp.hook_post)):
            return block.apply_mlp(x)  # calls the MLP's hooks and hook_mlp_out
        w_gate, w_in, w_out = self.gated[layer]
        post = mlp.act_fn(F.linear(x, w_gate)) * F.linear(x, w_in) + mlp.b_in  # as GatedMLP.forward
        return block.hook_mlp_out(F.linear(post, w_out, mlp.b_out))

    def block(self, layer: int, resid: Float[torch.Tensor, "row suffix d_model"], prompts: torch.Tensor, replicas: int):
        """``model.blocks[layer]`` on rows that are ``replicas`` replicas of ``prompts`` (replica-major)."""
        block = self.model.blocks[layer]
        resid = block.hook_resid_pre(resid)
        ok = self.suffix_ok[prompts.repeat(replicas)]
        attn_out = block.hook_attn_out(self.attn[layer](norm(block.ln1, resid), prompts, replicas, self.prefix_ok[prompts], ok))
        if self.model.cfg.attn_only:
            return block.hook_resid_post(resid + attn_out)
        if self.model.cfg.parallel_attn_mlp:  # GPT-J / NeoX: attention and MLP both read resid_pre
            return block.hook_resid_post(resid + attn_out + self._mlp(layer, norm(block.ln2, resid)))
        mid = block.hook_resid_mid(resid + attn_out)
        return block.hook_resid_post(mid + self._mlp(layer, norm(block.ln2, mid)))
