"""Robust-evaluation throughput: PGD-20 (default) on a WRN, random 32x32x3 inputs.

    python -m bench.bench_eval                                  # WRN-16-4, B=256, PGD-20
    python -m bench.bench_eval --batch=256 --steps=2 --unroll=1,full
    python -m bench.bench_eval --attacks=pgd20 --conv_impl=plain,canonical

Measures the program ``advcore.evaluate`` runs per batch (attack + final
forward + correctness, one jit over the ``('data',)`` mesh), with the model's
random initial weights: PGD's cost does not depend on the weights. (For
AutoAttack, whose cost depends on how many points stay robust, random weights
would flatter the figure: ``--attacks=aa_standard`` runs but says so.)
Each configuration runs in its own subprocess; JSON goes to
``bench/results/bench_eval_<date>.json``.
"""

from __future__ import annotations

import argparse
import itertools
import sys

from bench import common

MODELS = {
    "wrn16_4": ("wrn", {"depth": 16, "widen_factor": 4}, "WRN-16-4"),
    "wrn34_10": ("wrn", {"depth": 34, "widen_factor": 10}, "WRN-34-10"),
    "resnet18": ("resnet18_lbgat", {}, "ResNet18 (LBGAT)"),
}

COLUMNS = [
    ("label", "model", 0),
    ("attack", "attack", 0),
    ("batch", "B", 0),
    ("precision", "precision", 0),
    ("unroll", "unroll", 0),
    ("conv_impl", "conv VJP", 0),
    ("compile_s", "compile s", 1),
    ("img_per_s", "img/s (wall)", 2),
    ("img_per_s_best_step", "img/s (best batch)", 2),
    ("img_per_cpu_s", "img/s (CPU-time est.)", 2),
    ("img_per_s_idle_est", "img/s (idle est.)", 2),
    ("achieved_gflops", "GFLOP/s (wall)", 1),
    ("achieved_gflops_cpu_est", "GFLOP/s (CPU est.)", 0),
    ("fraction_of_peak", "of 340 peak (wall)", 3),
    ("peak_rss_mib", "peak RSS MiB", 0),
    ("loadavg_before", "load", 1),
]


def run_child(spec: dict) -> dict:
    import jax
    import numpy as np

    from advcore import evaluate as eval_lib
    from advcore import parallel
    from advcore.attacks import make_attack
    from advcore.models import build_model, conv_ops, init_variables

    name, kwargs, label = MODELS[spec["model"]]
    if spec["precision"] == "bfloat16":
        kwargs = {**kwargs, "dtype": "bfloat16"}
    model = build_model(name, 10, **kwargs)
    variables = init_variables(model, jax.random.PRNGKey(0), (1, 32, 32, 3))
    mesh = parallel.make_mesh()
    variables = parallel.replicate(variables, mesh)

    def apply_fn(v, x):
        return model.apply(v, x, train=False)

    record = dict(spec, label=label, backend=jax.default_backend(),
                  conv_impl=conv_ops.conv_impl())
    overrides = {}
    num_steps = None
    if spec["attack"].startswith(("pgd", "cw")):
        num_steps = int("".join(ch for ch in spec["attack"] if ch.isdigit()) or 0) or None
        if spec["unroll"] != "default":
            overrides["unroll"] = num_steps if spec["unroll"] is True else int(spec["unroll"])
    record["unroll"] = "full" if spec["unroll"] is True else spec["unroll"]
    attack = make_attack(spec["attack"], **overrides)
    fn = eval_lib._make_eval_fn(apply_fn, attack, mesh)

    rng = np.random.default_rng(0)
    b = spec["batch"]
    x = rng.uniform(0, 1, (b, 32, 32, 3)).astype(np.float32)
    y = rng.integers(0, 10, (b,)).astype(np.int32)
    xs, ys = parallel.shard_host_batch((x, y), mesh)
    key = jax.random.PRNGKey(1)
    compiled, compile_s, lowered = common.compile_timed(fn, variables, xs, ys, key)
    record["compile_s"] = compile_s

    if spec["flops"] and num_steps:
        if overrides.get("unroll") == num_steps:
            record["flops_per_step"] = common.flops_of(compiled)
            record["flops_source"] = "compiled (fully unrolled)"
        else:
            full = eval_lib._make_eval_fn(
                apply_fn, make_attack(spec["attack"], unroll=num_steps), mesh)
            record["flops_per_step"] = common.flops_of(full.lower(variables, xs, ys, key))
            record["flops_source"] = "lowered HLO of the fully unrolled variant"

    def run_batch(carry):
        return compiled(variables, xs, ys, key)

    figures, ok = common.timed_steps(run_batch, None, steps=spec["steps"],
                                     warmup=spec["warmup"], images_per_step=b)
    record.update(figures)
    record["robust_acc_random_weights"] = float(np.mean(parallel.fetch_to_host(ok)))
    record["peak_rss_mib"] = common.peak_rss_mib()
    common.add_flop_rates(record, spec["peak_gflops"] or common.default_peak(record["backend"]))
    if not spec["attack"].startswith(("pgd", "cw", "fgsm")):
        record["note"] = "random weights: attack cost depends on robustness"
    return record


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if common.serve_child(argv, run_child):
        return

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="wrn16_4", help=f"comma-separated: {', '.join(MODELS)}")
    parser.add_argument("--attacks", default="pgd20", help="advcore.attacks.make_attack names")
    parser.add_argument("--batch", default="256")
    parser.add_argument("--precision", default="float32")
    parser.add_argument("--unroll", default="default",
                        help="comma-separated attack unroll values (ints, 'full') or 'default'")
    parser.add_argument("--conv_impl", default="",
                        help="comma-separated advcore.models.conv_ops implementations")
    parser.add_argument("--steps", type=int, default=3, help="timed batches")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--no_flops", action="store_true")
    parser.add_argument("--peak_gflops", type=float, default=0.0)
    parser.add_argument("--xla_flags", default="")
    parser.add_argument("--no_save", action="store_true")
    args = parser.parse_args(argv)

    import os

    unrolls = ["default"] if args.unroll == "default" else [
        True if u == "full" else int(u) for u in args.unroll.split(",") if u]
    env = {}
    if args.xla_flags:
        env["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + args.xla_flags).strip()
    records = []
    grid = itertools.product(
        [m for m in args.models.split(",") if m], [a for a in args.attacks.split(",") if a],
        [int(b) for b in args.batch.split(",") if b], [p for p in args.precision.split(",") if p],
        unrolls, [c for c in args.conv_impl.split(",") if c] or [""])
    for model, attack, batch, precision, unroll, conv_impl in grid:
        if model not in MODELS:
            parser.error(f"--models: unknown {model!r}; valid: {', '.join(MODELS)}")
        child_env = dict(env)
        if conv_impl:
            child_env["ADVCORE_CONV_IMPL"] = conv_impl
        spec = dict(model=model, attack=attack, batch=batch, precision=precision, unroll=unroll,
                    steps=args.steps, warmup=args.warmup, flops=not args.no_flops,
                    peak_gflops=args.peak_gflops)
        print(f"... {model} {attack} B={batch} {precision} unroll={unroll} "
              f"conv={conv_impl or 'default'}", file=sys.stderr, flush=True)
        common.run_and_report("bench.bench_eval", spec, records, child_env)
    common.finish("bench_eval", records, argv, COLUMNS, save=not args.no_save)


if __name__ == "__main__":
    main()
