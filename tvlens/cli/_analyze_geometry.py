"""``tvlens analyze geometry``: cosine matrix, transfer matrix and composition of LTVs (:func:`tvlens.analysis.geometry.geometry_suite`)."""

from __future__ import annotations

import argparse
import time

from tvlens.analysis.geometry import REAL_COMPOSED, REAL_TASKS, TOY_COMPOSED, TOY_TASKS
from tvlens.cli._common import add_template_option


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


def cmd_geometry(args: argparse.Namespace) -> tuple[dict, str]:
    import tvlens as tv
    from tvlens.analysis.geometry import geometry_suite, vector_labels
    from tvlens.cli._common import start

    t0, model, _ = start(args, task=False)
    vectors = [tv.TaskVector.load(p) for p in args.vectors] if args.vectors else None
    res = geometry_suite(model, args.model, template=args.template, tasks=args.tasks, seeds=tuple(args.seeds), layer=args.layer,
                         vectors=vectors, composed=args.composed, parts=args.parts, scales=tuple(args.scales), seed=args.seed,
                         vary_splits=args.vary_splits)
    payload = {"model": args.model, "fingerprint": tv.fingerprint(model), **res.payload()}
    text = res.text()
    if args.save_vectors and not args.vectors:
        from pathlib import Path

        out = Path(args.save_vectors)
        out.mkdir(parents=True, exist_ok=True)
        saved = []
        for label, v in zip(vector_labels(res.vectors), res.vectors):
            task, _, seed = label.partition("#")
            saved.append(str(v.save(out / f"{task.replace('/', '_')}_s{seed}_L{res.layer}.safetensors")))
        payload["saved_vectors"] = saved
        text += f"\nsaved {len(saved)} vectors in {out}"
    if args.html:
        from tvlens.cli._html import write_page

        sections = [("Cosine between task vectors", res.cosines.plot(), res.cosines.per_task()),
                    ("Transfer: each vector on each task", res.transfer.plot(), None)]
        if res.composition is not None:
            sections.append(("Composition", res.composition.plot(), res.composition.to_frame()))
        path = write_page(args.html, f"tvlens analyze geometry on {args.model}", sections)
        payload["html"] = str(path)
        text += f"\nwrote {path}"
    payload["seconds"] = round(time.perf_counter() - t0, 2)
    return payload, text
