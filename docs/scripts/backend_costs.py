"""Costs for docs/backends.md ("Measured costs"): the same SmolLM2 evaluations on whichever backend this venv has.

    OMP_NUM_THREADS=1 python docs/scripts/backend_costs.py     # once in the TransformerLens 3.9 venv, once in 4.3
    OMP_NUM_THREADS=1 python docs/scripts/backend_costs.py --no-prefix-cache   # 4.3: the bridge as before its cache

Evaluates the capitalize test queries zero-shot with a fixed random vector at layer 15 (the timing does not depend
on the vector), then 5-shot ICL, then the 5-shot prompts with the vector (the suffix run skips a long prefix there),
and prints the seconds of each and the accuracies.
"""
import sys
import time

import torch

import tvlens as tv

torch.set_num_threads(1)
t = time.time()
model = tv.load_model("smollm2")
load_s = time.time() - t
if "--no-prefix-cache" in sys.argv:  # every suffix run a full forward, as on the bridge before it had a prefix cache
    from tvlens import _backend

    _backend.mark_hf_cache_broken(model, "turned off for this measurement")
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
t = time.time()
few_steered = tv.evaluate(model, icl, intervention=tv.steering(model, v))  # 5-shot prompts with the vector: a long prefix
few_steered_s = time.time() - t
print(f"{type(model).__name__}{' (prefix cache off)' if '--no-prefix-cache' in sys.argv else ''}: load {load_s:.1f} s; {len(zero)} zero-shot queries steered {steered_s:.1f} s "
      f"(accuracy {steered.accuracy:.3f}); 5-shot ICL {icl_s:.1f} s (accuracy {few.accuracy:.3f}); "
      f"5-shot steered {few_steered_s:.1f} s (accuracy {few_steered.accuracy:.3f})")
