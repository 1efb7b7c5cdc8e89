"""The ``tvlens`` subcommands: each returns (JSON payload, human-readable text)."""

from __future__ import annotations

import argparse
import time


def cmd_tasks(args: argparse.Namespace) -> tuple[dict, str]:
    import tvlens as tv

    rows = [{"task": n, "description": tv.tasks.describe(n)} for n in tv.tasks.names(args.prefix)]
    text = "\n".join(f"{r['task']:<22} {r['description']}" for r in rows)
    return {"tasks": rows}, text


def _icl_rows(model, task_names: list[str], shots: list[int], seed: int) -> list[dict]:
    import tvlens as tv

    rows = []
    for name in task_names:
        task = tv.tasks.get(name)
        splits = tv.make_splits(task, seed=seed)
        zs = tv.evaluate(model, tv.make_prompts(splits, "test", k=0, seed=seed))
        icl = {str(k): tv.evaluate(model, tv.make_prompts(splits, "test", k=k, seed=seed)).accuracy for k in shots}
        rows.append({"task": name, "kind": task.kind, "n_test": zs.n, "zero_shot": zs.accuracy, "icl": icl,
                     "zero_shot_label_acc": zs.label_accuracy})
    return rows


def _table(rows: list[dict], shots: list[int]) -> str:
    head = f"{'task':<20} {'kind':<15} {'0-shot':>7}" + "".join(f" {str(k) + '-shot':>7}" for k in shots)
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['task']:<20} {r['kind']:<15} {r['zero_shot']:>7.3f}" + "".join(f" {r['icl'][str(k)]:>7.3f}" for k in shots))
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    lines.append("-" * len(head))
    lines.append(f"{'mean':<20} {'':<15} {mean([r['zero_shot'] for r in rows]):>7.3f}"
                 + "".join(f" {mean([r['icl'][str(k)] for r in rows]):>7.3f}" for k in shots))
    return "\n".join(lines)


def cmd_demo(args: argparse.Namespace) -> tuple[dict, str]:
    import tvlens as tv

    t0 = time.perf_counter()
    model = tv.load_model(args.model)
    names = args.tasks or tv.tasks.toy_task_names()
    names = [tv.tasks.resolve(n, model_name=args.model).name for n in names]
    rows = _icl_rows(model, names, args.shots, args.seed)
    payload = {
        "model": args.model,
        "fingerprint": tv.fingerprint(model),
        "metric": "full-vocabulary argmax accuracy on held-out test queries",
        "seed": args.seed,
        "tasks": rows,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    text = f"model: {args.model} ({payload['fingerprint']})\n" + _table(rows, args.shots)
    return payload, text


def cmd_toy_train(args: argparse.Namespace) -> tuple[dict, str]:
    import dataclasses

    import tvlens as tv
    from tvlens.toy import ToyTrainConfig, save_toy_checkpoint, train_toy_model

    cfg = ToyTrainConfig(seed=args.seed, threads=args.threads)
    if args.steps is not None:
        cfg = dataclasses.replace(cfg, steps=args.steps)
    result = train_toy_model(cfg)
    rows, metrics = [], {}
    if not args.no_eval:
        rows = _icl_rows(result.model, tv.tasks.toy_task_names(), [1, 8], seed=0)
        metrics = {
            "mean_zero_shot": sum(r["zero_shot"] for r in rows) / len(rows),
            "mean_icl_8": sum(r["icl"]["8"] for r in rows) / len(rows),
            "mean_icl_1": sum(r["icl"]["1"] for r in rows) / len(rows),
        }
    out = save_toy_checkpoint(result, args.out, metrics=metrics)
    payload = {"out": str(out), "steps": cfg.steps, "train_seconds": round(result.seconds, 1),
               "final_loss": result.losses[-1], "metrics": metrics, "tasks": rows}
    text = f"trained {cfg.steps} steps in {result.seconds:.0f} s, final loss {result.losses[-1]:.4f}; saved to {out}"
    if rows:
        text += "\n" + _table(rows, [1, 8])
    return payload, text
