"""Benchmarks (``tvlens bench``): speed ratios measured in one run, never asserted in unit tests.

Each entry times the same work two ways on the same inputs in the same process and reports
``baseline_s`` (seconds per step of the reference), ``fast_s`` and ``ratio = baseline / fast``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from tvlens._fingerprint import fingerprint
from tvlens.ltv._config import LTVConfig
from tvlens.ltv._objective import FastObjective, NaiveObjective, TargetBatch, build_targets
from tvlens.sites import Site

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BenchResult:
    name: str
    baseline_s: float
    fast_s: float
    details: dict

    @property
    def ratio(self) -> float:
        return self.baseline_s / self.fast_s

    def as_dict(self) -> dict:
        return {"name": self.name, "baseline_s": self.baseline_s, "fast_s": self.fast_s, "ratio": self.ratio, **self.details}


def _random_model(tokenizer, *, seed: int = 0, **shape):
    """A random model of ``shape`` (HookedTransformerConfig fields) on the backend ``load_model`` picks by default:
    a HookedTransformer, or a bridge over a random Hugging Face model of that shape (:func:`random_hf_bridge`)."""
    from tvlens import _backend

    if _backend.default_backend() == "hooked":
        from transformer_lens import HookedTransformer, HookedTransformerConfig

        model = HookedTransformer(HookedTransformerConfig(seed=seed, **shape), tokenizer=tokenizer)
    else:
        model = random_hf_bridge(shape, tokenizer, seed=seed)
    model.eval()
    return model


def random_hf_bridge(shape: dict, tokenizer, *, seed: int = 0):
    """A TransformerBridge (in compatibility mode) over a randomly initialised Hugging Face model of ``shape``
    (HookedTransformerConfig field names): GPT-2 for LayerNorm with learned positions, Llama for RMSNorm with
    rotary positions, grouped-query attention and a gated SiLU MLP. Built in a temporary folder and loaded the way
    ``load_model(folder, backend="bridge")`` loads any local model, so it keeps the Hugging Face KV cache the
    engine's prefix uses (a bridge over TransformerLens's native model keeps none). ``tvlens bench`` times its
    random GPT-2- and SmolLM2-shaped models on it when the bridge is the backend."""
    import tempfile

    import transformers

    from tvlens._models import load_model
    from tvlens.errors import ModelLoadError

    s = dict(shape)
    vocab = s.get("d_vocab") or len(tokenizer.get_vocab())
    common = dict(vocab_size=vocab, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    if s.get("positional_embedding_type", "standard") == "standard" and s.get("normalization_type", "LN") == "LN":
        act = {"gelu_new": "gelu_new", "gelu": "gelu"}.get(s.get("act_fn", "gelu_new"))
        if act is None or s.get("gated_mlp"):
            raise ModelLoadError(f"no random GPT-2 of shape {shape}: act_fn must be gelu or gelu_new, without a gated MLP")
        hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
            n_positions=s.get("n_ctx", 1024), n_embd=s["d_model"], n_layer=s["n_layers"], n_head=s["n_heads"],
            n_inner=s.get("d_mlp"), activation_function=act, **common))
    elif s.get("positional_embedding_type") == "rotary" and s.get("normalization_type") == "RMS" and s.get("gated_mlp") \
            and s.get("act_fn") == "silu":
        hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
            hidden_size=s["d_model"], intermediate_size=s["d_mlp"], num_hidden_layers=s["n_layers"],
            num_attention_heads=s["n_heads"], num_key_value_heads=s.get("n_key_value_heads") or s["n_heads"],
            head_dim=s.get("d_head") or s["d_model"] // s["n_heads"], max_position_embeddings=s.get("n_ctx", 2048),
            tie_word_embeddings=False, pad_token_id=tokenizer.pad_token_id, **common))
    else:
        raise ModelLoadError(f"no random Hugging Face model of shape {shape}: GPT-2 (LN, learned positions) or Llama "
                             "(RMS, rotary, gated SiLU) only")
    with tempfile.TemporaryDirectory(prefix="tvlens-random-") as folder:
        hf.eval().save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        bridge = load_model(folder, backend="bridge")
    bridge.cfg.model_name = f"random-{type(hf).__name__}-L{s['n_layers']}-d{s['d_model']}"
    return bridge


def _time_per_call(fn: Callable[[], None], *, min_calls: int, min_seconds: float) -> float:
    fn()  # warm-up (allocations, lazy inits)
    calls, t0 = 0, time.perf_counter()
    while calls < min_calls or time.perf_counter() - t0 < min_seconds:
        fn()
        calls += 1
    return (time.perf_counter() - t0) / calls


def _step_fn(objective, theta: torch.Tensor, idx: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        loss, _, _ = objective.loss(theta, idx)
        torch.autograd.grad(loss, [theta])

    return step


def _chunked_step_fn(objective, theta: torch.Tensor, idx: torch.Tensor, rows: int) -> Callable[[], torch.Tensor]:
    """The same step as :func:`_step_fn` (the gradient of the minibatch's loss), accumulated over
    chunks of ``rows`` prompts: each chunk's loss is weighted by its share of the minibatch, so the
    sum of the chunks' gradients is the whole minibatch's. Peak memory is one chunk's activations."""

    def step() -> torch.Tensor:
        grad = torch.zeros_like(theta)
        for chunk in idx.split(rows):
            loss, _, _ = objective.loss(theta, chunk)
            grad += torch.autograd.grad(loss * (len(chunk) / len(idx)), [theta])[0]
        return grad

    return step


def bench_ltv_step(name: str, model, tb: TargetBatch, sites: tuple[Site, ...], *, batch: int, min_seconds: float = 2.0,
                   naive_rows: int | None = None, prepare_rows: int = 64) -> BenchResult:
    """Seconds per LTV training step (forward + backward for theta), naive vs prefix-cached.

    Both paths take the same random minibatch of ``batch`` rows from the prepared prompts, as a
    training step does (the fast path gathers that minibatch's cached keys and values).
    ``naive_rows``: the naive step runs its full forwards ``naive_rows`` prompts at a time and sums
    their gradients (the same gradient; its full-vocabulary logits for every column are what bound
    the benchmark's memory). ``prepare_rows``: prompts per forward of the fast path's one-off preparation.
    """
    theta = (0.1 * torch.randn(len(sites), model.cfg.d_model)).requires_grad_()
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(tb), generator=g)[: min(batch, len(tb))]
    naive = NaiveObjective(model, tb, sites)
    t0 = time.perf_counter()
    fast = FastObjective(model, tb, sites, prepare_batch_size=prepare_rows)
    prepare_s = time.perf_counter() - t0
    rows = min(naive_rows or len(idx), len(idx))
    baseline = _time_per_call(_chunked_step_fn(naive, theta, idx, rows), min_calls=3, min_seconds=min_seconds)
    quick = _time_per_call(_step_fn(fast, theta, idx), min_calls=10, min_seconds=min_seconds)
    # the same prefix-cached step through TransformerLens's own blocks (what the lean stack saves)
    blocks = _time_per_call(_step_fn(FastObjective(model, tb, sites, prepare_batch_size=prepare_rows, lean=False), theta, idx),
                            min_calls=10, min_seconds=min_seconds)
    details = {"batch": len(idx), "prompt_tokens": int(tb.tokens.shape[1]), "sites": [str(s) for s in sites],
               "prepare_s": prepare_s, "prepared_prompts": len(tb), "threads": torch.get_num_threads(),
               "fast_suffix": "lean" if fast.lean is not None else f"transformer_lens blocks ({fast.lean_reason})",
               "fast_blocks_s": blocks, "naive_rows_per_forward": rows, "prepare_rows": prepare_rows}
    log.info("%s: naive %.4f s, fast %.4f s", name, baseline, quick)
    return BenchResult(name, baseline, quick, details)


