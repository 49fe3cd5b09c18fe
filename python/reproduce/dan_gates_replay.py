"""Gates-only replay of the DAN demo's search: the gate logits eta under the FLOPs term alone (no network, no CE
or KL), with the demo's optimiser settings, to compare the FLOPs terms of docs/dan.md.

    python python/reproduce/dan_gates_replay.py --out python/reproduce/results

Variants (all with Adam(lr=0.05) on eta, lambda(t) quadratic, flops_weight 4, the demo's 234 steps, budget
the uniform alpha=4 network's FLOPs, tolerance 0.05):
- ``old``: E[FLOPs] over softmax(eta / tau), one-sided hinge, tau per epoch (the design before issue 22);
- ``hinge``: E[FLOPs] over softmax(eta), one-sided hinge;
- ``band``: E[FLOPs] over softmax(eta), the band term keyed on the argmax network (the design now);
- ``band-st``: the band term on the step's hard straight-through sample instead of the expectation, tau per step.

Reports, at the end of the replay, the argmax network's FLOPs, E[FLOPs] over softmax(eta) and the projected
network's FLOPs as fractions of the budget, and the log-probability the projection gave up. Without CE and
KL this shows only what the FLOPs term does on its own: a search with a network adds the pull of the
losses, which the demo measures. Writes OUT/dan_gates_replay.{md,json}.
"""
import argparse
import json
import math
import os
import statistics
import sys

import torch

import adjoined_kernels as ak
from adjoined_kernels.dan import flops_penalty, tau_at, tau_at_step
from adjoined_kernels.models.flops import adjoined_flops
from adjoined_kernels.schedules import lambda_schedule

HW, STEPS, SPE, TOL, WEIGHT, LR = (28, 28), 234, 117, 0.05, 4.0, 0.05


def net_and_budget():
    kw = dict(num_classes=10, in_channels=1, stem="cifar", width=16)
    net = ak.models.adjoined_resnet18(search_alphas=(2, 4, 8), **kw)
    return net, ak.models.adjoined_resnet18(alpha=4, **kw).small_flops(HW)


def expected(net, weights):
    """FLOPs with every width replaced by ``weights_l @ candidates_l`` (a 0-dim tensor)."""
    it = iter(weights)
    w = {id(g): next(it) @ g.cand for g in net.search.gates}
    return adjoined_flops(net, net.search._map(lambda g: w[id(g)]), HW)


def replay(variant: str, seed: int) -> dict:
    torch.manual_seed(seed)
    net, budget = net_and_budget()
    full = net.full_flops(HW)
    target = budget / full
    gates = net.search.gates
    opt = torch.optim.Adam(net.arch_parameters(), lr=LR)
    for step in range(STEPS):
        lam = lambda_schedule(step / STEPS, "quadratic", 1.0)
        if variant == "old":
            tau = tau_at(step // SPE)
            e = expected(net, [g.relaxed(tau) for g in gates])
            pen = flops_penalty(e, full, target)
        elif variant == "hinge":
            pen = flops_penalty(net.expected_small_flops(HW), full, target)
        elif variant == "band":
            pen = flops_penalty(net.expected_small_flops(HW), full, target, net.argmax_small_flops(HW), TOL)
        else:  # band-st: hard sample forward, Gumbel-softmax gradient
            tau = tau_at_step(step, STEPS, 15.0, 1.0)
            soft = [g.gumbel_weights(tau) for g in gates]
            hard = [torch.nn.functional.one_hot(s.argmax(), s.numel()).float() - s.detach() + s for s in soft]
            pen = flops_penalty(expected(net, hard), full, target, net.argmax_small_flops(HW), TOL)
        opt.zero_grad()
        (lam * WEIGHT * pen).backward()
        opt.step()
    with torch.no_grad():
        p = net.project(budget, TOL, HW)
        return {"variant": variant, "seed": seed, "argmax": float(net.argmax_small_flops(HW)) / budget,
                "expected": float(net.expected_small_flops(HW)) / budget, "projected": p.flops / budget,
                "given_up": p.argmax_log_prob - p.log_prob}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/dan-gates-replay")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    a = p.parse_args(argv)
    rows = [replay(v, s) for v in ("old", "hinge", "band", "band-st") for s in a.seeds]
    lines = ["| variant | argmax FLOPs / budget | E[FLOPs] / budget (softmax(eta)) | projected / budget | "
             "log-prob given up |", "|---|---|---|---|---|"]
    for v in ("old", "hinge", "band", "band-st"):
        rs = [r for r in rows if r["variant"] == v]

        def c(k):
            xs = [r[k] for r in rs]
            return f"{statistics.mean(xs):.3f}" + (f" ± {statistics.stdev(xs):.3f}" if len(xs) > 1 else "")
        lines.append(f"| {v} | {c('argmax')} | {c('expected')} | {c('projected')} | {c('given_up')} |")
    lines.append(f"\n{len(a.seeds)} seed(s) (mean ± std; only band-st is random); {STEPS} steps, Adam lr {LR}, "
                 f"flops_weight {WEIGHT}, tolerance {TOL}; no network: the FLOPs term alone moves eta.")
    text = "\n".join(lines)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "dan_gates_replay.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(a.out, "dan_gates_replay.json"), "w") as f:
        json.dump(rows, f, indent=1)
    print(text)
    return 0 if all(math.isfinite(r["given_up"]) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
