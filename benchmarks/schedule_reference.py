"""Compare our schedule callbacks with the reference implementations, step by step.

Measures the max abs difference over a full run between each callback's planned curve
(`Callback.curve`, i.e. the in-graph rule) and the reference: PyTorch's schedulers where PyTorch
is installed (`pip install torch`), and the closed-form formulas written out in Python float64
for the systems that are not (Keras, timm, MXNet, jax.example_libraries).

    python benchmarks/schedule_reference.py     # writes benchmarks/results/schedule_reference.*
"""

from __future__ import annotations

import math

import numpy as np
from common import write

from flax_lr_callbacks import CosineRestarts, CyclicLR, OneCycle


def torch_curve(make_sched, steps, momentum=False, beta1=False):
    import torch

    param = torch.nn.Parameter(torch.zeros(1))
    if beta1:
        opt = torch.optim.Adam([param], lr=1.0)
    else:
        opt = torch.optim.SGD([param], lr=1.0, momentum=0.9)
    sched = make_sched(opt)
    lrs, moms = [], []
    for _ in range(steps):
        group = opt.param_groups[0]
        lrs.append(group["lr"])
        moms.append(group["betas"][0] if beta1 else group["momentum"])
        opt.step()
        sched.step()
    return np.array(lrs), np.array(moms)


def cases():
    import torch.optim.lr_scheduler as S

    yield ("OneCycle cos", "torch OneCycleLR", 1000,
           OneCycle(0.1, total_steps=1000),
           lambda o: S.OneCycleLR(o, 0.1, total_steps=1000), True)
    yield ("OneCycle linear three_phase", "torch OneCycleLR", 777,
           OneCycle(0.3, total_steps=777, pct_start=0.2, anneal_strategy="linear",
                    three_phase=True, div_factor=10, final_div_factor=100),
           lambda o: S.OneCycleLR(o, 0.3, total_steps=777, pct_start=0.2,
                                  anneal_strategy="linear", three_phase=True, div_factor=10,
                                  final_div_factor=100), True)
    yield ("CyclicLR triangular", "torch CyclicLR", 1000,
           CyclicLR(0.001, 0.1, step_size_up=100, step_size_down=150),
           lambda o: S.CyclicLR(o, 0.001, 0.1, step_size_up=100, step_size_down=150), True)
    yield ("CyclicLR triangular2", "torch CyclicLR", 1000,
           CyclicLR(0.001, 0.1, step_size_up=50, mode="triangular2"),
           lambda o: S.CyclicLR(o, 0.001, 0.1, step_size_up=50, mode="triangular2"), True)
    yield ("CyclicLR exp_range", "torch CyclicLR", 1000,
           CyclicLR(0.001, 0.1, step_size_up=50, mode="exp_range", gamma=0.997),
           lambda o: S.CyclicLR(o, 0.001, 0.1, step_size_up=50, mode="exp_range",
                                gamma=0.997), True)
    yield ("CosineRestarts t_mult=1", "torch CosineAnnealingWarmRestarts", 1000,
           CosineRestarts(t_0=70, eta_min=0.001, base_lr=1.0),
           lambda o: S.CosineAnnealingWarmRestarts(o, T_0=70, eta_min=0.001), False)
    yield ("CosineRestarts t_mult=2", "torch CosineAnnealingWarmRestarts", 2000,
           CosineRestarts(t_0=50, t_mult=2, eta_min=0.01, base_lr=1.0),
           lambda o: S.CosineAnnealingWarmRestarts(o, T_0=50, T_mult=2, eta_min=0.01), False)


def keras_restarts(step, first, t_mul, m_mul, alpha, initial):
    """Keras CosineDecayRestarts, written out in float64 from its documented formula."""
    completed = step / first
    if t_mul == 1.0:
        i = math.floor(completed)
        completed -= i
    else:
        i = math.floor(math.log(1.0 - completed * (1.0 - t_mul)) / math.log(t_mul))
        completed = (1.0 - t_mul ** i) / (1.0 - t_mul)
        completed = (step / first - completed) / t_mul ** i
    m_fac = m_mul ** i
    cosine = 0.5 * m_fac * (1.0 + math.cos(math.pi * completed))
    return initial * ((1 - alpha) * cosine + alpha)


def timm_restarts(t, t_initial, cycle_mul, cycle_decay, cycle_limit, lr_min, base):
    """timm CosineLRScheduler (no warmup, no noise), written out in float64."""
    if cycle_mul != 1:
        i = math.floor(math.log(1 - t / t_initial * (1 - cycle_mul), cycle_mul))
        t_i = cycle_mul ** i * t_initial
        t_curr = t - (1 - cycle_mul ** i) / (1 - cycle_mul) * t_initial
    else:
        i = t // t_initial
        t_i = t_initial
        t_curr = t - t_initial * i
    if i >= cycle_limit:
        return lr_min
    lr_max = base * cycle_decay ** i
    return lr_min + 0.5 * (lr_max - lr_min) * (1 + math.cos(math.pi * t_curr / t_i))


def main() -> None:
    rows = []
    try:
        for name, ref, steps, cb, make, mom in cases():
            ours = cb.curve(steps)
            lr_ref, mom_ref = torch_curve(make, steps)
            diff = float(np.max(np.abs(ours["learning_rate"] - lr_ref)))
            if mom:
                diff = max(diff, float(np.max(np.abs(ours["momentum"] - mom_ref))))
            rows.append({"schedule": name, "reference": ref, "steps": steps,
                         "max_abs_diff": diff})
    except ImportError:
        print("PyTorch not installed: skipping the PyTorch comparisons")
    steps = 3000
    cb = CosineRestarts(t_0=100, t_mult=1.5, peak_decay=0.7, base_lr=0.05)
    keras = np.array([keras_restarts(t, 100, 1.5, 0.7, 0.0, 0.05) for t in range(steps)])
    rows.append({"schedule": "CosineRestarts t_mult=1.5 peak_decay=0.7",
                 "reference": "Keras CosineDecayRestarts (alpha=0) formula, float64",
                 "steps": steps,
                 "max_abs_diff": float(np.max(np.abs(cb.curve(steps)["learning_rate"] - keras)))})
    cb = CosineRestarts(t_0=100, t_mult=1.5, peak_decay=0.7, eta_min=0.005, max_cycles=4,
                        base_lr=0.05)
    timm = np.array([timm_restarts(t, 100, 1.5, 0.7, 4, 0.005, 0.05) for t in range(steps)])
    rows.append({"schedule": "CosineRestarts t_mult=1.5 peak_decay=0.7 max_cycles=4",
                 "reference": "timm CosineLRScheduler formula, float64", "steps": steps,
                 "max_abs_diff": float(np.max(np.abs(cb.curve(steps)["learning_rate"] - timm)))})
    try:
        import torch
        torch_version = torch.__version__
    except ImportError:
        torch_version = None
    lines = ["| schedule | reference | steps | max abs diff (LR and momentum) |",
             "|---|---|---|---|"]
    lines += [f"| {r['schedule']} | {r['reference']} | {r['steps']} | {r['max_abs_diff']:.2e} |"
              for r in rows]
    write("schedule_reference", {"torch": torch_version, "rows": rows}, "\n".join(lines))

if __name__ == "__main__":
    main()
