"""The engine's fast suffix blocks: replicas share their prompt's cached keys and values.

Context:
    TransformerLens's blocks, given a KV-cache entry, concatenate the cached keys and values
    with the new ones and rotate every key again on every call, so a suffix run of ``c``
    replicas of ``n`` prompts moves ``c * n * pos`` keys per layer although only ``n`` distinct
    prefixes exist. Here the prefix keys are rotated once (:class:`tvlens.ltv._lean._LeanAttention`
    fuses the weights) and every replica's queries meet its prompt's prefix keys in one matmul
    per prompt (replicas stacked along the query axis, no copy); the few suffix keys are
    handled apart and both parts share one softmax. The block's hook points that edits use
    (``hook_resid_pre``, ``attn.hook_pattern``, ``attn.hook_z``, ``hook_attn_out``,
    ``hook_resid_mid``, the MLP's hooks, ``hook_mlp_out``, ``hook_resid_post``) are called
    in TransformerLens's order; :func:`lean_hooks_reason` sends any other hook, and any
    architecture :func:`tvlens.ltv._lean.lean_unsupported_reason` does not cover, to the
    TransformerLens blocks. The oracle tests hold both against the full forward.
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float

from transformer_lens.utilities.activation_functions import apply_softcap

from tvlens.ltv._lean import _LeanAttention, lean_unsupported_reason, norm

_FIRED = ("hook_resid_pre", "attn.hook_pattern", "attn.hook_z", "hook_attn_out", "hook_resid_mid", "hook_mlp_out",
          "hook_resid_post")


def lean_hooks_reason(model, names, start: int) -> str | None:
    """Why the lean blocks cannot serve hooks ``names`` from layer ``start`` (None when they can)."""
    cfg = model.cfg
    if cfg.attn_only or cfg.parallel_attn_mlp or cfg.use_attn_result or cfg.use_hook_mlp_in:
        return "block layout (attn_only, parallel attention/MLP, attention result or mlp_in hooks)"
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
                      if type(mlp := model.blocks[lay].mlp).__name__ == "GatedMLP" and not model.cfg.is_layer_norm_activation()}

    def _mlp(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """The block's MLP output (before hook_mlp_out): TransformerLens's ops, weights transposed once."""
        import torch.nn.functional as F

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
        mid = block.hook_resid_mid(resid + attn_out)
        return block.hook_resid_post(mid + self._mlp(layer, norm(block.ln2, mid)))
