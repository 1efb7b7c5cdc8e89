"""``tvlens analyze geometry``: cosine matrix, transfer matrix and composition of LTVs."""

from __future__ import annotations

import argparse
import time

from tvlens.cli._main import add_template_option

TOY_TASKS = ("toy/antonym", "toy/capitalize", "toy/successor", "toy/capital", "toy/add3", "toy/sentiment")
TOY_COMPOSED = "toy/capitalize+antonym"
REAL_TASKS = ("capitalize", "antonym", "capital")
REAL_COMPOSED = "capitalize+antonym"


def add_parser(add) -> None:
    sp = add("geometry", cmd_geometry, "cosine matrix, transfer matrix and composition of learned task vectors (paper Figure 4)")
    sp.add_argument("--model", default="toy", help="model spec (default: the embedded model)")
    sp.add_argument("--tasks", nargs="+", default=None,
                    help=f"tasks (default on toy: {' '.join(TOY_TASKS)}; otherwise: {' '.join(REAL_TASKS)})")
    add_template_option(sp)
    sp.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="LTV seeds per task (default 0 1 2)")
    sp.add_argument("--vary-splits", action="store_true",
                    help="each seed also draws its own train/val/test split (default: one split, seeds vary init and order)")
    sp.add_argument("--layer", type=int, default=None, help="layer of every LTV, last position (default: the middle layer)")
    sp.add_argument("--vectors", nargs="+", default=None, help="task-vector files to use instead of training (same sites)")
    sp.add_argument("--composed", default=None,
                    help=f"composed task (default: {TOY_COMPOSED} on toy, {REAL_COMPOSED} otherwise; 'none' to skip)")
    sp.add_argument("--parts", nargs=2, default=None, metavar=("A", "B"),
                    help="the two tasks whose seed-0 vectors are summed (default: the composed task's parts)")
    sp.add_argument("--scales", type=float, nargs="+", default=[1.0, 0.5], help="scales s of s*(a+b) (default 1 0.5)")
    sp.add_argument("--seed", type=int, default=0, help="seed of the splits and test demonstrations")
    sp.add_argument("--save-vectors", default=None, metavar="DIR",
                    help="keep the trained LTVs as DIR/<task>_s<seed>_L<layer>.safetensors (for --vectors later)")
    sp.add_argument("--html", default=None, help="also write a self-contained offline HTML page")


def run_geometry(model, model_name: str, *, tasks=None, seeds=(0, 1, 2), layer=None, vectors=None, composed=None,
                 parts=None, scales=(1.0, 0.5), seed: int = 0, vary_splits: bool = False, template: str | None = None) -> dict:
    """The three results (``cosines``, ``transfer``, ``composition`` or None) and the vectors."""
    import tvlens as tv
    from tvlens.analysis import composition, train_vectors, transfer_matrix, vector_cosines
    from tvlens.errors import ConfigError
    from tvlens.tasks._composed import parts as parts_of

    toy = model_name == "toy"
    layer = model.cfg.n_layers // 2 if layer is None else layer
    composed = composed or (TOY_COMPOSED if toy else REAL_COMPOSED)
    pa = None
    if composed != "none":  # checked before any training
        composed_task = tv.tasks.resolve(composed, model_name=model_name, template=template)
        composed = composed_task.name
        pa = parts or parts_of(composed_task.base_name)
        if pa is None:
            raise ConfigError(f"--composed {composed!r} is not a registered composed task; name its two tasks with --parts A B")
        pa = [tv.tasks.resolve(p, model_name=model_name, template=template).name for p in pa]
    if vectors is None:
        tasks = [tv.tasks.resolve(t, model_name=model_name, template=template).name for t in tasks or (TOY_TASKS if toy else REAL_TASKS)]
        vectors = train_vectors(model, tasks, seeds=seeds, layer=layer, config=tv.LTVConfig(), split_seed=seed,
                                vary_splits=vary_splits)
    comp = None
    if pa is not None:
        pick = []
        for p in pa:  # the first vector of that task, else a fresh seed-0 LTV at the same sites
            have = [v for v in vectors if v.task == p]
            pick.append(have[0] if have else train_vectors(model, [p], seeds=seeds[:1], layer=vectors[0].layers[0], split_seed=seed)[0])
        comp = composition(model, pick[0], pick[1], composed, scales=scales, seed=seed)
    return {"vectors": vectors, "cosines": vector_cosines(vectors), "transfer": transfer_matrix(model, vectors, seed=seed),
            "composition": comp, "layer": vectors[0].layers[0]}


