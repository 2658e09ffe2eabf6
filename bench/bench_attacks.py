"""Attack throughput: PGD-20 and AutoAttack (standard) in images/s, compile time apart.

    python -m bench.bench_attacks                       # small_cnn (MNIST) + wrn16_4
    python -m bench.bench_attacks --models=small_cnn --n=64
    python -m bench.bench_attacks --models=small_cnn --attacks=aa --compact=4 --devices=1,2
    python -m bench.bench_attacks --models=small_cnn --attacks=pgd20 --rewrites=on,off --rounds=3
    python -m bench.bench_attacks --models=wrn16_4 --n_wrn=16 --compact_wrn=1,4

Models:

* ``small_cnn``: the TRADES MNIST ``SmallCNN`` (``build_model("small_cnn", 10)``)
  on MNIST test images (28x28x1, eps 0.3 L-inf), briefly adversarially
  trained here (PGD-3 AT, ``--train_steps`` Adam steps of batch 128 on the
  first 20k training images); the weights are cached in
  ``bench/results/small_cnn_mnist_at_<eps>_<steps>.npz`` and reused. Without
  MNIST on disk, synthetic 28x28x1 data is used (said in the record).
* ``wrn16_4``: WRN-16-4 (``build_model("wrn", 10, depth=16, widen_factor=4)``)
  at 32x32x3, eps 8/255, *untrained* weights on random images labelled with
  the model's own prediction (clean accuracy 100%): a throughput figure for a
  CIFAR-sized network, not a robustness figure (an untrained model is broken
  almost at once, so its AutoAttack rate is an upper bound).

Per model and configuration (each in its own subprocess, ``bench/common.py``):
``compile_s`` (lower + compile of the jitted attack), ``run_s`` and images/s
over ``--steps`` timed calls (the fastest; after ``--warmup`` untimed ones,
default none), the CPU-time estimate
(``img_per_cpu_s``, robust to a busy machine), clean / robust accuracy and,
for AutoAttack, the robust accuracy after each stage and the per-stage run
time (each stage timed separately on the points the cascade hands it).
The options every benchmark shares (``--devices``, ``--rewrites``,
``--xla_flags``, ``--rounds``, ...) are in ``bench/common.py``. Results go to
``bench/results/bench_attacks_<date>.json``.

Reference point (from the task): the PyTorch AutoAttack 'standard' took
59.6 s for 64 images (1.07 img/s) on this 2-core CPU, on a small briefly
adversarially trained CNN (100% clean, 46.9% robust); the goal is >= 5x that
at the same robust accuracy. ``bench/crosscheck_autoattack_torch.py`` times
the PyTorch implementation on the *same* weights when torch is importable.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from typing import Any

from bench import common

COLUMNS = [
    ("model", "model", 0),
    ("attack", "attack", 0),
    ("n", "images", 0),
    ("compact", "compact", 0),
    *common.CONFIG_COLUMNS,
    common.ROUND_COLUMN,
    ("compile_s", "compile s", 1),
    ("run_s", "run s", 2),
    ("img_per_s", "img/s (wall)", 2),
    ("img_per_cpu_s", "img/s (CPU-time est.)", 2),
    ("clean_acc", "clean acc", 3),
    ("robust_acc", "robust acc", 3),
    ("loadavg_before", "load", 1),
]

MODELS = ("small_cnn", "wrn16_4")
TRAIN_STEPS = 400  # PGD-3 adversarial-training steps of the SmallCNN


# --------------------------------------------------------------------------
# Models and data (child process only).
# --------------------------------------------------------------------------


def _weights_path(eps: float, steps: int) -> str:
    return os.path.join(common.RESULTS_DIR, f"small_cnn_mnist_at_{eps:g}_{steps}.npz")


def _load_mnist(split: str, limit: int):
    import numpy as np

    from advcore import data

    ds = data.load_split("mnist", split, limit=limit)
    return np.asarray(ds.images, np.float32) / 255.0, np.asarray(ds.labels, np.int32)


def _synthetic(n: int, shape, seed: int):
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.uniform(0, 1, (n,) + tuple(shape)).astype(np.float32), \
        rng.integers(0, 10, n).astype(np.int32)


def train_small_cnn(eps: float, steps: int, log=print):
    """Briefly PGD-3 adversarially trained SmallCNN params (cached on disk)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from advcore.models import build_model, init_variables
    from advcore.variables import ModelVars, apply_eval, apply_train

    model = build_model("small_cnn", 10)
    params = init_variables(model, jax.random.key(0), (1, 28, 28, 1))["params"]
    path = _weights_path(eps, steps)
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    names = ["/".join(k.key for k in p) for p, _ in flat]
    if os.path.exists(path):
        stored = np.load(path)
        return jax.tree_util.tree_unflatten(treedef, [jnp.asarray(stored[n]) for n in names])

    x_all, y_all = _load_mnist("train", 20000)
    x_all, y_all = jnp.asarray(x_all), jnp.asarray(y_all)
    tx = optax.adam(1e-3)

    def ce(p, x, y, key):  # key None: eval mode (the PGD inner loop)
        mv = ModelVars(params=p, batch_stats={})
        logits = (apply_eval(model, mv, x) if key is None
                  else apply_train(model, mv, x, dropout_key=key)[0])
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def step(p, opt_state, i, key):
        idx = (jnp.arange(128) + 128 * i) % x_all.shape[0]
        x, y = x_all[idx], y_all[idx]
        k_init, k_drop = jax.random.split(key)
        x_adv = jnp.clip(x + jax.random.uniform(k_init, x.shape, minval=-eps, maxval=eps), 0, 1)
        for _ in range(3):  # PGD-3, step eps / 2
            g = jax.grad(lambda xa: ce(p, xa, y, None))(x_adv)
            x_adv = jnp.clip(jnp.clip(x_adv + eps / 2 * jnp.sign(g), x - eps, x + eps), 0, 1)
        loss, g = jax.value_and_grad(ce)(p, x_adv, y, k_drop)
        updates, opt_state = tx.update(g, opt_state, p)
        return optax.apply_updates(p, updates), opt_state, loss

    opt_state = tx.init(params)
    start = time.time()
    for i in range(steps):
        params, opt_state, loss = step(params, opt_state, i, jax.random.key(i))
        if i % 100 == 0:
            log(f"  AT step {i}: loss {float(loss):.3f} ({time.time() - start:.0f} s)")
    os.makedirs(common.RESULTS_DIR, exist_ok=True)
    leaves = jax.tree_util.tree_leaves(params)
    np.savez(path, **{n: np.asarray(v) for n, v in zip(names, leaves)})
    return params


