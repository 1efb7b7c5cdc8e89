"""Costs for docs/backends.md ("Measured costs"): the same SmolLM2 evaluations on whichever backend this venv has.

    OMP_NUM_THREADS=1 python docs/scripts/backend_costs.py     # once in the TransformerLens 3.9 venv, once in 4.3

Evaluates the capitalize test queries zero-shot with a fixed random vector at layer 15 (the timing does not depend
on the vector), then 5-shot ICL, and prints the seconds of each (after a warm-up load) and the accuracies.
"""
import time

import torch

import tvlens as tv

torch.set_num_threads(1)
t = time.time()
model = tv.load_model("smollm2")
load_s = time.time() - t
splits = tv.make_splits(tv.tasks.get("capitalize"), seed=0)
zero, icl = tv.make_prompts(splits, "test", k=0), tv.make_prompts(splits, "test", k=5)
v = tv.TaskVector(torch.randn(1, model.cfg.d_model, generator=torch.Generator().manual_seed(0)), (tv.Site(15, -1),),
                  model_fingerprint=tv.fingerprint(model), task="capitalize")
t = time.time()
steered = tv.evaluate(model, zero, intervention=tv.steering(model, v))
steered_s = time.time() - t
t = time.time()
few = tv.evaluate(model, icl)
icl_s = time.time() - t
print(f"{type(model).__name__}: load {load_s:.1f} s; {len(zero)} zero-shot queries steered {steered_s:.1f} s "
      f"(accuracy {steered.accuracy:.3f}); 5-shot ICL {icl_s:.1f} s (accuracy {few.accuracy:.3f})")
