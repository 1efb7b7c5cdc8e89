"""Measure prompt templates on a real model: 0-shot, 5-shot ICL and LTV per layer, on val and test.

Used to choose the default template of tvlens's word-pair tasks (docs/real-model.md, "The prompt
template"): the choice is made on validation accuracy only; test accuracy is reported.

    python docs/scripts/template_choice.py --model smollm2 --task capitalize --template qa \
        --layers 9 15 21 --out capitalize-qa.json

One task and template per process, one torch thread (run several side by side on a multi-core
machine). Prints nothing but the path it wrote; the numbers are in the JSON file.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import tvlens as tv


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--task", required=True)
    p.add_argument("--template", required=True)
    p.add_argument("--layers", type=int, nargs="+", default=[9, 15, 21])
    p.add_argument("--shots", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    model = tv.load_model(a.model)
    task = tv.tasks.get(a.task, template=a.template)
    splits = tv.make_splits(task, seed=a.seed)
    out: dict = {"model": a.model, "task": task.name, "template": task.template_record(), "seed": a.seed,
                 "n": {s: len(splits[s]) for s in ("demo", "train", "val", "test")}}

    def acc(split: str, k: int, vector=None) -> dict:
        ps = tv.make_prompts(splits, split, k=k, seed=a.seed)
        r = tv.evaluate(model, ps, intervention=None if vector is None else tv.steering(model, vector))
        return {"accuracy": r.accuracy, "ci95": list(r.ci95), "n": r.n}

    for split in ("val", "test"):
        out[f"zero_shot_{split}"] = acc(split, 0)
        out[f"icl{a.shots}_{split}"] = acc(split, a.shots)
    out["ltv"] = []
    for layer in a.layers:
        res = tv.train_ltv(model, task, layers=[layer], positions=[-1], config=tv.LTVConfig(seed=a.seed), splits=splits,
                           progress=False)
        out["ltv"].append({"layer": layer, "val": res.val_accuracy, "best_epoch": res.best_epoch,
                           "history": list(res.history),
                           "test": acc("test", 0, res.vector), "seconds": round(res.seconds, 1)})
    out["seconds"] = round(time.perf_counter() - t0, 1)
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1, default=str)
    print(a.out)


if __name__ == "__main__":
    main()