def bench_fv_aie(name: str, model, batch, *, heads_per_pass: int | None = None, min_seconds: float = 2.0) -> BenchResult:
    """Seconds for the AIE of every head on ``batch``: one forward per head vs many heads per forward.

    Both compute the same numbers (checked here: the largest difference is reported).
    """
    from tvlens._reference import aie_loop
    from tvlens.baselines.function_vector import aie_batched

    cfg = model.cfg
    g = torch.Generator().manual_seed(0)
    mean_z = torch.randn(cfg.n_layers, cfg.n_heads, cfg.d_head, generator=g)
    heads = [(layer, h) for layer in range(cfg.n_layers) for h in range(cfg.n_heads)]
    loop = _time_per_call(lambda: aie_loop(model, batch, mean_z, heads), min_calls=1, min_seconds=min_seconds)
    fast = _time_per_call(lambda: aie_batched(model, batch, mean_z, heads, heads_per_pass=heads_per_pass), min_calls=1,
                          min_seconds=min_seconds)
    diff = float((aie_loop(model, batch, mean_z, heads) - aie_batched(model, batch, mean_z, heads, heads_per_pass=heads_per_pass)).abs().max())
    details = {"heads": len(heads), "prompts": len(batch), "prompt_tokens": int(batch.tokens.shape[1]),
               "heads_per_pass": heads_per_pass, "max_abs_diff": diff, "threads": torch.get_num_threads()}
    log.info("%s: loop %.4f s, batched %.4f s", name, loop, fast)
    return BenchResult(name, loop, fast, details)


