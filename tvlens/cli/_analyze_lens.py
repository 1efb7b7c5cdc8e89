"""``tvlens analyze lens`` and ``tvlens analyze linear``: how a task vector becomes an answer.

Without ``--vector`` both train the LTVs they need with the default ``tv.LTVConfig(seed=--seed)``:
``lens`` one at L/4 and one at 3L/4, ``linear`` one per layer of ``--layers`` (default: every
layer on the embedded model, every third layer on others).
"""

from __future__ import annotations

import argparse
import time

from tvlens.cli._common import add_template_option
from pathlib import Path


def add_parser(add) -> None:
    sp = add("lens", cmd_lens, "logit lens and task alignment per layer (zero-shot, ICL, early and late task vectors); decoded tokens")
    _common(sp)
    sp.add_argument("--layers", type=int, nargs="+", default=None,
                    help="layers of the LTVs to train when no --vector is given (default: L/4 and 3L/4)")
    sp.add_argument("--top-k", type=int, default=10, help="decoded tokens per vector (default 10)")
    sp = add("linear", cmd_linear, "linear propagation W_TV(l) per layer, its accuracy vs injection, rotation vs stretch")
    _common(sp)
    sp.add_argument("--layers", type=int, nargs="+", default=None,
                    help="injection layers (default: every layer on toy, every third on other models)")
    sp.add_argument("--n-copies", type=int, default=None, help="noisy copies fitting each W (default ceil(1.1 d_model))")
    sp.add_argument("--noise", type=float, default=1.0, help="copy noise, as a fraction of ||theta|| (default 1.0)")
    sp.add_argument("--ridge", type=float, default=1e-3, help="ridge, relative to the copies' mean squared norm (default 1e-3)")
    sp.add_argument("--n-queries", type=int, default=16, help="train queries each shift is averaged over (default 16)")
    sp.add_argument("--threshold", type=float, default=0.5, help="cos(theta, Q theta) from which a layer counts as stretch (default 0.5)")
    sp.add_argument("--no-lens", action="store_true", help="skip the logit lens (no ICL-beats-zero-shot layer)")


