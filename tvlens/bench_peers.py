"""Peer benchmarks (``tvlens bench --peers``): tvlens against what people write without it, on SmolLM2-135M.

Context:
    The other entries of ``tvlens bench`` time tvlens against its own references. These time it
    against the two ways people usually do the same work on a Hugging Face model, on the same
    token ids, targets and theta, in one run:

    * ``ltv_step_smollm2_{0,5}shot``: one LTV training step (theta added to the residual stream
      before block 15 at each prompt's last token, teacher-forced cross-entropy of the answer,
      backward for theta) through tvlens's prefix-cached :class:`~tvlens.ltv._objective.FastObjective`,
      (a) a ``forward_pre_hook`` on ``model.model.layers[15]`` of ``transformers``'
      ``LlamaForCausalLM`` (what the paper's code and most users write) and (b) ``nnsight``
      (``model.trace`` with the addition and ``loss.backward()`` inside the trace);
    * ``fv_aie_smollm2_10shot``: the function-vector AIE of every head on 10-shot corrupted prompts
      through :func:`tvlens.baselines.function_vector.aie_batched` against one patched forward per
      head on the ``transformers`` model (a ``forward_pre_hook`` on ``self_attn.o_proj`` replacing
      that head's slice of its input at the last token by ``mean_z``), the way the
      function-vectors code does it.

    Each entry reports both values (losses; AIEs) and their largest difference; an entry whose
    values differ by more than :data:`VALUE_TOL` is marked ``mismatch``. A peer whose package is
    not installed is ``skipped`` with a note. The ``transformers`` model holds the same weights
    (the GGUF's fp32 conversion that tvlens loads too); :func:`hf_matches_tvlens` checks its
    log-probabilities against the tvlens model's before anything is timed.

    The ``transformers`` peers pass ``position_ids`` counted from the attention mask (left padding:
    the first real token is position 0), as ``generate`` does. With rotary embeddings a left-padded
    row's uniform shift of positions changes no attention score, so this is for clarity, not needed.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch

from tvlens.errors import IncompatibleModelError
from tvlens.sites import Site

log = logging.getLogger(__name__)

VALUE_TOL = 1e-4  # largest |difference| of two losses (or AIEs) that still counts as equal
FUNCTION_TOL = 1e-4  # largest |difference| of log-probabilities between the transformers and tvlens models
LAYER = 15  # the injection layer of the LTV entries (SmolLM2 has 30)
TASK = "capitalize"
Status = Literal["ok", "mismatch", "skipped"]


@dataclass(frozen=True)
class PeerResult:
    """One peer entry: tvlens's seconds and value beside a peer's, on the same inputs."""

    name: str  # the work, e.g. "ltv_step_smollm2_5shot"
    peer: str  # who it is timed against, e.g. "transformers forward_pre_hook"
    status: Status
    tvlens_s: float | None = None  # seconds per call through tvlens
    peer_s: float | None = None  # seconds per call through the peer
    tvlens_value: float | None = None  # the loss (LTV) or the mean AIE of the compared heads
    peer_value: float | None = None
    max_abs_diff: float | None = None  # largest |tvlens - peer| over what both computed
    note: str = ""
    details: dict = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        return None if self.tvlens_s is None or self.peer_s is None else self.peer_s / self.tvlens_s

    def as_dict(self) -> dict:
        return {"name": self.name, "peer": self.peer, "status": self.status, "tvlens_s": self.tvlens_s, "peer_s": self.peer_s,
                "ratio": self.ratio, "tvlens_value": self.tvlens_value, "peer_value": self.peer_value,
                "max_abs_diff": self.max_abs_diff, "note": self.note, **self.details}


def missing_package(name: str) -> str | None:
    """None when ``name`` can be imported, else the note of a skipped entry (with the install command)."""
    if importlib.util.find_spec(name) is None:
        return f"skipped: the package {name!r} is not installed (pip install {name})"
    return None


def _judge(name: str, peer: str, tvlens_s: float, peer_s: float, ours: float, theirs: float, diff: float,
           details: dict, note: str = "") -> PeerResult:
    status: Status = "ok" if diff <= VALUE_TOL else "mismatch"
    if status == "mismatch":
        note = f"values differ by {diff:.3g} > {VALUE_TOL:g}" + (f"; {note}" if note else "")
    return PeerResult(name, peer, status, tvlens_s, peer_s, ours, theirs, diff, note, details)


def _seconds(fn: Callable[[], object], calls: int) -> tuple[float, object]:
    """Mean seconds of ``calls`` calls after one warm-up call, and the last call's output."""
    out = fn()
    t0 = time.perf_counter()
    for _ in range(calls):
        out = fn()
    return (time.perf_counter() - t0) / calls, out