def bench_saliency(name: str, model, vector, prompts, *, min_seconds: float = 2.0) -> BenchResult:
    """Seconds for every head's saliency: exact (batched ablations) vs one forward + one backward pass.

    ``ratio`` = exact / one-pass; ``spearman`` is the rank agreement of the two scores.
    """
    from tvlens.analysis.saliency import head_saliency, spearman

    exact = _time_per_call(lambda: head_saliency(model, vector, prompts=prompts, mode="exact", progress=False), min_calls=1, min_seconds=min_seconds)
    grad = _time_per_call(lambda: head_saliency(model, vector, prompts=prompts), min_calls=1, min_seconds=min_seconds)
    rho = spearman(head_saliency(model, vector, prompts=prompts), head_saliency(model, vector, prompts=prompts, mode="exact", progress=False))
    layer = min(s.layer for s in vector.sites)
    details = {"heads": (model.cfg.n_layers - layer) * model.cfg.n_heads, "prompts": len(prompts), "injection_layer": layer,
               "spearman": rho, "threads": torch.get_num_threads()}
    log.info("%s: exact %.4f s, one-pass %.4f s", name, exact, grad)
    return BenchResult(name, exact, grad, details)


_EARLIER_PEAK_KIB = 0  # the largest resident high-water mark read so far (over every window)


def _hwm_kib() -> int | None:
    """The process's resident high-water mark (Linux ``VmHWM``, KiB; None where /proc is absent)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    global _EARLIER_PEAK_KIB
                    kib = int(line.split()[1])
                    _EARLIER_PEAK_KIB = max(_EARLIER_PEAK_KIB, kib)  # madvise-freed pages may leave the mark below a reading
                    return kib
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Start a new peak-memory window: CUDA's peak statistics and the resident high-water mark
    (Linux: writing 5 to /proc/self/clear_refs). False where the resident peak cannot be reset."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    _hwm_kib()  # kept in _EARLIER_PEAK_KIB: the reset also restarts ru_maxrss's reading
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_memory_mb(model=None) -> float:
    """Peak memory of the window since :func:`_reset_peak`: CUDA allocations on a GPU model, else the
    process's resident peak (VmHWM; where it cannot be reset, ``ru_maxrss``, the peak of the whole process)."""
    if model is not None and str(model.cfg.device).startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    hwm = _hwm_kib()
    if hwm is not None:
        return hwm / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _trim() -> None:
    """Hand freed heap memory back to the system (glibc ``malloc_trim``), so an entry's window starts
    from what the process holds, not from what an earlier entry freed."""
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def process_peak_rss_mb() -> float:
    """The whole process's peak resident set so far: the largest high-water mark over every window
    (``ru_maxrss`` reads the same mark, so it too restarts at each reset)."""
    import resource

    now = _hwm_kib() or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return max(_EARLIER_PEAK_KIB, now) / 1024


