"""The ``tvlens`` subcommands: each returns (JSON payload, human-readable text)."""

from __future__ import annotations

import argparse
import time


def _ci(ci: tuple[float, float]) -> str:
    return f"[{ci[0]:.2f}-{ci[1]:.2f}]"


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
        icl_res = {str(k): tv.evaluate(model, tv.make_prompts(splits, "test", k=k, seed=seed)) for k in shots}
        row = {"task": name, "kind": task.kind, "template": task.template_record(), "n_test": zs.n, "zero_shot": zs.accuracy, "zero_shot_ci95": list(zs.ci95),
               "icl": {k: r.accuracy for k, r in icl_res.items()}, "icl_ci95": {k: list(r.ci95) for k, r in icl_res.items()},
               "zero_shot_label_acc": zs.label_accuracy}
        if name.startswith("toy/"):  # reported apart: the instruction pathway, never used elsewhere
            ins = tv.evaluate(model, tv.make_prompts(tv.tasks.with_instruction(splits), "test", k=0, seed=seed))
            row["instruction"], row["instruction_ci95"] = ins.accuracy, list(ins.ci95)
        rows.append(row)
    return rows


def _table(rows: list[dict], shots: list[int]) -> str:
    ltv = all("ltv" in r for r in rows)
    base = [k for k in ("vanilla_tv", "fv") if all(k in r for r in rows)]
    cell = lambda v: f" {v:>7.3f}" if v is not None else f" {'-':>7}"  # noqa: E731
    layer = ltv and any(len(r.get("ltv_layers", ())) > 1 for r in rows)
    head = (f"{'task':<20} {'kind':<15} {'0-shot':>7}" + "".join(f" {str(k) + '-shot':>7}" for k in shots)
            + (f" {'LTV':>7}" if ltv else "") + "".join(f" {n:>7}" for n in (["VanTV", "FV"][("vanilla_tv", "fv").index(k)] for k in base))
            + (f" {'layer':>5}" if layer else ""))
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['task']:<20} {r['kind']:<15} {r['zero_shot']:>7.3f}" + "".join(f" {r['icl'][str(k)]:>7.3f}" for k in shots)
                     + (f" {r['ltv']:>7.3f}" if ltv else "") + "".join(cell(r[k]) for k in base)
                     + (f" {r['ltv_layer']:>5}" if layer else ""))
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    lines.append("-" * len(head))
    lines.append(f"{'mean':<20} {'':<15} {mean([r['zero_shot'] for r in rows]):>7.3f}"
                 + "".join(f" {mean([r['icl'][str(k)] for r in rows]):>7.3f}" for k in shots)
                 + (f" {mean([r['ltv'] for r in rows]):>7.3f}" if ltv else "")
                 + "".join(cell(mean([r[k] for r in rows]) if all(r[k] is not None for r in rows) else None) for k in base))
    return "\n".join(lines)


REAL_MODEL_DEMO_TASKS = ("capitalize", "antonym", "capital")