# --- the transformers model ---------------------------------------------------------------------


def hf_smollm2():
    """SmolLM2-135M as ``transformers``' ``LlamaForCausalLM``: the same fp32 folder ``tv.load_model("smollm2")`` reads."""
    from transformers import AutoModelForCausalLM

    from tvlens._gguf import gguf_to_hf_dir, named_gguf_path

    hf = AutoModelForCausalLM.from_pretrained(str(gguf_to_hf_dir(named_gguf_path("smollm2"))), dtype=torch.float32)
    return hf.eval().requires_grad_(False)


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """Rotary positions of a padded batch: 0 at each row's first real token (pads get 0)."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def hf_matches_tvlens(model, hf, tokens: torch.Tensor, mask: torch.Tensor) -> float:
    """Largest |log p| difference, over every real (unpadded) position, between the tvlens and transformers models.

    Log-probabilities, not logits: TransformerLens centres the unembedding, which shifts each
    position's logits by a constant.
    """
    with torch.no_grad():
        ours = model(tokens, attention_mask=mask).log_softmax(-1)  # [batch, pos, vocab]
        theirs = hf(input_ids=tokens, attention_mask=mask, position_ids=position_ids(mask)).logits.log_softmax(-1)
    real = mask.bool()
    return float((ours[real] - theirs[real]).abs().max())


def check_same_function(model, hf, tokens: torch.Tensor, mask: torch.Tensor) -> float:
    """:func:`hf_matches_tvlens`, raising when the two models are not the same function."""
    diff = hf_matches_tvlens(model, hf, tokens, mask)
    if diff > FUNCTION_TOL:
        raise IncompatibleModelError(
            f"the transformers model differs from the tvlens model by {diff:.3g} in log-probability (> {FUNCTION_TOL:g}); "
            "the peer benchmarks need the same weights: load both from the same checkpoint")
    return diff


# --- one LTV step -------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepInputs:
    """One minibatch of an LTV step, as every contender sees it."""

    tokens: torch.Tensor  # [batch, pos] left-padded token ids
    mask: torch.Tensor  # [batch, pos]
    last: torch.Tensor  # [batch] column of each prompt's last token (where theta is added)
    tgt_row: torch.Tensor  # [target] row, column and id of every teacher-forced answer token,
    tgt_col: torch.Tensor
    tgt_tok: torch.Tensor
    tgt_weight: torch.Tensor  # [target] 1 / (its answer's length)


def ltv_inputs(model, shots: int, *, batch: int = 32, pool: int = 64, seed: int = 0, task=TASK):
    """The target batch of ``pool`` training prompts (LTVConfig's defaults: left padding, every answer token),
    a seeded minibatch ``idx`` of ``batch`` rows and that minibatch as :class:`StepInputs`."""
    import tvlens as tv
    from tvlens.ltv import LTVConfig
    from tvlens.ltv._objective import TargetIndex, build_targets

    cfg = LTVConfig()
    splits = tv.make_splits(tv.tasks.get(task) if isinstance(task, str) else task)
    prompts = tv.make_prompts(splits, "train", k=shots, seed=seed)
    prompts = prompts.subset(list(range(min(pool, len(prompts)))))
    tb = build_targets(model, prompts, padding_side=cfg.padding_side, multi_token=cfg.multi_token)
    idx = torch.randperm(len(tb), generator=torch.Generator().manual_seed(seed))[: min(batch, len(tb))]
    t = TargetIndex(tb).gather(idx)
    step = StepInputs(tb.tokens[idx], tb.attention_mask[idx], tb.prompt_last[idx], t.tgt_row, t.tgt_col, t.tgt_tok,
                      t.tgt_weight)
    return tb, idx, step


def _answer_nll(logits: torch.Tensor, s: StepInputs) -> torch.Tensor:
    """Mean over prompts of the mean cross-entropy of each prompt's answer tokens (the LTV loss, written out)."""
    nll = torch.nn.functional.cross_entropy(logits[s.tgt_row, s.tgt_col].float(), s.tgt_tok, reduction="none")
    return (nll * s.tgt_weight).sum() / len(s.tokens)


def hf_hook_step(hf, s: StepInputs, theta: torch.Tensor, layer: int = LAYER) -> tuple[float, torch.Tensor]:
    """One step the plain way: a forward pre-hook on block ``layer`` adds theta at each row's last token."""
    rows = torch.arange(len(s.tokens))

    def add(module, args, kwargs):
        h = args[0] if args else kwargs["hidden_states"]  # [batch, pos, d_model]
        h = h.index_put((rows, s.last), h[rows, s.last] + theta)
        if args:
            return (h, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": h}

    handle = hf.model.layers[layer].register_forward_pre_hook(add, with_kwargs=True)
    try:
        logits = hf(input_ids=s.tokens, attention_mask=s.mask, position_ids=position_ids(s.mask)).logits
    finally:
        handle.remove()
    loss = _answer_nll(logits, s)
    (grad,) = torch.autograd.grad(loss, [theta])
    return float(loss.detach()), grad


def nnsight_step(wrapped, s: StepInputs, theta: torch.Tensor, layer: int = LAYER) -> tuple[float, torch.Tensor]:
    """One step through nnsight: the addition and ``loss.backward()`` inside one ``trace``."""
    rows = torch.arange(len(s.tokens))
    theta.grad = None
    with wrapped.trace(input_ids=s.tokens, attention_mask=s.mask, position_ids=position_ids(s.mask)):
        h = wrapped.model.layers[layer].input  # [batch, pos, d_model]
        wrapped.model.layers[layer].input = h.index_put((rows, s.last), h[rows, s.last] + theta)
        loss = _answer_nll(wrapped.lm_head.output, s)
        loss.backward()
        loss = loss.save()
    return float(loss.detach()), theta.grad


def bench_ltv_peers(model, hf, shots: int, *, calls: int = 3, peer_calls: int = 1, seed: int = 0, layer: int = LAYER,
                    batch: int = 32, task=TASK, label: str = "smollm2") -> list[PeerResult]:
    """One LTV step at ``layer`` on ``shots``-shot prompts (batch 32): tvlens vs the transformers hook vs nnsight."""
    from tvlens.ltv._objective import FastObjective

    tb, idx, s = ltv_inputs(model, shots, batch=batch, pool=2 * batch, seed=seed, task=task)
    g = torch.Generator().manual_seed(seed)
    theta = (0.1 * torch.randn(1, model.cfg.d_model, generator=g)).requires_grad_()
    t0 = time.perf_counter()
    fast = FastObjective(model, tb, (Site(layer, -1),))
    prepare_s = time.perf_counter() - t0

    def ours():
        loss, _, _ = fast.loss(theta, idx)
        (grad,) = torch.autograd.grad(loss, [theta])
        return float(loss.detach()), grad

    tv_s, (tv_loss, tv_grad) = _seconds(ours, calls)
    name = f"ltv_step_{label}_{shots}shot"
    details = {"batch": len(idx), "prompt_tokens": int(tb.tokens.shape[1]), "layer": layer, "task": str(getattr(task, "name", task)),
               "tvlens_prepare_s": prepare_s, "prepared_prompts": len(tb), "threads": torch.get_num_threads()}
    vec = theta.detach()[0].clone().requires_grad_()  # the same values, as the [d_model] leaf a peer's user holds
    peers: list[tuple[str, Callable[[], tuple[float, torch.Tensor]] | None, str]] = []
    peers.append(("transformers forward_pre_hook", lambda: hf_hook_step(hf, s, vec, layer), ""))
    if note := missing_package("nnsight"):
        peers.append(("nnsight trace", None, note))
    else:
        from nnsight import NNsight

        wrapped = NNsight(hf)
        peers.append(("nnsight trace", lambda: nnsight_step(wrapped, s, vec, layer), ""))
    out = []
    for peer, fn, note in peers:
        if fn is None:
            out.append(PeerResult(name, peer, "skipped", tvlens_s=tv_s, tvlens_value=tv_loss, note=note, details=details))
            continue
        peer_s, (loss, grad) = _seconds(fn, peer_calls)
        grad_diff = float((grad.reshape(tv_grad.shape) - tv_grad).abs().max())
        out.append(_judge(name, peer, tv_s, peer_s, tv_loss, loss, abs(tv_loss - loss), {**details, "grad_max_abs_diff": grad_diff}))
        log.info("%s vs %s: tvlens %.4f s (loss %.6f), peer %.4f s (loss %.6f)", name, peer, tv_s, tv_loss, peer_s, loss)
    return out


# --- AIE of every head --------------------------------------------------------------------------


def corrupted_prompts(model, *, shots: int = 10, n: int = 25, seed: int = 0, task=TASK):
    """``n`` ``shots``-shot training prompts of the task with each prompt's demonstration labels shuffled, tokenised."""
    import tvlens as tv
    from tvlens.baselines.function_vector import shuffled_labels

    splits = tv.make_splits(tv.tasks.get(task) if isinstance(task, str) else task)
    return shuffled_labels(tv.make_prompts(splits, "train", k=shots, n=n, seed=seed), seed).tokenize(model)  # the FV's own corruption


def hf_aie_loop(hf, tokens: torch.Tensor, mask: torch.Tensor, last: torch.Tensor, gold: torch.Tensor,
                mean_z: torch.Tensor, heads: list[tuple[int, int]]) -> torch.Tensor:
    """AIE of each of ``heads``, one full patched forward per head (the function-vectors way).

    The head's output before ``o_proj`` (its slice of ``o_proj``'s input) is set to ``mean_z[layer, head]``
    at each row's last token; AIE = mean over rows of p(gold) patched minus p(gold) unpatched.
    """
    rows = torch.arange(len(tokens))
    d_head = mean_z.shape[-1]
    pos = position_ids(mask)

    def p_gold() -> torch.Tensor:
        logits = hf(input_ids=tokens, attention_mask=mask, position_ids=pos).logits  # [batch, pos, vocab]
        return logits[rows, last].float().softmax(-1)[rows, gold]

    out = []
    with torch.no_grad():
        base = p_gold()
        for layer, head in heads:
            def patch(module, args, z=mean_z[layer, head], h=head):
                x = args[0].clone()  # [batch, pos, n_heads * d_head]
                x[rows, last, h * d_head : (h + 1) * d_head] = z
                return (x, *args[1:])

            handle = hf.model.layers[layer].self_attn.o_proj.register_forward_pre_hook(patch)
            try:
                out.append(float((p_gold() - base).mean()))
            finally:
                handle.remove()
    return torch.tensor(out)


def spread_heads(heads: list[tuple[int, int]], k: int) -> list[tuple[int, int]]:
    """``k`` of ``heads``, evenly spaced (first and last included)."""
    if k >= len(heads):
        return list(heads)
    if k == 1:
        return [heads[0]]
    return [heads[round(i * (len(heads) - 1) / (k - 1))] for i in range(k)]


def bench_aie_peer(model, hf, *, n_prompts: int = 25, shots: int = 10, loop_heads: int | None = None, seed: int = 0,
                   task=TASK, label: str = "smollm2") -> PeerResult:
    """AIE of every head: :func:`aie_batched` vs one patched transformers forward per head.

    ``loop_heads``: run the loop on only that many heads (evenly spread) and extrapolate its time to
    every head (each head costs the loop one full forward, whichever it is); None runs them all.
    The AIEs are compared on the heads the loop ran.
    """
    from tvlens.baselines.function_vector import aie_batched

    cfg = model.cfg
    batch = corrupted_prompts(model, shots=shots, n=n_prompts, seed=seed, task=task)
    mean_z = torch.randn(cfg.n_layers, cfg.n_heads, cfg.d_head, generator=torch.Generator().manual_seed(seed))
    heads = [(layer, h) for layer in range(cfg.n_layers) for h in range(cfg.n_heads)]
    t0 = time.perf_counter()
    ours = aie_batched(model, batch, mean_z, heads)
    tv_s = time.perf_counter() - t0
    sample = heads if loop_heads is None else spread_heads(heads, loop_heads)
    args = (batch.tokens, batch.attention_mask, batch.last_index, batch.answer_ids, mean_z)
    t0 = time.perf_counter()
    hf_aie_loop(hf, *args, [])  # the unpatched forward alone
    base_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    theirs = hf_aie_loop(hf, *args, sample)
    loop_s = time.perf_counter() - t0 - base_s  # the patched forwards
    peer_s = base_s + loop_s / len(sample) * len(heads)
    ours_s = ours[[heads.index(hd) for hd in sample]]
    diff = float((ours_s - theirs).abs().max())
    note = "" if len(sample) == len(heads) else (
        f"the loop ran {len(sample)} of {len(heads)} heads; its time is extrapolated (one full forward per head)")
    details = {"heads": len(heads), "loop_heads": len(sample), "prompts": len(batch), "shots": shots,
               "prompt_tokens": int(batch.tokens.shape[1]), "task": str(getattr(task, "name", task)), "loop_forward_s": loop_s / len(sample),
               "threads": torch.get_num_threads()}
    log.info("AIE: tvlens %.2f s, per-head loop %.2f s (%d heads run)", tv_s, peer_s, len(sample))
    return _judge(f"fv_aie_{label}_{shots}shot", "transformers per-head loop", tv_s, peer_s, float(ours_s.mean()),
                  float(theirs.mean()), diff, details, note)


# --- the run -------------------------------------------------------------------------------------


def run_peer_benchmarks(*, quick: bool = False, model=None, hf=None) -> list[PeerResult]:
    """Every peer entry on SmolLM2-135M (``quick``: one timed call each, the AIE loop on 3 heads of 8 prompts).

    The transformers peer needs ``transformers`` (a tvlens dependency); nnsight entries are
    skipped with a note when it is absent. Raises :class:`IncompatibleModelError` when the two
    models are not the same function.
    """
    import tvlens as tv

    if note := missing_package("transformers"):
        return [PeerResult(n, p, "skipped", note=note) for n, p in (
            ("ltv_step_smollm2_0shot", "transformers forward_pre_hook"), ("ltv_step_smollm2_5shot", "transformers forward_pre_hook"),
            ("fv_aie_smollm2_10shot", "transformers per-head loop"))]
    model = model if model is not None else tv.load_model("smollm2")
    hf = hf if hf is not None else hf_smollm2()
    _, _, probe = ltv_inputs(model, 5, batch=8)
    diff = check_same_function(model, hf, probe.tokens, probe.mask)
    log.info("transformers model == tvlens model: max |log p| difference %.2e", diff)
    results = []
    for shots in (0, 5):
        results += bench_ltv_peers(model, hf, shots, calls=1 if quick else 3, peer_calls=1)
    results.append(bench_aie_peer(model, hf, n_prompts=8 if quick else 25, loop_heads=3 if quick else 9))
    return [PeerResult(r.name, r.peer, r.status, r.tvlens_s, r.peer_s, r.tvlens_value, r.peer_value, r.max_abs_diff, r.note,
                       {**r.details, "function_max_abs_diff": diff}) for r in results]