def _measured(entry: Callable[[], BenchResult], model=None) -> BenchResult:
    """Run one entry in its own peak-memory window: ``peak_memory_mb`` is the resident peak while it ran
    (everything resident counts, e.g. the model's weights; ``peak_memory_scope`` says how it was taken)."""
    import gc

    gc.collect()
    _trim()
    scoped = _reset_peak()
    res = entry()
    details = {**res.details, "peak_memory_mb": _peak_memory_mb(model),
               "peak_memory_scope": "entry" if scoped else "process so far"}
    return BenchResult(res.name, res.baseline_s, res.fast_s, details)


def _against_reference(name: str, model, reference: Callable[[], object], engine_fn: Callable[[], object],
                       diff: Callable[[object, object], float], details: dict, *, min_seconds: float) -> BenchResult:
    """Time ``reference`` (the full-width path) and ``engine_fn`` (last-column suffix runs) in one run."""
    out = {}
    baseline = _time_per_call(lambda: out.__setitem__("ref", reference()), min_calls=1, min_seconds=min_seconds)
    fast = _time_per_call(lambda: out.__setitem__("new", engine_fn()), min_calls=1, min_seconds=min_seconds)
    details = {**details, "max_abs_diff": diff(out["ref"], out["new"]), "threads": torch.get_num_threads()}
    log.info("%s: full width %.4f s, engine %.4f s", name, baseline, fast)
    return BenchResult(name, baseline, fast, details)


def bench_engine_aie(name: str, model, batch, *, heads=None, min_seconds: float = 2.0) -> BenchResult:
    """Seconds for the function-vector AIE of ``heads`` (default: all): full-width replicas vs last-column runs."""
    from tvlens._reference import aie_full_width
    from tvlens.baselines.function_vector import aie_batched

    cfg = model.cfg
    mean_z = torch.randn(cfg.n_layers, cfg.n_heads, cfg.d_head, generator=torch.Generator().manual_seed(0)).to(cfg.device)
    heads = heads or [(lay, h) for lay in range(cfg.n_layers) for h in range(cfg.n_heads)]
    return _against_reference(name, model, lambda: aie_full_width(model, batch, mean_z, heads),
                              lambda: aie_batched(model, batch, mean_z, heads), lambda a, b: float((a - b).abs().max()),
                              {"heads": len(heads), "prompts": len(batch), "prompt_tokens": int(batch.tokens.shape[1])},
                              min_seconds=min_seconds)


def bench_engine_saliency(name: str, model, vector, batch, *, heads=None, min_seconds: float = 2.0) -> BenchResult:
    """Seconds for exact saliency (every head at and after the injection layer zeroed at N): full width vs last column."""
    from tvlens._reference import exact_drops_full_width
    from tvlens.analysis.saliency import exact_drops

    cfg = model.cfg
    first = min(s.layer for s in vector.sites)
    heads = heads or [(lay, h) for lay in range(first, cfg.n_layers) for h in range(cfg.n_heads)]
    return _against_reference(name, model, lambda: exact_drops_full_width(model, vector, batch, heads),
                              lambda: exact_drops(model, vector, batch, heads), lambda a, b: float((a[0] - b[0]).abs().max()),
                              {"heads": len(heads), "prompts": len(batch), "prompt_tokens": int(batch.tokens.shape[1]),
                               "injection_layer": first}, min_seconds=min_seconds)


