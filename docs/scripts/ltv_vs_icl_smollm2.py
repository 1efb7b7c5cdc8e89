"""LTV vs ICL on a real model under each task's default template (issue 20, item 3).

For each task and layer: the default ``LTVConfig()`` LTV (train / val / test accuracy with the
returned θ, the per-epoch training curve), the first-token-only loss (``multi_token=False``), the
paper's recipe (``LTVConfig.paper()``, at ``--paper-layers``), scenario 6 (θ trained and applied on
``--shots``-shot ICL prompts, per layer) and scenario 4 (one vector at every 4th layer, last token),
next to zero-shot and ``--shots``-shot ICL on the same queries; Vanilla TV under the same scenarios
from ``tv.compare`` (methods ``vanilla_tv`` and ``ltv``: its LTVs are the ones trained here, read back
from the vector store).

    OMP_NUM_THREADS=1 python docs/scripts/ltv_vs_icl_smollm2.py --out ltv_vs_icl.json --md ltv_vs_icl.md

Accuracy is full-vocabulary argmax of the first answer token, with 95% Wilson intervals. Prints
one progress line per step on stderr; writes the JSON (after every task, so a partial run keeps
what it measured), the markdown tables and, with ``--html``, the training curves as offline HTML.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

import tvlens as tv
from tvlens.evaluate import evaluate_conditions
from tvlens.ltv import Scenario

T0 = time.perf_counter()


def say(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def cell(r) -> dict:
    return {"accuracy": r.accuracy, "ci95": [round(x, 4) for x in r.ci95], "n": r.n, "correct": r.correct}


def train(model, task, splits, variant: str, sites, shots: int, cfg) -> tuple[dict, object]:
    """One LTV (from the vector store when it holds it): its record without accuracies, and its vector."""
    res = tv.train_ltv(model, task, sites=sites, shots=shots, config=cfg, splits=splits, out_of_range="clip", progress=False)
    r = {"variant": variant, "sites": [str(s) for s in sites], "shots": shots,
         "val_accuracy_best": res.val_accuracy, "best_epoch": res.best_epoch, "epochs": len(res.history),
         "steps": res.steps, "train_seconds": round(res.seconds, 1), "from_store": res.from_store,
         "history": list(res.history)}
    say(f"{task.name} {variant} {r['sites'][0]}{'..' if len(sites) > 1 else ''} shots={shots}: best val "
        f"{res.val_accuracy:.3f} ({len(res.history)} epochs, best {res.best_epoch}, {res.seconds:.0f}s{', stored' if res.from_store else ''})")
    return r, res.vector


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--tasks", nargs="+", default=["capitalize", "antonym"])
    p.add_argument("--layers", type=int, nargs="+", default=[12, 15, 18],
                   help="single-site layers (default LTV, first-token loss, scenario 6)")
    p.add_argument("--first-token-layers", type=int, nargs="*", default=None, help="default: --layers")
    p.add_argument("--s6-layers", type=int, nargs="*", default=None, help="scenario 6's layers (default: --layers)")
    p.add_argument("--paper-layers", type=int, nargs="*", default=[15])
    p.add_argument("--paper-max-epochs", type=int, default=None,
                   help="reduce LTVConfig.paper()'s 10 epochs (a documented reduction; default: the paper's)")
    p.add_argument("--shots", type=int, default=5, help="ICL reference and scenario 6's prompts")
    p.add_argument("--every", type=int, default=4, help="scenario 4's layer stride (0 = skip scenario 4)")
    p.add_argument("--compare", action="store_true", help="also run tv.compare on the same scenarios (a cross-check)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True, help="JSON of every number")
    p.add_argument("--md", default=None, help="markdown tables")
    p.add_argument("--html", default=None, help="training curves (plotly, offline HTML)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    ft_layers = a.layers if a.first_token_layers is None else a.first_token_layers
    s6_layers = a.layers if a.s6_layers is None else a.s6_layers
    model = tv.load_model(a.model)
    say(f"loaded {a.model}")
    n_layers = model.cfg.n_layers
    default = tv.LTVConfig(seed=a.seed)
    configs = {"default": default, "first_token": tv.LTVConfig(seed=a.seed, multi_token=False),
               "paper": tv.LTVConfig.paper(seed=a.seed, **({} if a.paper_max_epochs is None else {"max_epochs": a.paper_max_epochs}))}
    out: dict = {"argv": sys.argv[1:], "model": a.model, "seed": a.seed, "shots": a.shots, "layers": a.layers, "first_token_layers": ft_layers, "s6_layers": s6_layers,
                 "paper_layers": a.paper_layers, "every": a.every, "configs": {k: c.to_dict() for k, c in configs.items()},
                 "threads": a.threads, "torch": torch.__version__, "tasks": {}}

    def dump() -> None:
        out["seconds"] = round(time.perf_counter() - T0, 1)
        with open(a.out, "w") as f:
            json.dump(out, f, indent=1, default=str)

    for name in a.tasks:
        task = tv.tasks.get(name)
        splits = tv.make_splits(task, seed=a.seed)
        rec: dict = {"template": task.template_record(), "n": {s: len(splits[s]) for s in ("demo", "train", "val", "test")}}
        out["tasks"][task.name] = rec
        prompts = {(s, k): tv.make_prompts(splits, s, k=k, seed=a.seed) for s in ("train", "val", "test") for k in (0, a.shots)}
        rec["ltv"], vectors = [], []

        def run(variant: str, sites, shots: int, cfg: tv.LTVConfig, task=task, splits=splits, rec=rec, vectors=vectors) -> None:
            r, v = train(model, task, splits, variant, sites, shots, cfg)
            rec["ltv"].append(r)
            vectors.append(v)
            dump()

        for layer in a.layers:
            run("default", tv.site_grid([layer], [-1]), 0, default)
        for layer in ft_layers:
            run("first_token", tv.site_grid([layer], [-1]), 0, configs["first_token"])
        for layer in a.paper_layers:
            run("paper", tv.site_grid([layer], [-1]), 0, configs["paper"])
        for layer in s6_layers:
            run(f"scenario6_{a.shots}shot", tv.site_grid([layer], [-1]), a.shots, default)
        if a.every:
            every = tv.site_grid(range(0, n_layers, a.every), [-1])
            run(f"scenario4_every{a.every}", every, 0, default)
        # Vanilla TV as tv.compare makes it: extracted from --shots-shot prompts at the sites (add), applied to the
        # scenario's prompts (zero-shot for scenarios 1 and 4, --shots-shot for scenario 6)
        vtv_sites = {f"L{L}": tv.site_grid([L], [-1]) for L in sorted(set(a.layers) | set(s6_layers))} | ({f"every{a.every}": every} if a.every else {})
        vtvs = {}
        for key, sites in vtv_sites.items():
            t = time.perf_counter()
            vtvs[key] = tv.vanilla_tv(model, task, sites=sites, shots=a.shots, splits=splits, seed=a.seed, out_of_range="clip")
            say(f"{name} vanilla TV {key}: {time.perf_counter() - t:.0f}s")
        rec["vanilla_tv"] = {}
        # every vector for k-shot prompts, and none (k-shot ICL alone), on the same prompts in one pass per split
        for k, ref in ((0, "zero_shot"), (a.shots, f"icl{a.shots}")):
            conds = {"none": None} | {str(i): tv.steering(model, v) for i, (r, v) in enumerate(zip(rec["ltv"], vectors))
                                      if r["shots"] == k}
            conds |= {f"vtv {key} {k}-shot": tv.steering(model, v) for key, v in vtvs.items() if k == 0 or key.startswith("L")}
            rec[ref] = {}
            for split in ("train", "val", "test"):
                t = time.perf_counter()
                got = evaluate_conditions(model, prompts[split, k], conds)
                rec[ref][split] = cell(got["none"])
                for i, res in got.items():
                    if i.startswith("vtv"):
                        rec["vanilla_tv"].setdefault(i[4:], {})[split] = cell(res)
                    elif i != "none":
                        rec["ltv"][int(i)][split] = cell(res)
                say(f"{name} {k}-shot {split}: {len(conds)} conditions in {time.perf_counter() - t:.0f}s; " + ", ".join(
                    f"{i if not i.isdigit() else rec['ltv'][int(i)]['variant'] + ' ' + rec['ltv'][int(i)]['sites'][0]} {res.accuracy:.3f}"
                    for i, res in got.items()))
            dump()
        if a.compare:  # the same cells from tv.compare itself (its LTVs read back from the store), as a cross-check
            scen = {f"s1_L{L}": Scenario(f"s1_L{L}", f"L={{{L}}}, P={{-1}}, zero-shot", tv.site_grid([L], [-1]), 0)
                    for L in a.layers}
            scen |= {f"s6_L{L}": Scenario(f"s6_L{L}", f"L={{{L}}}, P={{-1}}, {a.shots}-shot prompts", tv.site_grid([L], [-1]),
                                          a.shots) for L in s6_layers}
            if a.every:
                scen[f"s4_every{a.every}"] = Scenario(f"s4_every{a.every}", f"L={{0,{a.every},...}}, P={{-1}}", every, 0)
            t = time.perf_counter()
            cmp = tv.compare(model, [task], scenarios=scen, methods=("vanilla_tv", "ltv"), ltv_config=default,
                             vanilla_shots=a.shots, seed=a.seed)
            rec["compare"] = cmp.payload()
            rec["compare_seconds"] = round(time.perf_counter() - t, 1)
            say(f"{name} compare ({len(scen)} scenarios): {rec['compare_seconds']:.0f}s")
            dump()

    dump()
    if a.md:
        with open(a.md, "w") as f:
            f.write(markdown(out))
    if a.html:
        curves(out).write_html(a.html, include_plotlyjs=True)
    say(f"done: {a.out}")


def _f(c: dict, ci: bool = True) -> str:
    s = f"{c['accuracy']:.2f}"
    return s + (f" [{c['ci95'][0]:.2f}, {c['ci95'][1]:.2f}]" if ci else "")


def markdown(out: dict) -> str:
    shots = out["shots"]
    lines = []
    for name, rec in out["tasks"].items():
        n = rec["n"]
        zs, icl = rec["zero_shot"], rec[f"icl{shots}"]
        lines += [f"#### {name} (train / val / test queries: {n['train']} / {n['val']} / {n['test']})", "",
                  (f"Zero-shot: train {_f(zs['train'], False)}, val {_f(zs['val'], False)}, test {_f(zs['test'])}. "
                   f"{shots}-shot ICL: train {_f(icl['train'], False)}, val {_f(icl['val'], False)}, test {_f(icl['test'])}."), "",
                  "| variant | sites | prompts | train | val | test [95% CI] | epochs (best) | steps | train s |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in rec["ltv"]:
            sites = r["sites"][0] if len(r["sites"]) == 1 else f"{r['sites'][0]}..{r['sites'][-1]} ({len(r['sites'])})"
            lines.append(f"| {r['variant']} | {sites} | {r['shots']}-shot | {_f(r['train'], False)} | {_f(r['val'], False)} | "
                         f"{_f(r['test'])} | {r['epochs']} ({r['best_epoch']}) | {r['steps']} | {r['train_seconds']:.0f} |")
        lines += ["", (f"Vanilla TV (extracted from {shots}-shot prompts, added at the same sites, as tv.compare makes it) "
                      "against the LTV and ICL on the same test queries:"), "",
                  "| sites | prompts | no vector | Vanilla TV | LTV |", "|---|---|---|---|---|"]
        for r in rec["ltv"]:
            if not r["variant"].startswith(("default", "scenario")):
                continue
            key = r["sites"][0].split("@")[0] if len(r["sites"]) == 1 else f"every{out['every']}"
            sites = r["sites"][0] if len(r["sites"]) == 1 else f"{r['sites'][0]}..{r['sites'][-1]} ({len(r['sites'])})"
            v = rec["vanilla_tv"].get(f"{key} {r['shots']}-shot")
            ref = icl if r["shots"] else zs
            lines.append(f"| {sites} | {r['shots']}-shot | {_f(ref['test'])} | {_f(v['test']) if v else '-'} | {_f(r['test'])} |")
        lines += ["", "Training curves (per epoch: train loss / val accuracy):", ""]
        for r in rec["ltv"]:
            pts = ", ".join(f"{h['train_loss']:.2f}/{h['val_accuracy']:.2f}" for h in r["history"])
            lines.append(f"- {r['variant']} {r['sites'][0]}{'..' if len(r['sites']) > 1 else ''}: {pts}")
        lines.append("")
    lines.append(f"Wall time of the whole run: {out['seconds'] / 60:.1f} min.")
    return "\n".join(lines) + "\n"


def curves(out: dict):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    names = list(out["tasks"])
    fig = make_subplots(rows=2, cols=len(names), subplot_titles=names, shared_xaxes=True, vertical_spacing=0.08)
    for j, name in enumerate(names, start=1):
        for r in out["tasks"][name]["ltv"]:
            label = f"{r['variant']} {r['sites'][0]}{'..' if len(r['sites']) > 1 else ''}"
            x = [h["epoch"] for h in r["history"]]
            fig.add_trace(go.Scatter(x=x, y=[h["train_loss"] for h in r["history"]], name=label, legendgroup=label,
                                     showlegend=j == 1), row=1, col=j)
            fig.add_trace(go.Scatter(x=x, y=[h["val_accuracy"] for h in r["history"]], name=label, legendgroup=label,
                                     showlegend=False), row=2, col=j)
    fig.update_yaxes(title_text="train loss", row=1, col=1)
    fig.update_yaxes(title_text="val accuracy", row=2, col=1)
    fig.update_xaxes(title_text="epoch", row=2)
    fig.update_layout(title=f"LTV training curves on {out['model']}", height=750)
    return fig


if __name__ == "__main__":
    main()
