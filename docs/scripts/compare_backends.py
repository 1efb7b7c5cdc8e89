"""Backend comparison (issue #19): the same LTV and the same analyses on TransformerLens 3.9 (HookedTransformer)
and on TransformerLens 4.3 (TransformerBridge). Public API only.

Run once per venv, then compare the two files (one thread, as docs/backends.md's numbers):

    export OMP_NUM_THREADS=1
    # 3.9 venv (hooked): trains the LTV, saves it to --save-vector, analyses that saved file
    python docs/scripts/compare_backends.py run --model toy --out /tmp/cmp/toy-39.json --save-vector /tmp/cmp/toy-ltv.safetensors
    # 4.3 venv (bridge): trains the LTV again (same seed), but analyses the 3.9 run's file
    python docs/scripts/compare_backends.py run --model toy --out /tmp/cmp/toy-43.json --vector /tmp/cmp/toy-ltv.safetensors
    python docs/scripts/compare_backends.py compare /tmp/cmp/toy-39.json /tmp/cmp/toy-43.json --md /tmp/cmp/toy.md

``run`` (a) trains an LTV with a fixed seed and records its values and test accuracy, (b) runs every analysis on
one fixed vector file (so that the analyses' differences are not training differences) and (c) writes every
headline number to JSON. ``compare`` prints (and with ``--md`` writes) one markdown row per headline quantity.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time

os.environ.setdefault("TVLENS_NO_CACHE", "1")  # never read a vector, AIE or fit stored by the other venv

import torch

import tvlens as tv

# the fixed recipe per model: task, layer, LTV config and the sizes of the analyses
SETUPS = {
    "toy": dict(task="toy/antonym", layer=2, config=dict(), n=64, shots=8, exact=True,
                ablation_kinds=("zero", "mean", "path"), n_random=5,
                linear=dict(n_queries=16, n=64), aie=dict(shots=5, n_clean=32, n_corrupt=16), fv_top_k=5),
    "smollm2": dict(task="capitalize", layer=15, config=dict(max_epochs=2, n_train=64, n_val=16, epoch_size=32, batch_size=16),
                    n=32, shots=5, exact=True, ablation_kinds=("zero", "mean", "path"), n_random=5,
                    linear=dict(n_queries=8, n=32), aie=dict(shots=5, n_clean=16, n_corrupt=8),
                    aie_max_train=48, fv_top_k=10),
}
PROMPTS = {"toy": "kevi -> ", "smollm2": "The capital of France is"}
TOP_K = 10  # heads listed in the top-head rows


def _f(x) -> float:
    return float(x)


def _list(t) -> list:
    return [float(v) for v in torch.as_tensor(t).detach().flatten().tolist()]


def _heads(pairs) -> list:
    return [f"L{a}H{b}" for a, b in pairs]


class Rows:
    """Ordered headline rows: name -> {"kind": scalar|vector|ranking, "value": ..., "group": ...}."""

    def __init__(self):
        self.rows: dict[str, dict] = {}
        self.seconds: dict[str, float] = {}

    def scalar(self, group, name, value):
        self.rows[name] = {"group": group, "kind": "scalar", "value": None if value is None else _f(value)}

    def vector(self, group, name, values):
        self.rows[name] = {"group": group, "kind": "vector", "value": _list(values)}

    def ranking(self, group, name, items):
        self.rows[name] = {"group": group, "kind": "ranking", "value": list(items)}


def run(args) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    s = SETUPS[args.model]
    out = Rows()
    t_all = time.time()

    t = time.time()
    model = tv.load_model(args.model)
    out.seconds["load"] = time.time() - t
    import transformer_lens

    backend = type(model).__name__
    info = {"model": args.model, "backend": backend, "fingerprint": tv.fingerprint(model),
            "transformer_lens": getattr(transformer_lens, "__version__", None) or _version("transformer_lens"),
            "torch": torch.__version__, "python": platform.python_version(), "threads": torch.get_num_threads()}
    print(f"{args.model} on {backend} (TransformerLens {info['transformer_lens']})", flush=True)

    # logits on one prompt
    with torch.no_grad():
        logits = model(model.to_tokens(PROMPTS[args.model]))[0, -1].float()
    out.vector("model", "logits, last position of the prompt (every token)", logits)
    out.ranking("model", "top 5 tokens at the last position", [int(i) for i in logits.topk(5).indices])

    # (a) the LTV, trained here with a fixed seed
    task = tv.tasks.get(s["task"])
    splits = tv.make_splits(task, seed=0)
    t = time.time()
    res = tv.train_ltv(model, task, layers=[s["layer"]], positions=[-1], splits=splits, config=tv.LTVConfig(**s["config"]),
                       progress=False, cache=False)
    out.seconds["train"] = time.time() - t
    trained = res.vector
    test = tv.make_prompts(splits, "test", k=0)
    t = time.time()
    acc_trained = tv.evaluate(model, test, intervention=tv.steering(model, trained)).accuracy
    out.seconds["eval_trained"] = time.time() - t
    ltv = {"values": _list(trained.values), "norm": _f(trained.values.norm()), "best_epoch": res.best_epoch, "steps": res.steps,
           "test_accuracy": acc_trained, "n_test": len(test)}
    print(f"trained: norm {ltv['norm']:.4f}, best epoch {res.best_epoch}, test accuracy {acc_trained:.4f} "
          f"({out.seconds['train']:.1f} s)", flush=True)

    # (b) the fixed vector every analysis reads
    if args.save_vector:
        trained.save(args.save_vector)
    path = args.vector or args.save_vector
    if path is None:
        sys.exit("give --save-vector PATH (the reference run) or --vector PATH (the other run)")
    v = tv.TaskVector.load(path)
    same_fp = v.model_fingerprint == info["fingerprint"]
    info.update(vector_file=os.path.abspath(path), vector_fingerprint=v.model_fingerprint, vector_fingerprint_matches=same_fp)
    n = s["n"]
    prompts = tv.make_prompts(splits, "test", k=0, n=n)  # the vector's own split seed (0)
    G = "evaluate"

    def timed(name, fn):
        t0 = time.time()
        r = fn()
        out.seconds[name] = time.time() - t0
        print(f"  {name}: {out.seconds[name]:.1f} s", flush=True)
        return r

    ev = timed("evaluate", lambda: tv.evaluate(model, test, intervention=tv.steering(model, v, allow_other_fingerprint=True)))
    out.scalar(G, f"accuracy with the fixed LTV (all {len(test)} test queries)", ev.accuracy)
    out.scalar(G, "mean log p(gold) with the fixed LTV", ev.mean_logprob)
    zs = timed("evaluate_zero_shot", lambda: tv.evaluate(model, test))
    out.scalar(G, "zero-shot accuracy (no vector)", zs.accuracy)

    # saliency (grad; exact on request) -> the key heads of ablation and sinks
    G = "saliency"
    sal = timed("saliency_grad", lambda: tv.analysis.head_saliency(model, v, prompts=prompts, mode="grad", progress=False))
    out.ranking(G, "grad saliency: full head ranking", _heads(sal.ranked()))
    out.vector(G, "grad saliency: scores of the scored heads", sal.scores[sal.scores.isfinite()])
    out.vector(G, f"grad saliency: top {TOP_K} scores", [sal.scores[h] for h in sal.ranked()[:TOP_K]])
    out.scalar(G, "grad saliency: p(gold) with θ", sal.p_gold)
    out.ranking(G, "key heads (top 10% by grad saliency)", _heads(sal.top(0.1)))
    if s["exact"]:
        ex = timed("saliency_exact", lambda: tv.analysis.head_saliency(model, v, prompts=prompts, mode="exact", progress=False))
        out.ranking(G, "exact saliency: full head ranking", _heads(ex.ranked()))
        out.vector(G, "exact saliency: scores of the scored heads", ex.scores[ex.scores.isfinite()])
        out.scalar(G, "Spearman rho, grad vs exact saliency", tv.analysis.spearman(sal, ex))

    # ablation
    G = "ablation"
    for kind in s["ablation_kinds"]:
        ab = timed(f"ablation_{kind}", lambda kind=kind: tv.analysis.head_ablation(model, v, prompts=prompts, heads=sal, kind=kind,
                                                                                  n_random=s["n_random"], seed=0))
        out.scalar(G, f"{kind} ablation: accuracy, nothing ablated", ab.none)
        out.scalar(G, f"{kind} ablation: accuracy, key heads ablated", ab.key)
        out.vector(G, f"{kind} ablation: accuracy, each random set ablated", ab.random)
        out.scalar(G, f"{kind} ablation: p(gold), nothing ablated", ab.p_none)
        out.scalar(G, f"{kind} ablation: p(gold), key heads ablated", ab.p_key)
        out.vector(G, f"{kind} ablation: p(gold), each random set", ab.p_random)
        out.scalar(G, f"{kind} ablation: margin (random mean - key)", ab.random_mean - ab.key)
        out.ranking(G, f"{kind} ablation: the random sets", [" ".join(_heads(hs)) for hs in ab.random_heads])

    # OV products and reconstruction
    G = "ov"
    ov = timed("ov_products", lambda: tv.analysis.ov_products(model, v, prompts=prompts, ln="folded"))
    valid = ov.valid[:, None].expand_as(ov.ov_norm)
    out.vector(G, "OV products: ‖W_O W_V LN(θ)‖ per head", ov.ov_norm[valid])
    out.vector(G, "OV products: cos(product, θ) per head", ov.cos_theta[valid])
    out.vector(G, "OV products: label projection per head", ov.label_proj[valid])
    out.vector(G, "OV products: attention from N to θ's position per head", ov.attention[valid])
    order = ov.ov_norm.masked_fill(~valid, -1).flatten().argsort(descending=True, stable=True)[:TOP_K]
    h = ov.ov_norm.shape[1]
    top_ov = [(int(i) // h, int(i) % h) for i in order]
    out.ranking(G, f"OV products: top {TOP_K} heads by norm", _heads(top_ov))
    out.ranking(G, "OV products: top token of the largest product", [ov.top_tokens[top_ov[0][0]][top_ov[0][1]][0]])
    rec = timed("ov_reconstruction", lambda: tv.analysis.ov_reconstruction(model, v, prompts=prompts, ln="actual"))
    for c in rec.conditions:
        out.scalar(G, f"OV reconstruction: accuracy, {c}", rec.accuracy(c))
    out.scalar(G, "OV reconstruction: cos(variant A weighted, attention path)", rec.cos_a_vs_attn)
    best = max(rec.variant_a, rec.variant_b, rec.variant_a_weighted, rec.variant_b_weighted)
    gain = rec.ltv - rec.zero_shot
    out.scalar(G, "OV reconstruction: share of the LTV's gain recovered (claims)", (best - rec.zero_shot) / gain if gain > 0 else None)

    # logit lens and task alignment per layer
    G = "lens"
    lens = timed("logit_lens", lambda: tv.analysis.logit_lens(model, task, vectors={"LTV": v}, shots=(0, s["shots"]), n=n))
    for i, c in enumerate(lens.conditions):
        out.vector(G, f"logit lens: accuracy per layer, {c}", lens.accuracy[i])
        out.vector(G, f"logit lens: label accuracy per layer, {c}", lens.label_accuracy[i])
        out.vector(G, f"task alignment per layer, {c}", lens.alignment[i])
    out.scalar(G, "logit lens: first layer where ICL beats zero-shot", lens.icl_beats_zero_shot_layer)
    dec = timed("decoded", lambda: tv.analysis.decoded_tokens(model, {"LTV": v}, k=10))
    out.ranking(G, "decoded θ: top 10 token ids", [int(x) for x in dec.token_ids[0]])
    out.vector(G, "decoded θ: their logits", dec.scores[0])

    # linear propagation
    G = "linear"
    lin = timed("linear", lambda: tv.analysis.linear_propagation(model, v, task, seed=0, cache=False, **s["linear"]))
    for k in ("fit_r2", "fit_r2_uncentered", "injected_acc", "reconstructed_acc", "mean_shift_acc", "zero_shot_acc"):
        out.scalar(G, f"linear propagation: {k}", getattr(lin, k))
    out.scalar(G, "linear propagation: ‖W θ‖", lin.W_theta.norm())

    # attention sinks
    G = "sinks"
    sk = timed("sinks", lambda: tv.analysis.attention_sinks(model, v, prompts=prompts, key_heads=sal, n_random=s["n_random"], seed=0))
    for k, val in sk.group_mass().items():
        out.scalar(G, f"attention sinks: {k}", val)
    out.vector(G, "attention sinks: sink mass per head", sk.sink_mass)
    out.vector(G, "attention sinks: mass on θ's position per head", sk.final_mass)

    # function-vector AIE (independent of the LTV) and the FV built from it
    G = "aie"
    # the AIE's clean prompts are drawn from every train query (one forward each): SmolLM2 caps that split
    aie_splits = tv.make_splits(task, seed=0, config=tv.SplitConfig(max_train=s["aie_max_train"])) if "aie_max_train" in s else splits
    aie = timed("head_aie", lambda: tv.head_aie(model, task, splits=aie_splits, seed=0, cache=False, **s["aie"]))
    top = aie.top(TOP_K)
    out.ranking(G, f"AIE: top {TOP_K} heads", [f"L{a}H{b}" for a, b, _ in top])
    out.vector(G, f"AIE: top {TOP_K} values", [x for _, _, x in top])
    out.vector(G, "AIE: every head", aie.aie)
    out.scalar(G, "AIE: p(gold) on corrupted prompts", aie.p_corrupt)
    out.scalar(G, "AIE: clean accuracy", aie.clean_accuracy)
    out.scalar(G, "AIE: clean prompts used", aie.n_clean)
    fv = timed("function_vector", lambda: tv.function_vector(model, task, layer=s["layer"], aie=aie, top_k=s["fv_top_k"],
                                                             splits=aie_splits, seed=0))
    out.vector(G, "function vector: values", fv.values)
    acc_fv = timed("evaluate_fv", lambda: tv.evaluate(model, test, intervention=tv.steering(model, fv)).accuracy)
    out.scalar(G, "function vector: test accuracy", acc_fv)

    out.seconds["total"] = time.time() - t_all
    doc = {"info": info, "setup": {k: (list(x) if isinstance(x, tuple) else x) for k, x in s.items()}, "ltv": ltv,
           "rows": out.rows, "seconds": out.seconds}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=1)
    print(f"wrote {args.out} ({out.seconds['total']:.0f} s)", flush=True)


def _version(name):
    from importlib.metadata import version

    return version(name)


# --- compare ---------------------------------------------------------------------------------------


def _short(kind, value) -> str:
    if value is None:
        return "None"
    if kind == "scalar":
        return f"{value:.6g}" if isinstance(value, float) and not math.isnan(value) else str(value)
    if kind == "ranking":
        if value and all(isinstance(x, str) and " " in x for x in value):  # head sets
            return f"{len(value)} sets of {len(value[0].split())} heads, first {value[0].split()[0]} …"
        body = ", ".join(str(x) for x in value[:5])
        return body + (f", … ({len(value)})" if len(value) > 5 else "")
    if len(value) <= 6:
        return "[" + ", ".join(f"{x:.4g}" for x in value) + "]"
    finite = [x for x in value if not math.isnan(x)]
    return f"{len(value)} values, max {max(finite, default=float('nan')):.4g}"


def _scale(kind, value) -> float:
    """The row's largest magnitude, at least 1: the tolerance is absolute up to 1 and relative above."""
    if kind == "ranking" or value is None:
        return 1.0
    vals = [value] if kind == "scalar" else value
    return max([1.0] + [abs(x) for x in vals if not math.isnan(x)])