def _common(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--model", default="toy", help="model spec: toy (default), smollm2, a .gguf file, an HF folder, a TL name")
    sp.add_argument("--task", required=True, help="task name (see `tvlens tasks`)")
    add_template_option(sp)
    sp.add_argument("--vector", nargs="+", default=None, help="task-vector files (one site each) instead of training LTVs")
    sp.add_argument("--shots", type=int, default=8, help="demonstrations of the ICL condition of the logit lens (default 8)")
    sp.add_argument("--n-test", type=int, default=200, help="test queries (default 200, at most the split)")
    sp.add_argument("--definition", choices=("span", "raw_span", "max_cos"), default="span",
                    help="task-alignment definition (default span: ||P_Y h|| / ||h||, docs/analysis-lens.md)")
    sp.add_argument("--seed", type=int, default=0, help="seed of the splits, prompts and LTV training (default 0)")
    sp.add_argument("--html", default=None, help="also write a self-contained offline HTML page (plots and tables)")
    sp.add_argument("--workers", type=int, default=None, metavar="N",
                    help="processes training the per-layer LTVs, one torch thread each (default: min(cpus, layers) "
                         "when several layers are trained; 1 = in this process); vectors are identical either way")
    sp.add_argument("--save-vectors", default=None, metavar="DIR",
                    help="save the LTVs trained here as DIR/ltv_L<layer>.safetensors (reuse them with --vector)")


def _vectors(args, model, task, layers: list[int]) -> tuple[dict, dict]:
    """``{layer: TaskVector}`` loaded from --vector or trained, and training seconds per layer."""
    import tvlens as tv
    from tvlens.errors import ConfigError

    if args.vector:
        out = {}
        for path in args.vector:
            v = tv.TaskVector.load(path)
            v.check_compatible(model)
            if len(v.sites) != 1:
                raise ConfigError(f"{path}: a vector with {len(v.sites)} sites; give one-site vectors (tvlens train --layer L)")
            if v.sites[0].layer in out:
                raise ConfigError(f"two --vector files at layer {v.sites[0].layer}; give one per layer")
            out[v.sites[0].layer] = v
        return out, {}
    bad = [layer for layer in layers if not 0 <= layer < model.cfg.n_layers]
    if bad:
        raise ConfigError(f"--layers {bad} outside this model's layers 0..{model.cfg.n_layers - 1}")
    import torch

    from tvlens.ltv._parallel import default_workers

    workers = getattr(args, "workers", None)
    if workers is None:
        workers = default_workers(len(layers)) if len(layers) > 1 else 1
    if workers < 1:
        raise ConfigError(f"--workers {workers}; give an integer >= 1 (1 = train in this process)")
    threads = torch.get_num_threads()
    try:
        out, secs = tv.train_ltv_layers(model, task, layers, seed=args.seed, workers=workers, spec=args.model,
                                        progress=not args.json)
    finally:
        torch.set_num_threads(threads)
    if args.save_vectors:
        Path(args.save_vectors).mkdir(parents=True, exist_ok=True)
        for layer, v in out.items():
            v.save(Path(args.save_vectors) / f"ltv_L{layer}.safetensors", overwrite=True)
    return out, secs


def _setup(args):
    import torch

    import tvlens as tv
    from tvlens.cli._common import check_output

    if args.html:
        check_output(args.html, True, "--html")
    model = tv.load_model(args.model)
    return model, tv.tasks.resolve(args.task, model_name=args.model, template=args.template)


def _lens(model, task, vectors: dict, args):
    from tvlens.analysis import logit_lens

    shots = (0, args.shots) if args.shots > 0 else (0,)
    return logit_lens(model, task, vectors={f"θ@L{layer}": v for layer, v in sorted(vectors.items())}, shots=shots,
                      n=args.n_test, seed=args.seed, definition=args.definition)


def cmd_lens(args: argparse.Namespace) -> tuple[dict, str]:
    from tvlens.analysis import decoded_tokens

    t0 = time.perf_counter()
    model, task = _setup(args)
    L = model.cfg.n_layers
    layers = args.layers if args.layers is not None else sorted({L // 4, (3 * L) // 4})
    vectors, train_s = _vectors(args, model, task, layers)
    lens = _lens(model, task, vectors, args)
    named = {f"θ@L{layer}": v for layer, v in sorted(vectors.items())}
    dec = decoded_tokens(model, named, args.top_k)
    raw = decoded_tokens(model, named, args.top_k, through_ln=False)
    payload = {
        "model": args.model, "task": lens.task, "n": lens.n, "layers": list(lens.layers), "conditions": list(lens.conditions),
        "alignment_definition": lens.definition, "chance_alignment": lens.chance_alignment,
        "accuracy": {c: lens.accuracy[i].tolist() for i, c in enumerate(lens.conditions)},
        "label_accuracy": {c: lens.label_accuracy[i].tolist() for i, c in enumerate(lens.conditions)},
        "alignment": {c: lens.alignment[i].tolist() for i, c in enumerate(lens.conditions)},
        "icl_beats_zero_shot_layer": lens.icl_beats_zero_shot_layer,
        "decoded": [{"vector": lab, "through_ln": list(dec.tokens[i]), "raw": list(raw.tokens[i])} for i, lab in enumerate(dec.labels)],
        "train_seconds": train_s, "seconds": round(time.perf_counter() - t0, 2),
    }
    frame = lens.to_frame()
    wide = frame.pivot(index="layer", columns="condition", values="accuracy")[list(lens.conditions)]
    text = [f"logit lens on {lens.task} ({args.model}, n={lens.n} test queries): accuracy per layer "
            f"(layer k = input of block k; {L} = final state)", wide.to_string(float_format=lambda x: f"{x:.2f}"),
            "task alignment per layer:",
            frame.pivot(index="layer", columns="condition", values="alignment")[list(lens.conditions)].to_string(float_format=lambda x: f"{x:.2f}"),
            f"ICL first beats zero-shot at layer {lens.icl_beats_zero_shot_layer}", "decoded tokens (through ln_final):"]
    text += [f"  {lab}: {' '.join(map(repr, dec.tokens[i]))}" for i, lab in enumerate(dec.labels)]
    if args.html:
        from tvlens.cli._html import write_page

        path = write_page(args.html, f"tvlens logit lens: {lens.task} on {args.model}",
                          [("Logit-lens accuracy and task alignment per layer", lens.plot(), wide),
                           ("Decoded tokens through ln_final and W_U", None, dec.to_frame().set_index("vector")),
                           ("Decoded tokens through W_U only", None, raw.to_frame().set_index("vector"))])
        payload["html"] = str(path)
        text.append(f"wrote {path}")
    return payload, "\n".join(text)


def cmd_linear(args: argparse.Namespace) -> tuple[dict, str]:
    from tvlens.analysis import rotation_vs_stretch

    t0 = time.perf_counter()
    model, task = _setup(args)
    L = model.cfg.n_layers
    step = 1 if args.model == "toy" else 3
    layers = args.layers if args.layers is not None else list(range(0, L, step))
    vectors, train_s = _vectors(args, model, task, layers)
    lens = None if args.no_lens else _lens(model, task, {}, args)
    res = rotation_vs_stretch(model, vectors, task, lens=lens, threshold=args.threshold, definition=args.definition,
                              n_copies=args.n_copies, noise=args.noise, ridge=args.ridge, n_queries=args.n_queries,
                              n_test=args.n_test, seed=args.seed)
    payload = {"model": args.model, **res.payload(), "train_seconds": train_s,
               "seconds": round(time.perf_counter() - t0, 2)}
    if lens is not None:
        payload["lens_accuracy"] = {c: lens.accuracy[i].tolist() for i, c in enumerate(lens.conditions)}
    frame = res.to_frame()
    cols = ["layer", "injected_acc", "reconstructed_acc", "zero_shot_acc", "fit_r2", "cos_theta_Qtheta",
            "alignment_theta", "alignment_Qtheta", "q_minus_i_rel"]
    text = [f"linear propagation on {res.task} ({args.model}):", frame[cols].to_string(index=False, float_format=lambda x: f"{x:.3f}"),
            f"transition layer (cos(θ, Qθ) >= {args.threshold} from there on): {res.transition_layer}; "
            f"ICL first beats zero-shot in logit-lens accuracy at layer {res.icl_layer}",
            "decoded tokens of Qθ:"] + [f"  L{r['layer']}: {r['decoded_Qtheta']}" for r in res.rows]
    text.append(f"{payload['seconds']:.1f} s")
    if args.html:
        from tvlens.cli._html import write_page

        sections = [("Linear propagation, rotation vs stretch", res.plot(), frame.set_index("layer"))]
        if lens is not None:
            sections.append(("Logit lens: zero-shot vs ICL", lens.plot(), None))
        path = write_page(args.html, f"tvlens linear propagation: {res.task} on {args.model}", sections)
        payload["html"] = str(path)
        text.append(f"wrote {path}")
    return payload, "\n".join(text)
