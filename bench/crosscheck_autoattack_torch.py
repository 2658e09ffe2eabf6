"""Cross-check: the JAX AutoAttack against the PyTorch reference, long form.

The long form of ``tests/attacks/test_aa_reference.py`` (same comparisons,
same code: ``bench.reference_compare``), on the benchmark's
briefly adversarially trained MNIST SmallCNN with the reference's full
budgets, every norm and more points. Needs ``torch`` and the reference
(``pyautoattack``, the PyPI packaging of fra31/auto-attack, or ``autoattack``
from GitHub) importable next to the project, e.g. the project's ``.venv``
with ``pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu``
and ``pip install pyautoattack==0.2.0``:

    python -m bench.bench_attacks --models=small_cnn --attacks=aa   # writes both npz files
    python bench/crosscheck_autoattack_torch.py \\
        --weights=bench/results/small_cnn_mnist_at_0.3_400.npz \\
        --data=bench/results/small_cnn_mnist_eval.npz --norms=linf,l2,l1 --out=crosscheck.json

The SmallCNN is rebuilt in PyTorch from the JAX weights (HWIO -> OIHW
kernels, (in, out) -> (out, in) dense weights; the JAX model flattens in
PyTorch's C,H,W order). Per norm (``--checks``):

* ``apgd``: one APGD run per loss (CE, DLR, targeted DLR at the runner-up
  class; L1 also with the large-reps schedule) from the same start;
* ``fab``: FAB-T (deterministic with one restart) and FAB (first run);
* ``square``: Square with the reference replaying the JAX run's draws
  (L-inf, exact to the end) and, for every norm, both with their own draws;
* ``cascade``: ``run_standard_evaluation`` of each ``--versions`` entry
  against the jitted ``autoattack``, with per-stage robust accuracies and
  wall times of both.

Every record is one JSON line (and, with ``--out``, a JSON file): flag
agreement counts (``bench.reference_compare.flag_agreement``),
robust accuracies and timings. ``--attacks`` keeps the older reference-only
timing runs (each reference attack alone on the clean points, and/or
``standard``); ``--single_run_out`` saves the reference's L-inf single runs for
``bench/bench_attacks.py --compare_single_run``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# SmallCNN (advcore.models.small_cnn) as reference_compare.flax_layers spec.
SMALL_CNN_SPEC = (("conv", "conv1", 1), ("relu",), ("conv", "conv2", 1), ("relu",),
                  ("maxpool", 2), ("conv", "conv3", 1), ("relu",), ("conv", "conv4", 1),
                  ("relu",), ("maxpool", 2), ("flatten", "nchw"), ("dense", "fc1"), ("relu",),
                  ("dense", "fc2"), ("relu",), ("dense", "fc3"))
CHECKS = ("apgd", "fab", "square", "cascade")


def load_small_cnn(weights_path: str):
    """``(params, logits_fn_of)``: the JAX SmallCNN with the npz weights."""
    import jax.numpy as jnp
    import numpy as np

    from advcore.models import build_model

    stored = np.load(weights_path)
    params: dict = {}
    for name in stored.files:
        *path, leaf = name.split("/")
        node = params
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = jnp.asarray(stored[name])
    model = build_model("small_cnn", 10)

    def logits_fn_of(p):
        return lambda z: model.apply({"params": p}, z, train=False)

    return params, logits_fn_of


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def check_apgd(rc, model, params, logits_fn_of, x, y, norm, eps):
    import numpy as np

    runs = [("ce", False), ("dlr", False), ("dlr-targeted", False)]
    if norm == "l1":
        runs += [("ce", True), ("dlr-targeted", True)]
    for loss, largereps in runs:
        kw = dict(eps=eps, norm=norm, loss=loss, num_iters=100, target_rank=2)
        if largereps:
            kw.update(use_largereps=True,
                      noise=np.random.default_rng(1).normal(size=x.shape).astype(np.float32))
        else:
            kw.update(x_init=rc.start_in_ball(x, norm, eps))
        ref, t_ref = _timed(lambda: rc.reference_apgd_run(model, x, y, **kw))
        ours, t_ours = _timed(lambda: rc.jax_apgd_run(logits_fn_of, params, x, y, **kw))
        same = np.all(np.abs(ours["x_best"] - ref["x_best"]) < 1e-5, axis=(1, 2, 3))
        yield {"check": "apgd_single_run", "loss": loss, "largereps": largereps,
               **rc.flag_agreement(ours["acc"], ref["acc"]),
               "same_path_frac": float(same.mean()), "s_reference": t_ref, "s_jax": t_ours}


def check_fab(rc, model, params, logits_fn_of, x, y, norm, eps):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from advcore.attacks.fab import fab_targeted_with_flags, fab_with_flags

    for targeted in (True, False):
        (_, ref), t_ref = _timed(lambda: rc.reference_fab(model, x, y, eps=eps, norm=norm,
                                                          targeted=targeted))
        fn = fab_targeted_with_flags if targeted else fab_with_flags
        run = jax.jit(lambda p, x, y: fn(logits_fn_of(p), x, y, jax.random.key(0), eps=eps,
                                         norm=norm))
        (_, ours), t_ours = _timed(lambda: run(params, jnp.asarray(x), jnp.asarray(y)))
        yield {"check": "fab-t" if targeted else "fab (1 restart)",
               **rc.flag_agreement(np.asarray(ours), ref), "s_reference": t_ref,
               "s_jax": t_ours}


def check_square(rc, model, params, logits_fn_of, x, y, norm, eps, seed):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from advcore.attacks.square import square_with_flags

    key = jax.random.key(seed)
    run = jax.jit(lambda p, x, y: square_with_flags(logits_fn_of(p), x, y, key, eps=eps,
                                                    norm=norm, n_queries=5000))
    (_, ours), t_ours = _timed(lambda: run(params, jnp.asarray(x), jnp.asarray(y)))
    ours = np.asarray(ours)
    if norm == "linf":
        draws = rc.square_draws(key, x.shape, norm=norm, n_queries=5000)
        x_best, t_ref = _timed(lambda: rc.reference_square_replay(
            model, x, y, draws, eps=eps, norm=norm, n_queries=5000))
        ref = np.asarray(jnp.argmax(logits_fn_of(params)(jnp.asarray(x_best)), -1)) == y
        yield {"check": "square (replayed draws)", **rc.flag_agreement(ours, ref),
               "s_reference": t_ref, "s_jax": t_ours}
    (_, ref), t_ref = _timed(lambda: rc.reference_square(model, x, y, eps=eps, norm=norm,
                                                         seed=seed))
    yield {"check": "square (own draws)", **rc.flag_agreement(ours, ref),
           "s_reference": t_ref, "s_jax": t_ours}


def check_cascade(rc, model, params, logits_fn_of, x, y, norm, eps, versions, seed, threads):
    import warnings

    import jax
    import jax.numpy as jnp
    import numpy as np

    from advcore.attacks.autoattack import autoattack, version_attacks

    for version in versions:
        ref = rc.reference_autoattack(model, x, y, eps=eps, norm=norm, version=version,
                                      seed=seed, batch_size=len(y), threads=threads)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # 'plus' with L1: the reference warns too
            run = jax.jit(lambda p, x, y: autoattack(
                logits_fn_of(p), x, y, jax.random.key(seed), eps=eps, norm=norm,
                version=version, return_details=True))
            (_, details), t_ours = _timed(lambda: run(params, jnp.asarray(x), jnp.asarray(y)))
        ours = {k: 100.0 * float(v) for k, v in details.items() if k != "robust"}
        stages = version_attacks(version)
        yield {"check": f"cascade {version}",
               **rc.flag_agreement(np.asarray(details["robust"]), ref["robust_flags"]),
               "reference": {s: ref.get(s) for s in ("clean",) + stages + ("robust",)},
               "jax": {**{s: ours[s] for s in ("clean",) + stages}, "robust": ours[stages[-1]]},
               "s_reference": ref["seconds"], "s_jax_incl_compile": t_ours}


def _legacy_reference_runs(rc, model, x, y, eps, attacks, seed, threads):
    """Reference-only timing: each attack alone on every clean point (the
    'standard' settings) and/or the 'standard' cascade."""
    for name in attacks:
        start, cpu0 = time.perf_counter(), time.process_time()
        if name == "standard":
            robust = rc.reference_autoattack(model, x, y, eps=eps, norm="linf",
                                             version="standard", seed=seed,
                                             batch_size=len(y), threads=threads)["robust"]
        else:
            kw = {"n_target_classes": 9, "restarts": 1}
            _, flags = rc.reference_perturb(model, x, y, eps=eps, norm="linf", attack=name,
                                            seed=seed, **kw)
            robust = 100.0 * float(flags.mean())
        wall = time.perf_counter() - start
        yield {"attack": name, "robust_acc": robust / 100.0, "wall_s": wall,
               "cpu_s": time.process_time() - cpu0, "img_per_s": len(y) / wall,
               "loadavg": round(os.getloadavg()[0], 2)}


def _single_runs(rc, model, x, y, eps, x_init, out_path) -> None:
    """Reference L-inf ``attack_single_run`` from the npz's start, per loss
    (for ``bench/bench_attacks.py --compare_single_run``)."""
    import numpy as np

    out = {}
    for loss in ("ce", "dlr", "dlr-targeted"):
        ref, seconds = _timed(lambda: rc.reference_apgd_run(
            model, x, y, eps=eps, norm="linf", loss=loss, num_iters=100, x_init=x_init,
            target_rank=2))
        for field in ("acc", "loss_best", "x_best", "x_best_adv"):
            out[f"{loss}/{field}"] = ref[field]
        print(json.dumps({"single_run": loss, "robust": float(ref["acc"].mean()),
                          "s": seconds}), flush=True)
    np.savez(out_path, **out)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", required=True, help="npz of the JAX SmallCNN params")
    parser.add_argument("--data", required=True, help="npz with x (NHWC float) and y")
    parser.add_argument("--n", type=int, default=None, help="use the first n points")
    parser.add_argument("--eps", type=float, default=None, help="L-inf eps (default: npz's)")
    parser.add_argument("--eps_l2", type=float, default=2.0)
    parser.add_argument("--eps_l1", type=float, default=10.0)
    parser.add_argument("--norms", default="linf", help="comma list of linf, l2, l1")
    parser.add_argument("--checks", default=",".join(CHECKS),
                        help=f"comma list of {', '.join(CHECKS)} (empty: none)")
    parser.add_argument("--versions", default="standard",
                        help="comma list of AutoAttack versions for the cascade check")
    parser.add_argument("--attacks", default="",
                        help="reference-only timing runs: comma list of apgd-ce, apgd-dlr, "
                             "apgd-t, fab, fab-t, square, standard (L-inf)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None)
    parser.add_argument("--single_run_out", default=None,
                        help="also save the reference's L-inf APGD runs (ce, dlr, dlr-targeted "
                             "at rank 2) from the npz's x_init here, for bench_attacks.py "
                             "--compare_single_run")
    args = parser.parse_args(argv)

    import jax.numpy as jnp
    import numpy as np

    from bench import reference_compare as rc

    missing = rc.reference_missing()
    if missing:
        parser.error(missing)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    norms = [n for n in args.norms.split(",") if n]
    checks = [c for c in args.checks.split(",") if c]
    for name, values, valid in (("norms", norms, ("linf", "l2", "l1")), ("checks", checks, CHECKS)):
        bad = [v for v in values if v not in valid]
        if bad:
            parser.error(f"--{name} entries must be in {valid}, got {bad}")

    params, logits_fn_of = load_small_cnn(args.weights)
    model = rc.build_torch_model(rc.flax_layers(params, SMALL_CNN_SPEC))
    d = np.load(args.data)
    x, y = d["x"].astype(np.float32), d["y"].astype(np.int32)
    if args.n:
        x, y = x[:args.n], y[:args.n]
    eps_of = {"linf": float(args.eps if args.eps is not None else d["eps"]),
              "l2": args.eps_l2, "l1": args.eps_l1}
    with torch.no_grad():
        ref_logits = model(rc._nchw(x)).numpy()
    jax_logits = np.asarray(logits_fn_of(params)(jnp.asarray(x)))
    base = {"impl": rc.import_reference().__name__, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "n": len(y),
            "clean_acc": float((ref_logits.argmax(1) == y).mean()),
            "max_abs_logit_diff_vs_jax": float(np.abs(ref_logits - jax_logits).max()),
            "same_predictions_as_jax": bool(np.all(ref_logits.argmax(1) == jax_logits.argmax(1)))}
    print(json.dumps(base), flush=True)

    if args.single_run_out:
        _single_runs(rc, model, x, y, eps_of["linf"], d["x_init"][:len(y)], args.single_run_out)

    records = []

    def emit(rec):
        rec = {**rec, "loadavg": round(os.getloadavg()[0], 2)}
        records.append(rec)
        print(json.dumps(rec), flush=True)

    for norm in norms:
        eps = eps_of[norm]
        common = (rc, model, params, logits_fn_of, x, y, norm, eps)
        for check in checks:
            if check == "apgd":
                gen = check_apgd(*common)
            elif check == "fab":
                gen = check_fab(*common)
            elif check == "square":
                gen = check_square(*common, args.seed)
            else:
                gen = check_cascade(*common, [v for v in args.versions.split(",") if v],
                                    args.seed, args.threads)
            for rec in gen:
                emit({"norm": norm, "eps": eps, **rec})
    attacks = [a for a in args.attacks.split(",") if a]
    for rec in _legacy_reference_runs(rc, model, x, y, eps_of["linf"], attacks, args.seed,
                                      args.threads):
        emit({"norm": "linf", "eps": eps_of["linf"], **rec})
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"command": " ".join(sys.argv), "setup": base, "records": records}, f,
                      indent=2)


if __name__ == "__main__":
    main()