def build(model_name: str, n: int, spec: dict):
    """``(logits_fn_of_params, params, x, y, eps, info)`` for a benchmark model."""
    import jax
    import jax.numpy as jnp

    from advcore.models import build_model, init_variables
    from advcore.variables import ModelVars, apply_eval

    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731
    if model_name == "small_cnn":
        eps = spec.get("eps") or 0.3
        model = build_model("small_cnn", 10)
        try:
            x, y = _load_mnist("test", n)
            params = train_small_cnn(eps, spec["train_steps"], log)
            info = {"data": "mnist test[:n]", "weights": f"PGD-3 AT {spec['train_steps']} steps"}
        except Exception as err:  # noqa: BLE001 -- no MNIST: synthetic fallback
            x, y = _synthetic(n, (28, 28, 1), 0)
            params = init_variables(model, jax.random.key(0), (1, 28, 28, 1))["params"]
            info = {"data": f"synthetic ({type(err).__name__})", "weights": "init"}
        variables = lambda p: {"params": p}  # noqa: E731
    elif model_name == "wrn16_4":
        eps = spec.get("eps") or 8.0 / 255.0
        model = build_model("wrn", 10, depth=16, widen_factor=4)
        v = init_variables(model, jax.random.key(0), (1, 32, 32, 3))
        params = v
        x, _ = _synthetic(n, (32, 32, 3), 1)
        y = jnp.argmax(apply_eval(model, ModelVars.from_variables(v), jnp.asarray(x)), -1)
        info = {"data": "uniform noise labelled by the model", "weights": "untrained init"}
        variables = lambda p: p  # noqa: E731
    else:
        raise ValueError(f"model must be one of {MODELS}, got {model_name!r}")

    def logits_fn_of(p):  # as the library applies a model: with the backend's rewrites
        return lambda z: apply_eval(model, ModelVars.from_variables(variables(p)), z)

    return logits_fn_of, params, jnp.asarray(x), jnp.asarray(y), float(eps), info


