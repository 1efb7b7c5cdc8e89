"""Figure 8B on the embedded model: the linear surrogate at every later layer vs the real state and zero-shot."""

import torch

import tvlens as tv
from tvlens.analysis.linear import linear_surrogate

torch.set_num_threads(1)

model = tv.load_model("toy")
for task in ("toy/antonym", "toy/sentiment"):
    for layer in (1, 3):  # L/4 and 3L/4 of 5 layers, as the paper's early and late
        vec = tv.train_ltv(model, task, layers=[layer], progress=False).vector
        res = linear_surrogate(model, vec, task)
        print(f"{task} θ@L{layer} (n={res.n_test})")
        print(res.to_frame().to_string(index=False, float_format="%.2f"))
