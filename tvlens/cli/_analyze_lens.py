"""``tvlens analyze lens`` and ``tvlens analyze linear``: how a task vector becomes an answer.

Without ``--vector`` both train the LTVs they need with the default ``tv.LTVConfig(seed=--seed)``:
``lens`` one at L/4 and one at 3L/4 (:func:`tvlens.analysis.lens_layers`), ``linear`` one per
layer of ``--layers`` (default :func:`tvlens.analysis.default_layers`, as in the report: every
layer on a model of <= 8 layers such as the embedded one, every third layer on others).
"""

from __future__ import annotations

import argparse
import time

from tvlens.cli._common import add_template_option, start
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
                    help="injection layers (default: every layer on models of <= 8 layers, e.g. toy; every third on others)")
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
    sp.add_argument("--definition", choices=("span", "raw_span", "max_cos", "label_diff"), default="span",
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
            from tvlens.analysis._inputs import check_vector

            check_vector(model, v)
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


def _lens(model, task, vectors: dict, args):
    from tvlens.analysis import logit_lens

    shots = (0, args.shots) if args.shots > 0 else (0,)
    return logit_lens(model, task, vectors={f"θ@L{layer}": v for layer, v in sorted(vectors.items())}, shots=shots,
                      n=args.n_test, seed=args.seed, definition=args.definition)


def cmd_lens(args: argparse.Namespace) -> tuple[dict, str]:
    from tvlens.analysis import decoded_tokens, lens_layers

    t0, model, task = start(args)
    layers = args.layers if args.layers is not None else lens_layers(model.cfg.n_layers)
    vectors, train_s = _vectors(args, model, task, layers)
    lens = _lens(model, task, vectors, args)
    named = {f"θ@L{layer}": v for layer, v in sorted(vectors.items())}
    dec = decoded_tokens(model, named, args.top_k)
    raw = decoded_tokens(model, named, args.top_k, through_ln=False)
    payload = {
        "model": args.model, **lens.payload(),
        "decoded": [{"vector": lab, "through_ln": list(dec.tokens[i]), "raw": list(raw.tokens[i])} for i, lab in enumerate(dec.labels)],
        "train_seconds": train_s, "seconds": round(time.perf_counter() - t0, 2),
    }
    wide = lens.wide()
    text = [lens.text(args.model), "decoded tokens (through ln_final):"]
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
    from tvlens.analysis import default_layers, rotation_vs_stretch

    t0, model, task = start(args)
    layers = args.layers if args.layers is not None else default_layers(model.cfg.n_layers)
    vectors, train_s = _vectors(args, model, task, layers)
    lens = None if args.no_lens else _lens(model, task, {}, args)
    res = rotation_vs_stretch(model, vectors, task, lens=lens, threshold=args.threshold, definition=args.definition,
                              n_copies=args.n_copies, noise=args.noise, ridge=args.ridge, n_queries=args.n_queries,
                              n=args.n_test, seed=args.seed)
    payload = {"model": args.model, **res.payload(), "train_seconds": train_s,
               "seconds": round(time.perf_counter() - t0, 2)}
    if lens is not None:
        payload["lens_accuracy"] = {c: lens.accuracy[i].tolist() for i, c in enumerate(lens.conditions)}
    frame = res.to_frame()
    text = [res.text(args.model)]
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
