"""Figure 8B: the linear surrogate at every later layer vs the real injected state and zero-shot.

    python examples/fig8b_linear_surrogate.py                       # the embedded model (seconds)
    python examples/fig8b_linear_surrogate.py --model smollm2 --tasks capitalize country_or_city --layers 7 22 --html fig8b

θ is trained at each layer (the paper's early L/4 and late 3L/4 by default), then ``linear_surrogate``
decodes zero-shot + W_m θ, the real injected state and the zero-shot state at θ's site and after every
block from θ's layer up.
"""

import argparse
import pathlib
import time

import torch

import tvlens as tv
from tvlens.analysis.linear import linear_surrogate

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--model", default="toy")
parser.add_argument("--tasks", nargs="+", default=None, help="default: toy/antonym toy/sentiment on toy")
parser.add_argument("--layers", nargs="+", type=int, default=None, help="default: L/4 and 3L/4")
parser.add_argument("--n", type=int, default=200, help="test queries per task")
parser.add_argument("--html", default=None, help="also write one figure per (task, layer) into this folder")
args = parser.parse_args()

torch.set_num_threads(1)
model = tv.load_model(args.model)
n_layers = model.cfg.n_layers
tasks = args.tasks or ["toy/antonym", "toy/sentiment"]
layers = args.layers or [n_layers // 4, (3 * n_layers) // 4]  # 1 and 3 of the toy's 5 layers
for task in tasks:
    for layer in layers:
        t0 = time.perf_counter()
        vec = tv.train_ltv(model, task, layers=[layer], progress=False).vector
        res = linear_surrogate(model, vec, task, n=args.n)
        print(f"{task} θ@L{layer} (n={res.n_test}, {time.perf_counter() - t0:.0f} s)")
        print(res.to_frame().to_string(index=False, float_format="%.2f"))
        if args.html:
            out = pathlib.Path(args.html)
            out.mkdir(parents=True, exist_ok=True)
            res.plot().write_html(out / f"fig8b_{args.model}_{task.replace('/', '_')}_L{layer}.html", include_plotlyjs=True)