def _export_eval_data(x, y, eps, logits_fn) -> None:
    """Writes the evaluated images, labels, eps and JAX logits for the PyTorch
    cross-check (``bench/crosscheck_autoattack_torch.py``)."""
    import numpy as np

    os.makedirs(common.RESULTS_DIR, exist_ok=True)
    x = np.asarray(x)
    # A fixed APGD start (upstream's L-inf init) for the single-run comparison.
    u = np.random.default_rng(0).uniform(-1, 1, x.shape).astype(np.float32)
    u_max = np.abs(u).reshape(len(x), -1).max(1).reshape(-1, 1, 1, 1)
    x_init = np.clip(x + eps * u / (u_max + 1e-12), 0, 1).astype(np.float32)
    np.savez(os.path.join(common.RESULTS_DIR, "small_cnn_mnist_eval.npz"), x=x,
             y=np.asarray(y), eps=np.float32(eps), logits=np.asarray(logits_fn(x)),
             x_init=x_init)


def compare_single_run(torch_npz: str, train_steps: int) -> dict:
    """One APGD run per loss from the same start as the PyTorch reference
    (``crosscheck_autoattack_torch.py --single_run_out``); agreement figures."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from advcore.attacks.apgd import _make_loss_grad, _single_run

    d = np.load(os.path.join(common.RESULTS_DIR, "small_cnn_mnist_eval.npz"))
    ref = np.load(torch_npz)
    x, y, eps = jnp.asarray(d["x"]), jnp.asarray(d["y"]), float(d["eps"])
    logits_fn_of, params, *_ = build("small_cnn", len(d["y"]),
                                     {"train_steps": train_steps, "eps": eps})
    f = logits_fn_of(params)
    out = {}
    for loss, ours in (("ce", "ce"), ("dlr", "dlr"), ("dlr-targeted", "dlr_targeted")):
        t = jnp.argsort(f(x), axis=-1)[:, -2]
        # Params and data are arguments, not constants: XLA would try to
        # constant-fold the whole network otherwise.
        run = jax.jit(lambda p, x, y, t, x0, ours=ours: _single_run(
            _make_loss_grad(logits_fn_of(p), ours, False, 1), x, y, t, jax.random.key(0),
            eps=eps, norm="linf", num_iters=100, rho=0.75, unroll=1, x_init=x0))
        x_best, acc, loss_best, x_best_adv = (
            np.asarray(a) for a in run(params, x, y, t, jnp.asarray(d["x_init"])))
        r_acc = ref[f"{loss}/acc"].astype(bool)
        out[loss] = {
            "robust_jax": float(acc.mean()), "robust_torch": float(r_acc.mean()),
            "flags_agree": float(np.mean(acc == r_acc)),
            "loss_best_max_rel_diff": float(np.max(np.abs(loss_best - ref[f"{loss}/loss_best"])
                                                   / (np.abs(ref[f"{loss}/loss_best"]) + 1e-6))),
            "x_best_max_abs_diff": float(np.abs(x_best - ref[f"{loss}/x_best"]).max()),
            "x_best_identical_frac": float(np.mean(np.all(
                np.abs(x_best - ref[f"{loss}/x_best"]) < 1e-5, axis=(1, 2, 3)))),
        }
    return out


# --------------------------------------------------------------------------
# One configuration (child process).
# --------------------------------------------------------------------------


def run_child(spec: dict) -> dict:
    import jax
    import jax.numpy as jnp

    from advcore.attacks.autoattack import autoattack, version_attacks
    from advcore.attacks.pgd import pgd

    logits_fn_of, params, x, y, eps, info = build(spec["model"], spec["n"], spec)
    record: dict[str, Any] = {**spec, **info, "eps": eps}
    key = jax.random.key(0)

    if spec["model"] == "small_cnn":
        _export_eval_data(x, y, eps, logits_fn_of(params))
    stages = version_attacks(spec["aa_version"])
    if spec["attack"] == "pgd20":
        # The usual CIFAR PGD-20 evaluation (step 0.003 at eps 0.031), scaled to eps.
        def attack(p, x, y, k):
            return pgd(logits_fn_of(p), x, y, k, eps=eps, step_size=eps / 10, num_steps=20,
                       unroll=spec["unroll"])
    else:
        if spec["attack"] != f"aa_{spec['aa_version']}":
            stages = (spec["attack"],)  # one AutoAttack stage alone, on the clean points

        def attack(p, x, y, k):
            return autoattack(logits_fn_of(p), x, y, k, eps=eps, version=spec["aa_version"],
                              attacks_to_run=stages, compact=spec["compact"],
                              unroll=spec["unroll"], return_details=True)

    devices = spec["devices"]
    jitted = jax.jit(attack)
    if devices > 1:
        # As advcore.evaluate runs AutoAttack (shard_local): each simulated
        # CPU device attacks its own shard with its own folded key. PGD-20 is
        # run the same way here (no data-dependent cost: only the layout).
        from jax.sharding import PartitionSpec as P

        from advcore import parallel

        mesh = parallel.make_mesh(jax.devices()[:devices])
        if spec["n"] % devices:
            raise ValueError(f"n={spec['n']} must be divisible by devices={devices}")

        def local(p, x, y, k):
            out = attack(p, x, y, jax.random.fold_in(k, jax.lax.axis_index("data")))
            if spec["attack"] == "pgd20":
                return out
            # Per-shard details are shard means; only x_adv is kept per point.
            x_adv, details = out
            return x_adv, {name: jax.lax.pmean(v, "data") for name, v in details.items()
                           if name != "robust"}

        out_specs = P("data") if spec["attack"] == "pgd20" else (P("data"), P())
        jitted = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(), P("data"), P("data"), P()),
                                       out_specs=out_specs, check_vma=False))
        x, y = (jax.device_put(a, parallel.data_sharded(mesh)) for a in (x, y))
        params = jax.device_put(params, parallel.replicated(mesh))
    compiled, timings, _ = common.compile_timed(jitted, params, x, y, key)
    record.update(timings)
    for r in range(spec["warmup"]):
        common.block(compiled(params, x, y, jax.random.key(r)))
    load_before = common.loadavg()
    best_wall, best_cpu, out = float("inf"), float("inf"), None
    for r in range(spec["steps"]):  # the fastest of the timed runs
        cpu0, t0 = time.process_time(), time.perf_counter()
        out = common.block(compiled(params, x, y, jax.random.key(spec["warmup"] + r)))
        best_wall = min(best_wall, time.perf_counter() - t0)
        best_cpu = min(best_cpu, time.process_time() - cpu0)
    cores = os.cpu_count() or 1
    record.update(run_s=best_wall, img_per_s=spec["n"] / best_wall,
                  img_per_cpu_s=spec["n"] / (best_cpu / cores), cpu_s=best_cpu,
                  loadavg_before=load_before, loadavg_after=common.loadavg(),
                  peak_rss_mib=common.peak_rss_mib())
    f = logits_fn_of(params)
    acc = lambda z: float(jnp.mean(jnp.argmax(f(z), -1) == y))  # noqa: E731
    record["clean_acc"] = acc(x)
    if spec["attack"] == "pgd20":
        record["robust_acc"] = acc(out)
    else:
        x_adv, details = out
        record["robust_acc"] = acc(x_adv)
        record["stages"] = {k: float(details[k]) for k in ("clean",) + tuple(stages)}
        linf = jnp.max(jnp.abs(x_adv - x).reshape(x.shape[0], -1), axis=1)
        record["max_linf"] = float(jnp.max(linf))
    return record


# --------------------------------------------------------------------------
# Driver.
# --------------------------------------------------------------------------


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--attacks", default="pgd20,aa",
                        help="pgd20, aa (the version's cascade) and/or single AutoAttack "
                             "stages apgd-ce, apgd-t, fab-t, square (clean points only)")
    parser.add_argument("--n", type=int, default=64, help="images (small_cnn)")
    parser.add_argument("--n_wrn", type=int, default=8, help="images (wrn16_4)")
    parser.add_argument("--aa_version", default="standard")
    parser.add_argument("--compact", default="4",
                        help="comma list of AutoAttack bucket counts (small_cnn)")
    parser.add_argument("--compact_wrn", default="1",
                        help="the same for wrn16_4 (1 keeps its compile time down)")
    parser.add_argument("--unroll", type=int, default=1)
    parser.add_argument("--train_steps", type=int, default=TRAIN_STEPS)
    parser.add_argument("--eps", type=float, default=None, help="default 0.3 / (8/255)")
    parser.add_argument("--compare_single_run", default=None,
                        help="npz from crosscheck_autoattack_torch.py --single_run_out: "
                             "compare one APGD run per loss from the same start, then exit")


def specs(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[dict]:
    out = []
    for model, attack in itertools.product(common.split_list(args.models),
                                           common.split_list(args.attacks)):
        if model not in MODELS:
            parser.error(f"--models: unknown {model!r}; valid: {', '.join(MODELS)}")
        compact_arg = args.compact if model == "small_cnn" else args.compact_wrn
        compacts = common.split_list(compact_arg, int) if attack != "pgd20" else [1]
        n = args.n if model == "small_cnn" else args.n_wrn
        for devices in common.split_list(args.devices, int):
            if n % devices:
                parser.error(f"--devices: {devices} does not divide the {n} images of {model}")
        for compact in compacts:
            out.append({"model": model, "attack": f"aa_{args.aa_version}" if attack == "aa"
                        else attack, "aa_version": args.aa_version, "n": n, "compact": compact,
                        "unroll": args.unroll, "train_steps": args.train_steps, "eps": args.eps})
    return out


BENCHMARK = common.Benchmark(
    name="bench_attacks", description=__doc__.split("\n")[0], columns=COLUMNS,
    add_options=add_options, specs=specs, run_child=run_child, steps=1, warmup=0,
    details="run_s,clean_acc,robust_acc,stages",
    describe=lambda s: f"{s['model']} {s['attack']} n={s['n']} compact={s['compact']}")


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    single = argparse.ArgumentParser(add_help=False)
    single.add_argument("--compare_single_run", default=None)
    single.add_argument("--train_steps", type=int, default=TRAIN_STEPS)
    known, _ = single.parse_known_args(argv)
    if known.compare_single_run and common.child_spec(argv) is None:
        # A comparison with the PyTorch reference, not a timing: no grid.
        result = compare_single_run(known.compare_single_run, known.train_steps)
        print(json.dumps(result, indent=2))
        return
    common.run_benchmark(BENCHMARK, argv)


if __name__ == "__main__":
    main()