def cmd_demo(args: argparse.Namespace) -> tuple[dict, str]:
    import tvlens as tv

    t0 = time.perf_counter()
    model = tv.load_model(args.model)
    toy = args.model == "toy"
    shots = args.shots or ([1, 2, 4, 8] if toy else [5])
    names = args.tasks or (tv.tasks.toy_task_names() if toy else list(REAL_MODEL_DEMO_TASKS))
    names = [tv.tasks.resolve(n, model_name=args.model, template=args.template).name for n in names]
    rows = _icl_rows(model, names, shots, args.seed)
    layers = args.layer or [model.cfg.n_layers // 2]
    config = tv.LTVConfig(seed=args.seed)
    baselines = toy if args.baselines is None else args.baselines
    fv_shots = 8 if toy else 10
    for row in rows:
        splits = tv.make_splits(tv.tasks.get(row["task"]), seed=args.seed)
        test_prompts = tv.make_prompts(splits, "test", k=0, seed=args.seed)
        if not args.no_ltv:
            per_layer = []
            for layer in layers:
                res = tv.train_ltv(model, splits.task, layers=[layer], positions=[-1], config=config, splits=splits, progress=False)
                test = tv.evaluate(model, test_prompts, intervention=tv.steering(model, res.vector))
                per_layer.append({"layer": layer, "val": res.val_accuracy, "val_ci95": list(res.val_ci95),
                                  "test": test.accuracy, "test_ci95": list(test.ci95), "seconds": round(res.seconds, 1)})
            best = max(per_layer, key=lambda r: r["val"])  # chosen on validation, reported on test
            row.update(ltv=best["test"], ltv_ci95=best["test_ci95"], ltv_val=best["val"], ltv_val_ci95=best["val_ci95"],
                       ltv_layer=best["layer"])
            if len(layers) > 1:
                row["ltv_layers"] = per_layer
        if baselines:  # cheaply: one layer (the LTV's, else the first --layer), last token
            layer = row.get("ltv_layer", layers[0])
            vectors = {"vanilla_tv": lambda: tv.vanilla_tv(model, splits.task, layer=layer, splits=splits, seed=args.seed),
                       "fv": lambda: tv.function_vector(model, splits.task, layer=layer, shots=fv_shots, splits=splits, seed=args.seed)}
            for key, make in vectors.items():
                try:
                    res = tv.evaluate(model, test_prompts, intervention=tv.steering(model, make()))
                except tv.errors.PromptError as e:  # e.g. no clean prompt answered correctly: no FV for this task
                    row[key], row[f"{key}_ci95"], row[f"{key}_error"] = None, None, str(e)
                    continue
                row[key], row[f"{key}_ci95"], row[f"{key}_layer"] = res.accuracy, list(res.ci95), layer
    payload = {
        "model": args.model,
        "fingerprint": tv.fingerprint(model),
        "metric": "full-vocabulary argmax accuracy on held-out test queries",
        "ltv_site": None if args.no_ltv else (f"L{layers[0]}@-1" if len(layers) == 1 else f"best of L{layers}@-1 by validation"),
        "baselines": None if not baselines else {
            "site": "the LTV's layer (else the first --layer), last token", "vanilla_tv": "add, 5-shot ICL prompts",
            "fv": f"top-10 heads by AIE, {8 if toy else 10}-shot clean prompts"},
        "seed": args.seed,
        "shots": shots,
        "tasks": rows,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    text = f"model: {args.model} ({payload['fingerprint']})\n" + _table(rows, shots)
    return payload, text


def cmd_toy_train(args: argparse.Namespace) -> tuple[dict, str]:
    import dataclasses

    import tvlens as tv
    from tvlens.toy import ToyTrainConfig, save_toy_checkpoint, train_toy_model

    from tvlens.cli._common import check_output

    check_output(args.out, args.overwrite, folder=True)
    cfg = ToyTrainConfig(seed=args.seed, threads=args.threads)
    if args.steps is not None:
        cfg = dataclasses.replace(cfg, steps=args.steps)
    result = train_toy_model(cfg)
    out = save_toy_checkpoint(result, args.out)  # save first: a failing evaluation loses nothing
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


def _ltv_config(args: argparse.Namespace):
    import tvlens as tv

    cfg = tv.LTVConfig.paper() if args.preset == "paper" else tv.LTVConfig()
    import dataclasses

    return dataclasses.replace(cfg, seed=args.seed)


def cmd_train(args: argparse.Namespace) -> tuple[dict, str]:
    import tvlens as tv

    from tvlens.cli._common import check_distinct, check_output

    check_distinct(args.checkpoint, args.out, "--checkpoint and --out")
    check_output(args.out, args.overwrite)
    config = _ltv_config(args)
    model = tv.load_model(args.model)
    task = tv.tasks.resolve(args.task, model_name=args.model, template=args.template)
    layers = args.layer if args.layer is not None else [model.cfg.n_layers // 2]
    res = tv.train_ltv(model, task, layers=layers, positions=args.position, shots=args.shots,
                       config=config, splits=tv.make_splits(task, seed=args.seed),
                       checkpoint=args.checkpoint, progress=not args.json)
    path = res.vector.save(args.out, overwrite=args.overwrite)
    splits = res.splits
    test = tv.evaluate(model, tv.make_prompts(splits, "test", k=args.shots, seed=args.seed),
                       intervention=tv.steering(model, res.vector))
    payload = {"task": task.name, "out": str(path), "sites": [str(s) for s in res.vector.sites], "shots": args.shots,
               "val_accuracy": res.val_accuracy, "val_ci95": list(res.val_ci95), "n_val": res.n_val,
               "test_accuracy": test.accuracy, "test_ci95": list(test.ci95), "n_test": test.n, "epochs": len(res.history),
               "steps": res.steps, "seconds": round(res.seconds, 2), "history": list(res.history)}
    text = (f"trained LTV for {task.name} at {payload['sites']} ({res.steps} steps, {res.seconds:.1f} s): "
            f"val {res.val_accuracy:.3f} {_ci(res.val_ci95)}, test {test.accuracy:.3f} {_ci(test.ci95)} (n={test.n}); saved to {path}")
    return payload, text


def cmd_eval(args: argparse.Namespace) -> tuple[dict, str]:
    import tvlens as tv

    model = tv.load_model(args.model)
    task = tv.tasks.resolve(args.task, model_name=args.model, template=args.template)
    v = tv.TaskVector.load(args.vector) if args.vector else None
    # a vector is evaluated on the test queries of the splits it was trained with
    seed = int(v.meta.get("split_seed", args.seed)) if v is not None else args.seed
    splits = tv.make_splits(task, seed=seed)
    out: dict = {"task": task.name, "model": args.model, "split_seed": seed}
    zs = tv.evaluate(model, tv.make_prompts(splits, "test", k=0, seed=args.seed))
    icl = {str(k): tv.evaluate(model, tv.make_prompts(splits, "test", k=k, seed=args.seed)) for k in args.icl_shots}
    out.update({"n_test": zs.n, "zero_shot": zs.accuracy, "zero_shot_ci95": list(zs.ci95),
                "icl": {k: r.accuracy for k, r in icl.items()}, "icl_ci95": {k: list(r.ci95) for k, r in icl.items()}})
    if v is not None:
        shots = int(v.meta.get("shots", 0))
        res = tv.evaluate(model, tv.make_prompts(splits, "test", k=shots, seed=args.seed),
                          intervention=tv.steering(model, v, args.scale, allow_other_fingerprint=args.allow_other_model))
        out["vector"] = {"path": args.vector, "task": v.task, "sites": [str(s) for s in v.sites], "shots": shots,
                         "accuracy": res.accuracy, "ci95": list(res.ci95), "label_accuracy": res.label_accuracy}
    lines = [f"{task.name} (n={zs.n} test queries, 95% CI in brackets): zero-shot {zs.accuracy:.3f} {_ci(zs.ci95)}"]
    lines += [f"  {k}-shot ICL {r.accuracy:.3f} {_ci(r.ci95)}" for k, r in icl.items()]
    if "vector" in out:
        lines.append(f"  with vector ({', '.join(out['vector']['sites'])}, {out['vector']['shots']}-shot prompts) "
                     f"{res.accuracy:.3f} {_ci(res.ci95)}")
    return out, "\n".join(lines)


def cmd_bench(args: argparse.Namespace) -> tuple[dict, str]:
    from tvlens.bench import process_peak_rss_mb, run_benchmarks, smollm2_benchmarks
    from tvlens.errors import ConfigError

    if getattr(args, "peers", False):
        return _bench_peers(args)
    only = getattr(args, "only", None)
    if only and getattr(args, "model", None) is None:
        raise ConfigError("bench --only picks among the engine entries of a real model: add --model smollm2")
    if getattr(args, "model", None) == "smollm2":
        results = smollm2_benchmarks(quick=args.quick, **({"only": tuple(only)} if only else {}))
    else:
        results = run_benchmarks(quick=args.quick)
    rows = [r.as_dict() for r in results]
    peak = process_peak_rss_mb()
    text = "\n".join(f"{r['name']:<28} baseline {r['baseline_s'] * 1e3:9.2f} ms  fast {r['fast_s'] * 1e3:8.2f} ms  ratio {r['ratio']:7.1f}x"
                     + (f"  peak {r['peak_memory_mb']:7.0f} MB" if "peak_memory_mb" in r else "") for r in rows)
    return {"benchmarks": rows, "peak_rss_mb": peak}, f"{text}\npeak resident memory of the run: {peak:.0f} MB"


def _bench_peers(args: argparse.Namespace) -> tuple[dict, str]:
    from tvlens.bench_peers import run_peer_benchmarks

    rows = [r.as_dict() for r in run_peer_benchmarks(quick=args.quick)]

    def fmt(x, spec: str) -> str:
        return "-" if x is None else format(x, spec)

    lines = [f"{'entry':<24} {'peer':<30} {'tvlens s':>9} {'peer s':>9} {'ratio':>7} {'tvlens value':>13} {'peer value':>13}  status"]
    for r in rows:
        lines.append(f"{r['name']:<24} {r['peer']:<30} {fmt(r['tvlens_s'], '9.3f')} {fmt(r['peer_s'], '9.3f')} "
                     f"{fmt(r['ratio'], '6.1f')}x {fmt(r['tvlens_value'], '13.6f')} {fmt(r['peer_value'], '13.6f')}  diff {fmt(r['max_abs_diff'], '.1e')}  {r['status']}"
                     + (f" ({r['note']})" if r["note"] else ""))
    return {"peers": rows}, "\n".join(lines)


def _fv_shots(args: argparse.Namespace) -> int:
    # the embedded model was trained on prompts of at most 8 demonstrations (10-shot prompts are out of
    # its distribution); Todd et al.'s 10 elsewhere
    return args.fv_shots or (8 if args.model == "toy" else 10)


def _sweep_text(res, payload: dict) -> str:
    from tvlens.baselines.sweep import LABELS

    head = f"{'layer':>5}" + "".join(f" {LABELS[m]:>18}" for m in res.methods)
    lines = [f"{res.task}: accuracy of a single-site vector (last token) on {res.n_test} zero-shot test queries, 95% CI in brackets",
             head, "-" * len(head)]
    for j, layer in enumerate(res.layers):
        lines.append(f"{layer:>5}" + "".join(
            f" {payload['methods'][m][j]:.2f} {_ci(tuple(payload['methods_ci95'][m][j]))}".rjust(19) for m in res.methods))
    lines.append(f"zero-shot {res.zero_shot:.3f} {_ci(tuple(payload['zero_shot_ci95']))}   "
                 f"{res.icl_shots}-shot ICL {res.icl:.3f} {_ci(tuple(payload['icl_ci95']))}")
    return "\n".join(lines)


def cmd_sweep(args: argparse.Namespace) -> tuple[dict, str]:
    import tvlens as tv

    from tvlens.cli._common import executor_from_args, start

    t0, model, task = start(args)
    res = tv.sweep(model, task, methods=args.methods, layers=args.layers, fv_shots=_fv_shots(args),
                   vanilla_shots=args.vanilla_shots, top_k=args.top_k, seed=args.seed,
                   ltv_config=tv.LTVConfig(seed=args.seed), executor=executor_from_args(args), spec=args.model)
    payload = {"model": args.model, "fingerprint": tv.fingerprint(model), **res.payload(),
               "seconds": round(time.perf_counter() - t0, 2)}
    text = _sweep_text(res, payload)
    if args.html:
        from tvlens.cli._html import write_page

        frame = res.to_frame()
        path = write_page(args.html, f"tvlens sweep: {res.task} on {args.model}", [("Accuracy per layer", res.plot(), frame)])
        payload["html"] = str(path)
        text += f"\nwrote {path}"
    return payload, text


def cmd_compare(args: argparse.Namespace) -> tuple[dict, str]:
    import tvlens as tv

    from tvlens.cli._common import executor_from_args, start

    t0, model, _ = start(args, task=False)
    toy = args.model == "toy"
    names = args.tasks or (tv.tasks.toy_task_names() if toy else list(REAL_MODEL_DEMO_TASKS))
    tasks = [tv.tasks.resolve(n, model_name=args.model, template=args.template) for n in names]
    res = tv.compare(model, tasks, fv_shots=_fv_shots(args), vanilla_shots=args.vanilla_shots, top_k=args.top_k,
                     seed=args.seed, ltv_config=tv.LTVConfig(seed=args.seed), executor=executor_from_args(args),
                     spec=args.model)
    payload = {"model": args.model, "fingerprint": tv.fingerprint(model), **res.payload(),
               "seconds": round(time.perf_counter() - t0, 2)}
    table = res.table()
    from tvlens.baselines.sweep import LABELS

    head = f"{'':<11}" + "".join(f" {s:>18}" for s in res.scenarios)
    rows = [f"{LABELS[m]:<11}" + "".join(f" {res.accuracy(m, s):.3f} {_ci(res.ci95(m, s))}".rjust(19) for s in res.scenarios)
            for m in res.methods]
    text = (f"model: {args.model}; dataset-average accuracy over {len(res.tasks)} tasks "
            "(test queries; 95% interval: mean of per-task Wilson bounds)\n" + "\n".join([head, "-" * len(head), *rows]))
    if args.html:
        from tvlens.cli._html import write_page

        sections = [("Dataset average (paper's Table 1 layout)", res.plot(), table)]
        sections += [(f"Task {t}", None, res.table(t)) for t in res.tasks]
        path = write_page(args.html, f"tvlens compare on {args.model}", sections)
        payload["html"] = str(path)
        text += f"\nwrote {path}"
    return payload, text