def bench_engine_ablation(name: str, model, vector, batch, kind: str, *, n_sets: int = 6, min_seconds: float = 2.0) -> BenchResult:
    """Seconds for head ablation's conditions (zero-shot, θ, ``n_sets`` random sets of 10% of the heads ablated at N).

    ``n_sets=6`` is one :func:`~tvlens.analysis.ablation.head_ablation` call with its defaults: the key
    set and ``n_random=5`` random sets (random sets stand in for the key set: the cost is the same)."""
    from tvlens._reference import measure_conditions_full_width
    from tvlens.analysis._inputs import pool_heads, random_head_sets
    from tvlens.analysis.ablation import measure_conditions

    first = min(s.layer for s in vector.sites)
    pool = pool_heads(model, first)
    sets = random_head_sets(pool, max(1, len(pool) // 10), n_sets, 0)

    def diff(a, b) -> float:
        flat = lambda r: [r[0], r[1], *r[2]]  # noqa: E731
        if any(x[0] != y[0] for x, y in zip(flat(a), flat(b))):
            return float("inf")  # an accuracy differs
        return max(abs(x[1] - y[1]) for x, y in zip(flat(a), flat(b)))

    return _against_reference(name, model, lambda: measure_conditions_full_width(model, vector, batch, sets, kind),
                              lambda: measure_conditions(model, vector, batch, sets, kind), diff,
                              {"kind": kind, "sets": n_sets, "heads_per_set": len(sets[0]), "prompts": len(batch),
                               "prompt_tokens": int(batch.tokens.shape[1]), "injection_layer": first}, min_seconds=min_seconds)


def bench_engine_steered_eval(name: str, model, batch, layers, *, batch_size: int = 64, seed: int = 0,
                              min_seconds: float = 2.0) -> BenchResult:
    """Seconds to evaluate the unsteered run and one random vector at each of ``layers`` (last token) on ``batch``:
    a full forward with the edit hooked in per condition (``tvlens._reference``) vs ``evaluate``'s engine path
    (one prefix per sub-batch shared by every condition, each condition's last column from its layer).

    ``one_condition_*`` time a single steered evaluation (the vector at the middle of ``layers``) both ways.
    """
    from tvlens._hooks import AddAt
    from tvlens._reference import steered_logits_full_forward
    from tvlens.evaluate import conditions_logits

    cfg = model.cfg
    g = torch.Generator().manual_seed(seed)
    conditions = [[]] + [[AddAt((Site(lay, -1),), 4 * torch.randn(1, cfg.d_model, generator=g))] for lay in layers]
    one = [conditions[1 + len(layers) // 2]]
    gold = batch.answer_ids

    def diff(a, b) -> float:
        if any(not torch.equal((x.argmax(-1) == gold.to(x.device)), (y.argmax(-1) == gold.to(y.device))) for x, y in zip(a, b)):
            return float("inf")  # a correct/wrong verdict differs: accuracies would move
        return max(float((x - y).abs().max()) for x, y in zip(a, b))

    res = _against_reference(name, model, lambda: steered_logits_full_forward(model, batch, conditions, batch_size=batch_size),
                             lambda: conditions_logits(model, batch, conditions, batch_size=batch_size), diff,
                             {"conditions": len(conditions), "layers": list(layers), "prompts": len(batch),
                              "prompt_tokens": int(batch.tokens.shape[1]), "d_vocab": cfg.d_vocab}, min_seconds=min_seconds)
    ref1 = _time_per_call(lambda: steered_logits_full_forward(model, batch, one, batch_size=batch_size), min_calls=1,
                          min_seconds=min_seconds)
    new1 = _time_per_call(lambda: conditions_logits(model, batch, one, batch_size=batch_size), min_calls=1, min_seconds=min_seconds)
    return BenchResult(res.name, res.baseline_s, res.fast_s, {**res.details, "one_condition_baseline_s": ref1,
                                                               "one_condition_fast_s": new1, "one_condition_ratio": ref1 / new1})


def smollm2_steered_eval(*, quick: bool = False) -> BenchResult:
    """The steered-evaluation entry on SmolLM2-135M itself (``tv.load_model("smollm2")``), 8-shot antonym prompts
    (one of :func:`smollm2_benchmarks`' entries)."""
    return smollm2_benchmarks(quick=quick, only=("steered_eval",))[0]


def smollm2_benchmarks(*, quick: bool = False, only: tuple[str, ...] | None = None) -> list[BenchResult]:
    """Issue #17's entries on SmolLM2-135M itself (``tv.load_model("smollm2")``, ``tvlens bench --model smollm2``):
    AIE of all 270 heads and exact saliency (135 heads) on 10-shot antonym prompts, zero/mean/path ablation
    (zero-shot test queries) and steered evaluation (8-shot), each against the kept reference.

    θ is a random vector at L15@-1 (timing and agreement do not depend on a trained one). ``quick``:
    fewer prompts and no repeated timing; ``only``: a subset of "aie", "saliency", "ablation", "steered_eval".
    """
    import tvlens as tv
    from tvlens.vector import TaskVector

    model = tv.load_model("smollm2")
    cfg = model.cfg
    theta = torch.randn(1, cfg.d_model, generator=torch.Generator().manual_seed(0))
    vector = TaskVector(values=theta, sites=(Site(cfg.n_layers // 2, -1),), task="antonym", d_model=cfg.d_model,
                        n_layers=cfg.n_layers, model_fingerprint=fingerprint(model))
    splits = tv.make_splits(tv.tasks.get("antonym"))
    return _engine_entries("smollm2", model, vector, splits, quick=quick, only=only,
                           n_ten=4 if quick else 25, n_zero=16 if quick else 64, n_eight=16 if quick else 64)


def _engine_entries(tag: str, model, vector, splits, *, quick: bool, only: tuple[str, ...] | None, n_ten: int, n_zero: int,
                    n_eight: int) -> list[BenchResult]:
    """The engine entries of one model: each in its own peak-memory window."""
    import tvlens as tv

    min_s = 0.0 if quick else 2.0
    want = lambda what: only is None or what in only  # noqa: E731
    results = []
    if want("aie") or want("saliency"):
        ten = tv.make_prompts(splits, "train", k=10, n=n_ten).tokenize(model)  # Todd et al.: 25 corrupted prompts
    if want("aie"):
        results.append(_measured(lambda: bench_engine_aie(f"engine_fv_aie_{tag}_10shot", model, ten, min_seconds=min_s), model))
    if want("saliency"):
        results.append(_measured(lambda: bench_engine_saliency(f"engine_exact_saliency_{tag}_10shot", model, vector, ten,
                                                               min_seconds=min_s), model))
    if want("ablation"):
        # zero-shot test queries (the paper's setting: a handful of tokens, so little prefix to skip) and the
        # same vector on 8-shot prompts (an LTV alongside ICL prompts), where the last column is a small share
        zero_shot = tv.make_prompts(splits, "test", n=n_zero).tokenize(model)
        few_shot = tv.make_prompts(splits, "test", k=8, n=n_eight).tokenize(model)
        for suffix, batch in (("", zero_shot), ("_8shot", few_shot)):
            for kind in ("zero", "mean", "path"):
                results.append(_measured(lambda: bench_engine_ablation(f"engine_{kind}_ablation_{tag}{suffix}", model, vector, batch,
                                                                       kind, min_seconds=min_s), model))
    if want("steered_eval"):
        eight = tv.make_prompts(splits, "test", k=8, n=n_eight).tokenize(model)
        layers = range(0, model.cfg.n_layers, max(1, model.cfg.n_layers // 6))  # six vectors (sweep-like) and the unsteered run
        results.append(_measured(lambda: bench_engine_steered_eval(f"engine_steered_eval_{tag}_8shot", model, eight, layers,
                                                                   min_seconds=min_s), model))
    return results


def _smollm2_shape_with_tokenizer(tokenizer, *, n_layers: int = 30, seed: int = 0):
    """A random model of SmolLM2-135M's layout (d_model 576, 9 query / 3 key-value heads, rotary, RMS, gated SiLU)."""
    from tvlens.vector import TaskVector

    model = _random_model(tokenizer, seed=seed, n_layers=n_layers, d_model=576, n_heads=9, n_key_value_heads=3, d_head=64,
                          d_mlp=1536, n_ctx=256, d_vocab=len(tokenizer.get_vocab()), act_fn="silu", gated_mlp=True,
                          normalization_type="RMS", positional_embedding_type="rotary", rotary_dim=64, final_rms=True)
    cfg = model.cfg
    theta = torch.randn(1, cfg.d_model, generator=torch.Generator().manual_seed(seed))
    layer = n_layers // 2
    return model, TaskVector(values=theta, sites=(Site(layer, -1),), task="toy/antonym", d_model=cfg.d_model, n_layers=n_layers,
                             model_fingerprint=fingerprint(model))


def engine_benchmarks(*, quick: bool = False) -> list[BenchResult]:
    """Issue #17's entries: AIE (10-shot), exact saliency (10-shot), zero/mean/path ablation and steered evaluation
    (8-shot), the kept references vs the engine,
    on a SmolLM2-shaped random model with the toy tokenizer (``quick``: fewer layers and prompts).
    The same entries on SmolLM2 itself: :func:`smollm2_benchmarks`."""
    import tvlens as tv

    toy = tv.load_model("toy")
    model, vector = _smollm2_shape_with_tokenizer(toy.tokenizer, n_layers=6 if quick else 30)
    splits = tv.make_splits(tv.tasks.get("toy/antonym"))
    return _engine_entries("smollm2_shape", model, vector, splits, quick=quick, only=None, n_ten=4 if quick else 25,
                           n_zero=8 if quick else 64, n_eight=16 if quick else 64)


def _gpt2_shape_batch(batch: int, n_tokens: int, seed: int = 0):
    from tvlens import _backend

    shape = dict(n_layers=12, d_model=768, n_heads=12, d_head=64, d_mlp=3072, n_ctx=1024, d_vocab=50257, act_fn="gelu_new",
                 normalization_type="LN")
    if _backend.default_backend() == "hooked":
        model = _random_model(None, seed=seed, **shape)
    else:  # the bridge needs a tokenizer to load; the toy's (only its special tokens matter here)
        import tvlens as tv

        model = _random_model(tv.load_model("toy").tokenizer, seed=seed, **shape)
    cfg = model.cfg
    # frozen weights, as a user training θ on a fixed model sets them: with trainable weights autograd would keep
    # every layer's inputs for their (never computed) gradients, tripling the naive step's memory
    model.requires_grad_(False)
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, cfg.d_vocab, (batch, n_tokens), generator=g)
    last = torch.full((batch,), n_tokens - 1)
    tb = TargetBatch(tokens, torch.ones_like(tokens), torch.zeros(batch, dtype=torch.long), last,
                     torch.arange(batch), last.clone(), torch.randint(0, cfg.d_vocab, (batch,), generator=g),
                     torch.ones(batch), torch.zeros(batch, dtype=torch.long))
    return model, tb


def bench_linear_copies(name: str, model, prompts, layer: int, *, copies: int = 32, min_seconds: float = 2.0) -> BenchResult:
    """Seconds to get the final states of ``copies`` noisy vectors x every prompt (linear propagation):
    full forward passes with a per-row vector vs the prefix-cached last-column path."""
    from tvlens._hooks import AddPerRow, Cache, intervene
    from tvlens.analysis.linear import SuffixStates

    site = Site(layer, -1)
    thetas = torch.randn(copies, model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    batch = prompts.tokenize(model)
    n = len(batch)
    tokens, mask = batch.tokens.repeat(copies, 1), batch.attention_mask.repeat(copies, 1)  # [copy * query, pos]
    rows, last = torch.arange(copies * n), batch.last_index.repeat(copies)
    final = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    out = {}

    def naive() -> None:
        cache = Cache((final,))
        with torch.no_grad(), intervene(model, AddPerRow(site, thetas.repeat_interleave(n, 0)), cache):
            model(tokens, attention_mask=mask, return_type=None)
        out["naive"] = cache.store[final][rows, last].reshape(copies, n, -1)

    suffix = SuffixStates(model, prompts, site)  # prepared once per (prompts, layer), as linear_propagation does

    def fast() -> None:
        out["fast"] = suffix.states(thetas)

    baseline = _time_per_call(naive, min_calls=2, min_seconds=min_seconds)
    quick = _time_per_call(fast, min_calls=2, min_seconds=min_seconds)
    details = {"batch": copies * n, "copies": copies, "prompts": n, "layer": layer,
               "max_abs_diff": float((out["naive"] - out["fast"]).abs().max())}
    log.info("%s: full forward %.4f s, prefix-cached %.4f s", name, baseline, quick)
    return BenchResult(name, baseline, quick, details)


def run_benchmarks(*, quick: bool = False) -> list[BenchResult]:
    """The LTV step benchmarks of issue #3 (toy zero-shot, toy 8-shot, GPT-2-shaped 128 tokens), the FV AIE and head saliency."""
    import tvlens as tv

    min_s = 0.5 if quick else 2.0
    results = []
    model = tv.load_model("toy")
    layer = model.cfg.n_layers // 2
    splits = tv.make_splits(tv.tasks.get("toy/antonym"))
    from tvlens.ltv._objective import fast_path_unsupported_reason

    if reason := fast_path_unsupported_reason(model):  # the toy on TransformerLens 4.x: a bridge over the native model
        log.warning("skipping the toy's LTV step entries: the fast path cannot run on it (%s)", reason)
    else:
        for k, name in ((0, "ltv_step_toy_zero_shot"), (8, "ltv_step_toy_8shot")):
            tb = build_targets(model, tv.make_prompts(splits, "train", k=k), padding_side="left")
            results.append(_measured(lambda: bench_ltv_step(name, model, tb, (Site(layer, -1),), batch=32, min_seconds=min_s)))
    batch = 8 if quick else LTVConfig().batch_size  # the default training batch
    big, tb = _gpt2_shape_batch(batch=2 * batch, n_tokens=128)  # prepared pool of 2 x batch prompts
    # the naive step at this size holds full-vocabulary logits for every column of every prompt (8.6 GB at batch 32
    # with trainable weights): it runs 2 prompts per forward and sums the gradients (the same step), and the fast
    # path prepares 8 prompts at a time
    results.append(_measured(lambda: bench_ltv_step("ltv_step_gpt2_shape_128", big, tb, (Site(6, -1),), batch=batch,
                                                    min_seconds=min_s, naive_rows=2, prepare_rows=8)))
    del big, tb  # 124M parameters: not held through the later entries
    # FV head AIE on the toy model: 25 corrupted 8-shot prompts (Todd et al.'s count), every head
    fv_batch = tv.make_prompts(splits, "train", k=8, n=25).tokenize(model)
    results.append(_measured(lambda: bench_fv_aie("fv_aie_toy_8shot_all_heads", model, fv_batch, min_seconds=min_s)))
    # linear propagation: final states of 32 noisy copies x 16 8-shot prompts, vector at layer 1
    results.append(_measured(lambda: bench_linear_copies("linear_copies_toy_8shot", model, tv.make_prompts(splits, "train", k=8, n=16),
                                                         1, min_seconds=min_s)))
    # head saliency of the default LTV (every head of its layer and later) on the zero-shot test queries
    vector = tv.train_ltv(model, "toy/antonym", progress=False).vector
    results.append(_measured(lambda: bench_saliency("saliency_toy_exact_vs_one_pass", model, vector, tv.make_prompts(splits, "test"),
                                                    min_seconds=min_s)))
    # the same at a GPT-2-small layout (12 layers x 12 heads, d_model 768; random weights, the toy tokenizer,
    # a random vector at layer 6): 72 heads read it, so exact mode needs 72 ablated copies of every prompt
    mid, mid_vector = _gpt2_shape_with_tokenizer(model.tokenizer)
    results.append(_measured(lambda: bench_saliency("saliency_gpt2_shape_exact_vs_one_pass", mid, mid_vector,
                                                    tv.make_prompts(splits, "test", n=8 if quick else 25), min_seconds=min_s)))
    del mid, mid_vector
    return results + engine_benchmarks(quick=quick)


def _gpt2_shape_with_tokenizer(tokenizer, seed: int = 0):
    from tvlens.vector import TaskVector

    model = _random_model(tokenizer, seed=seed, n_layers=12, d_model=768, n_heads=12, d_head=64, d_mlp=3072, n_ctx=128,
                          d_vocab=len(tokenizer.get_vocab()), act_fn="gelu_new", normalization_type="LN")
    cfg = model.cfg
    theta = torch.randn(1, cfg.d_model, generator=torch.Generator().manual_seed(seed))
    return model, TaskVector(values=theta, sites=(Site(6, -1),), task="toy/antonym", d_model=cfg.d_model, n_layers=cfg.n_layers,
                             model_fingerprint=fingerprint(model))
