"""Cross-check: the PyTorch reference AutoAttack on the same SmallCNN weights and images.

Installs nothing. Run it with a Python that has ``torch`` and the reference
implementation importable (``pyautoattack``, the PyPI packaging of
fra31/auto-attack, or ``autoattack`` from the GitHub repository), e.g. a
separate virtual environment (never the project's ``.venv``):

    python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch==2.13.0 pyautoattack
    python -m bench.bench_attacks --models=small_cnn --attacks=aa   # also writes the data npz
    /tmp/torchvenv/bin/python bench/crosscheck_autoattack_torch.py \
        --weights=bench/results/small_cnn_mnist_at_0.3_400.npz \
        --data=bench/results/small_cnn_mnist_eval.npz --attacks=apgd-ce,apgd-t,square,standard

It rebuilds the TRADES SmallCNN in PyTorch from the JAX weights (HWIO -> OIHW
kernels, (in, out) -> (out, in) dense weights; the JAX model flattens in
PyTorch's C,H,W order, so the dense weights carry over unchanged), checks
that both frameworks give the same clean predictions, then runs each
requested reference attack ("individual" mode, every attack on the clean
points) and/or the 'standard' cascade, timing each. It prints one JSON line
per run and, with ``--out``, writes them to a JSON file; compare the robust
accuracies with ``bench/bench_attacks.py`` (``--attacks=aa``) and the
individual JAX attacks (``--jax_json``) on the same points.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def _import_reference():
    try:
        from pyautoattack import AutoAttack  # PyPI packaging (0.2.x)
        return AutoAttack, "pyautoattack"
    except ImportError:
        from autoattack import AutoAttack  # GitHub fra31/auto-attack
        return AutoAttack, "autoattack"


def build_torch_model(weights_path: str):
    import numpy as np
    import torch
    from torch import nn

    w = np.load(weights_path)

    class SmallCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(1, 32, 3), nn.Conv2d(32, 32, 3)
            self.c3, self.c4 = nn.Conv2d(32, 64, 3), nn.Conv2d(64, 64, 3)
            self.f1, self.f2, self.f3 = nn.Linear(1024, 200), nn.Linear(200, 200), nn.Linear(200, 10)

        def forward(self, x):
            r = torch.relu
            x = torch.max_pool2d(r(self.c2(r(self.c1(x)))), 2)
            x = torch.max_pool2d(r(self.c4(r(self.c3(x)))), 2)
            x = x.flatten(1)
            return self.f3(r(self.f2(r(self.f1(x)))))

    model = SmallCNN()
    with torch.no_grad():
        for jax_name, mod in (("conv1", model.c1), ("conv2", model.c2), ("conv3", model.c3),
                              ("conv4", model.c4)):
            mod.weight.copy_(torch.from_numpy(w[f"{jax_name}/kernel"].transpose(3, 2, 0, 1)))
            mod.bias.copy_(torch.from_numpy(w[f"{jax_name}/bias"]))
        for jax_name, mod in (("fc1", model.f1), ("fc2", model.f2), ("fc3", model.f3)):
            mod.weight.copy_(torch.from_numpy(w[f"{jax_name}/kernel"].T.copy()))
            mod.bias.copy_(torch.from_numpy(w[f"{jax_name}/bias"]))
    return model.eval()


def _single_runs(model, x, y, eps, d, out_path) -> None:
    """Reference ``attack_single_run`` from a fixed start, per loss."""
    import numpy as np
    import torch

    try:
        from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted
    except ImportError:
        from autoattack.autopgd_base import APGDAttack, APGDAttack_targeted
    x_init = torch.from_numpy(np.ascontiguousarray(d["x_init"].transpose(0, 3, 1, 2)))
    out = {}
    for loss in ("ce", "dlr", "dlr-targeted"):
        if loss == "dlr-targeted":
            attack = APGDAttack_targeted(model, n_iter=100, eps=eps, norm="Linf", device="cpu")
            with torch.no_grad():
                attack.y_target = model(x).sort(dim=1)[1][:, -2]
        else:
            attack = APGDAttack(model, n_iter=100, eps=eps, norm="Linf", loss=loss, device="cpu")
        attack.init_hyperparam(x)
        start = time.perf_counter()
        x_best, acc, loss_best, x_best_adv = attack.attack_single_run(x, y, x_init=x_init.clone())
        out[f"{loss}/acc"] = acc.numpy()
        out[f"{loss}/loss_best"] = loss_best.numpy()
        out[f"{loss}/x_best"] = x_best.detach().numpy().transpose(0, 2, 3, 1)
        out[f"{loss}/x_best_adv"] = x_best_adv.detach().numpy().transpose(0, 2, 3, 1)
        print(json.dumps({"single_run": loss, "robust": float(acc.float().mean()),
                          "s": time.perf_counter() - start}), flush=True)
    np.savez(out_path, **out)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", required=True, help="npz of the JAX SmallCNN params")
    parser.add_argument("--data", required=True, help="npz with x (NHWC float) and y")
    parser.add_argument("--eps", type=float, default=None, help="default: the npz's eps")
    parser.add_argument("--attacks", default="apgd-ce,apgd-t,square,standard",
                        help="comma list of apgd-ce, apgd-t, fab-t, square, standard")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None)
    parser.add_argument("--single_run_out", default=None,
                        help="also run one APGD run per loss (ce, dlr, dlr-targeted at rank 2) "
                             "from the npz's x_init and save the results here, for "
                             "bench_attacks.py --compare_single_run")
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    AutoAttack, impl = _import_reference()
    model = build_torch_model(args.weights)
    d = np.load(args.data)
    x = torch.from_numpy(np.ascontiguousarray(d["x"].transpose(0, 3, 1, 2)))
    y = torch.from_numpy(d["y"].astype(np.int64))
    eps = float(args.eps if args.eps is not None else d["eps"])
    with torch.no_grad():
        logits = model(x).numpy()
    pred = logits.argmax(1)
    record_base = {"impl": impl, "torch": torch.__version__, "threads": torch.get_num_threads(),
                   "n": len(y), "eps": eps, "clean_acc": float((pred == d["y"]).mean())}
    if "logits" in d:  # the JAX model's logits on the same images
        record_base["max_abs_logit_diff_vs_jax"] = float(np.abs(logits - d["logits"]).max())
        record_base["same_predictions_as_jax"] = bool(np.all(pred == d["logits"].argmax(1)))
    print(json.dumps(record_base), flush=True)

    if args.single_run_out:
        _single_runs(model, x, y, eps, d, args.single_run_out)

    records = []
    for name in [a for a in args.attacks.split(",") if a]:
        if name == "standard":
            adversary = AutoAttack(model, norm="Linf", eps=eps, version="standard",
                                   seed=args.seed, device="cpu")
        else:
            adversary = AutoAttack(model, norm="Linf", eps=eps, version="custom",
                                   attacks=[name], seed=args.seed, device="cpu")
            # The 'standard' settings for the single attack (custom keeps
            # the constructor's 5 restarts otherwise).
            adversary.apgd.n_restarts = 1
            adversary.fab.n_restarts = 1
            adversary.apgd_targeted.n_target_classes = 9
            adversary.fab.n_target_classes = 9
            adversary.square.n_queries = 5000
        adversary.verbose = False
        start = time.perf_counter()
        cpu0 = time.process_time()
        x_adv = adversary.run_standard_evaluation(x, y, batch_size=len(y))
        if isinstance(x_adv, tuple):  # pyautoattack returns (x_adv, y_adv)
            x_adv = x_adv[0]
        wall = time.perf_counter() - start
        cpu = time.process_time() - cpu0
        with torch.no_grad():
            robust = float((model(x_adv).argmax(1) == y).float().mean())
        linf = float((x_adv - x).abs().flatten(1).max())
        rec = {**record_base, "attack": name, "robust_acc": robust, "wall_s": wall, "cpu_s": cpu,
               "img_per_s": len(y) / wall, "max_linf": linf,
               "loadavg": round(os.getloadavg()[0], 2)}
        records.append(rec)
        print(json.dumps(rec), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"command": " ".join(sys.argv), "records": records}, f, indent=2)


if __name__ == "__main__":
    main()
