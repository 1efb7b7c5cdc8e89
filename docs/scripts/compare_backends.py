"""Backend comparison for docs/backends.md: run once per TransformerLens venv, then compare the two files.

    OMP_NUM_THREADS=1 python docs/scripts/compare_backends.py 3.9 toy smollm2   # in the 3.9 venv
    OMP_NUM_THREADS=1 python docs/scripts/compare_backends.py 4.3 toy smollm2   # in the 4.3 venv

Writes /tmp/tl4/cmp-<version>.pt: logits on one prompt, an LTV (fixed seed), accuracies and seconds.
"""
import os, sys, time

import torch

import tvlens as tv

torch.set_num_threads(1)
ver = sys.argv[1]
out = {}
for name in sys.argv[2:]:
    t = time.time(); m = tv.load_model(name); out[f"{name}/load_s"] = time.time() - t
    out[f"{name}/backend"] = type(m).__name__
    toks = m.to_tokens(["The capital of France is", "kevi -> "][name == "toy"])
    with torch.no_grad():
        out[f"{name}/logits"] = m(toks)[0].float()
    task = tv.tasks.get("toy/antonym" if name == "toy" else "capitalize")
    splits = tv.make_splits(task, seed=0)
    cfg = tv.LTVConfig() if name == "toy" else tv.LTVConfig(max_epochs=2, n_train=64, n_val=16, epoch_size=32, batch_size=16)
    layer = 2 if name == "toy" else 15
    t = time.time(); res = tv.train_ltv(m, task, layers=[layer], positions=[-1], splits=splits, config=cfg, progress=False); out[f"{name}/ltv_s"] = time.time() - t
    out[f"{name}/ltv"] = res.vector.values.detach().clone()
    test = tv.make_prompts(splits, "test", k=0)
    t = time.time()
    out[f"{name}/acc_ltv"] = tv.evaluate(m, test, intervention=tv.steering(m, res.vector))
    out[f"{name}/acc_icl"] = tv.evaluate(m, tv.make_prompts(splits, "test", k=5))
    out[f"{name}/eval_s"] = time.time() - t
    print(name, {k: v for k, v in out.items() if not torch.is_tensor(v)}, flush=True)
os.makedirs("/tmp/tl4", exist_ok=True)
torch.save(out, f"/tmp/tl4/cmp-{ver}.pt")