def _ranking_diff(a, b) -> str:
    """Where two rankings differ: 1-based positions with both entries."""
    if len(a) != len(b):
        return f"lengths {len(a)} vs {len(b)}"
    pos = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
    return "; ".join(f"#{i + 1}: {a[i]} vs {b[i]}" for i in pos[:6]) + (f"; … ({len(pos)} positions)" if len(pos) > 6 else "")


def _diff(kind, a, b):
    """(max |a - b| or None, identical: bool)."""
    if kind == "ranking":
        return None, a == b
    if a is None or b is None:
        return None, a == b
    if kind == "scalar":
        a, b = [a], [b]
    if len(a) != len(b):
        return float("inf"), False
    d = 0.0
    for x, y in zip(a, b):
        if math.isnan(x) and math.isnan(y):
            continue
        d = max(d, abs(x - y)) if not (math.isnan(x) or math.isnan(y)) else float("inf")
    return d, d == 0.0


def compare(args) -> None:
    with open(args.a) as f:
        A = json.load(f)
    with open(args.b) as f:
        B = json.load(f)
    tol = args.tol
    ia, ib = A["info"], B["info"]
    head_a = f"{ia['backend']} (TL {ia['transformer_lens']})"
    head_b = f"{ib['backend']} (TL {ib['transformer_lens']})"
    lines = [f"### {ia['model']}: {head_a} vs {head_b}", ""]
    la, lb = A["ltv"], B["ltv"]
    d = max(abs(x - y) for x, y in zip(la["values"], lb["values"]))
    scale = max(abs(x) for x in la["values"])
    rel = math.sqrt(sum((x - y) ** 2 for x, y in zip(la["values"], lb["values"]))) / la["norm"]
    lines += ["| LTV trained on each backend (same seed) | " + head_a + " | " + head_b + " | max abs difference |", "|---|---|---|---|",
              (f"| θ values ({len(la['values'])}) | norm {la['norm']:.6g} | norm {lb['norm']:.6g} | {d:.2g} "
               f"(relative to max abs θ {scale:.3g}: {d / scale:.2g}; ‖Δθ‖/‖θ‖ {rel:.2g}) |"),
              (f"| best epoch, steps | {la['best_epoch']}, {la['steps']} | {lb['best_epoch']}, {lb['steps']} | "
               f"{'same' if (la['best_epoch'], la['steps']) == (lb['best_epoch'], lb['steps']) else 'DIFFER'} |"),
              (f"| test accuracy of the trained θ (n={la['n_test']}) | {la['test_accuracy']:.6g} | {lb['test_accuracy']:.6g} | "
               f"{abs(la['test_accuracy'] - lb['test_accuracy']):.2g} |"), ""]
    lines += [(f"Analyses on one fixed vector file (trained on {head_a}; fingerprint matches the bridge's own: "
               f"{'yes' if ib.get('vector_fingerprint_matches') else 'no, loaded with allow_other_fingerprint'})."), "",
              f"| quantity | {head_a} | {head_b} | max abs difference | identical / within {tol:g} (relative where values exceed 1) |", "|---|---|---|---|---|"]
    worst, bad = 0.0, []
    for name, ra in A["rows"].items():
        rb = B["rows"].get(name)
        if rb is None:
            lines.append(f"| {name} | {_short(ra['kind'], ra['value'])} | (missing) | | no |")
            bad.append(name)
            continue
        dd, same = _diff(ra["kind"], ra["value"], rb["value"])
        if ra["kind"] == "ranking":
            ok = "yes" if same else f"**no** ({_ranking_diff(ra['value'], rb['value'])})"
            ds = ""
        else:
            scale = _scale(ra["kind"], ra["value"])
            ok = "yes" if dd is not None and dd <= tol * scale or same else "**no**"
            ds = "" if dd is None else f"{dd:.2g}" + (f" (relative {dd / scale:.2g})" if scale > 1 and dd else "")
            if dd is not None and dd != float("inf"):
                worst = max(worst, dd)
        if ok != "yes":
            bad.append(name)
        lines.append(f"| {name} | {_short(ra['kind'], ra['value'])} | {_short(rb['kind'], rb['value'])} | {ds} | {ok} |")
    sa, sb = A["seconds"], B["seconds"]
    lines += ["", f"Largest numeric difference over the analysis rows: {worst:.2g}. "
              + (f"Rows over the tolerance or not identical: {len(bad)} ({'; '.join(bad)})." if bad else f"Every row within {tol:g}, every ranking identical."),
              "", "| seconds | " + head_a + " | " + head_b + " |", "|---|---|---|"]
    lines += [f"| {k} | {sa[k]:.1f} | {sb.get(k, float('nan')):.1f} |" for k in sa]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.md:
        with open(args.md, "w") as f:
            f.write(text)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="train the LTV and run every analysis on this venv's backend; write JSON")
    r.add_argument("--model", choices=sorted(SETUPS), required=True)
    r.add_argument("--out", required=True, help="JSON file to write")
    r.add_argument("--save-vector", help="save the LTV trained here to this file and analyse that file (the reference run)")
    r.add_argument("--vector", help="analyse this vector file (the reference run's) instead")
    c = sub.add_parser("compare", help="markdown table of two run files")
    c.add_argument("a", help="the reference run's JSON (3.9 hooked)")
    c.add_argument("b", help="the other run's JSON (4.3 bridge)")
    c.add_argument("--md", help="also write the table to this file")
    c.add_argument("--tol", type=float, default=1e-4, help="tolerance of the analysis rows (default 1e-4)")
    args = p.parse_args(argv)
    (run if args.cmd == "run" else compare)(args)


if __name__ == "__main__":
    main()