def payload_of(res: dict) -> dict:
    cm, tr, comp = res["cosines"], res["transfer"], res["composition"]
    out = {
        "layer": res["layer"],
        "cosine": {"labels": list(cm.labels), "tasks": list(cm.tasks), "matrix": cm.cos.tolist(), "within_mean": cm.within_mean,
                   "across_mean": cm.across_mean, "across_abs_mean": cm.across_abs_mean,
                   "per_task": cm.summary().to_dict(orient="records")},
        "transfer": {"vectors": list(tr.labels), "vector_tasks": list(tr.vector_tasks), "tasks": list(tr.tasks),
                     "accuracy": tr.accuracy.tolist(), "zero_shot": tr.zero_shot.tolist(), "n": tr.n.tolist(),
                     "own_mean": tr.own_mean, "off_mean": tr.off_mean, "off_gain_mean": tr.off_gain_mean},
        "composition": None,
    }
    if comp is not None:
        out["composition"] = {"task": comp.task, "a": comp.task_a, "b": comp.task_b, "n": comp.n, "cos_ab": comp.cos_ab,
                              "conditions": comp.to_frame().to_dict(orient="records"), "best_sum": comp.best_sum,
                              "sum_beats_each": comp.sum_beats_each}
    return out


def text_of(res: dict) -> str:
    cm, tr, comp = res["cosines"], res["transfer"], res["composition"]
    lines = [f"layer {res['layer']}: {len(cm.labels)} vectors, {len(set(cm.tasks))} tasks",
             f"cosine within-task {cm.within_mean:.3f}, across-task {cm.across_mean:.3f} (|.| {cm.across_abs_mean:.3f})",
             cm.summary().to_string(index=False, float_format=lambda x: f"{x:.3f}"), "",
             f"transfer: own task {tr.own_mean:.3f}, other tasks {tr.off_mean:.3f} (gain over zero-shot {tr.off_gain_mean:+.3f})",
             tr.to_frame().groupby(["vector_task", "task"], sort=False).accuracy.mean().unstack().to_string(float_format=lambda x: f"{x:.2f}")]
    if comp is not None:
        lines += ["", f"composition on {comp.task} (a = {comp.task_a}, b = {comp.task_b}, cos {comp.cos_ab:.3f}, n {comp.n}):",
                  comp.to_frame().to_string(index=False, float_format=lambda x: f"{x:.3f}")]
    return "\n".join(lines)


def cmd_geometry(args: argparse.Namespace) -> tuple[dict, str]:
    import tvlens as tv
    from tvlens.cli._main import check_output

    if args.html:
        check_output(args.html, True, "--html")
    t0 = time.perf_counter()
    model = tv.load_model(args.model)
    vectors = [tv.TaskVector.load(p) for p in args.vectors] if args.vectors else None
    res = run_geometry(model, args.model, template=args.template, tasks=args.tasks, seeds=tuple(args.seeds), layer=args.layer, vectors=vectors,
                       composed=args.composed, parts=args.parts, scales=tuple(args.scales), seed=args.seed, vary_splits=args.vary_splits)
    payload = {"model": args.model, "fingerprint": tv.fingerprint(model), **payload_of(res)}
    text = text_of(res)
    if args.save_vectors and not args.vectors:
        from pathlib import Path

        from tvlens.analysis.geometry import _labels

        out = Path(args.save_vectors)
        out.mkdir(parents=True, exist_ok=True)
        saved = []
        for label, v in zip(_labels(res["vectors"]), res["vectors"]):
            task, _, seed = label.partition("#")
            saved.append(str(v.save(out / f"{task.replace('/', '_')}_s{seed}_L{res['layer']}.safetensors")))
        payload["saved_vectors"] = saved
        text += f"\nsaved {len(saved)} vectors in {out}"
    if args.html:
        from tvlens.cli._html import write_page

        sections = [("Cosine between task vectors", res["cosines"].plot(), res["cosines"].summary()),
                    ("Transfer: each vector on each task", res["transfer"].plot(), None)]
        if res["composition"] is not None:
            sections.append(("Composition", res["composition"].plot(), res["composition"].to_frame()))
        path = write_page(args.html, f"tvlens analyze geometry on {args.model}", sections)
        payload["html"] = str(path)
        text += f"\nwrote {path}"
    payload["seconds"] = round(time.perf_counter() - t0, 2)
    return payload, text
