"""Robust-evaluation throughput: PGD-20 (default) on a WRN, random 32x32x3 inputs.

    python -m bench.bench_eval                                  # WRN-16-4, B=256, PGD-20
    python -m bench.bench_eval --batch=256 --steps=2 --unroll=1,full
    python -m bench.bench_eval --attacks=pgd20 --rewrites=on,off
    python -m bench.bench_eval --batch=64 --devices=1,2 --rounds=3  # interleaved rounds

Measures the program ``advcore.evaluation`` runs per batch (attack + final
forward + correctness, one jit over the ``('data',)`` mesh), with the model
applied as the library applies it (``advcore.variables.apply_eval``, hence
with the backend's model rewrites) and its random initial weights: PGD's
cost does not depend on the weights. (For AutoAttack, whose cost depends on
how many points stay robust, random weights would flatter the figure:
``--attacks=aa_standard`` runs but says so.) Each configuration runs in its
own subprocess; the options every benchmark shares are in ``bench/common.py``;
JSON goes to ``bench/results/bench_eval_<date>.json``.
"""

from __future__ import annotations

import argparse
import itertools
import time

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
    *common.CONFIG_COLUMNS,
    ("variant", "variant", 0),
    common.ROUND_COLUMN,
    *common.STEP_FIGURE_COLUMNS,
]


def run_child(spec: dict) -> dict:
    import jax
    import numpy as np

    from advcore import evaluation as eval_lib
    from advcore import parallel
    from advcore.attacks import make_attack
    from advcore.models import build_model, init_variables
    from advcore.variables import ModelVars, apply_eval

    setup_start = time.perf_counter()
    name, kwargs, label = MODELS[spec["model"]]
    if spec["precision"] == "bfloat16":
        kwargs = {**kwargs, "dtype": "bfloat16"}
    model = build_model(name, 10, **kwargs)
    variables = init_variables(model, jax.random.PRNGKey(0), (1, 32, 32, 3))
    mesh = parallel.make_mesh()
    variables = parallel.replicate(variables, mesh)

    def apply_fn(v, x):
        return apply_eval(model, ModelVars.from_variables(v), x)

    record = dict(spec, label=label, backend=jax.default_backend())
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
    record["setup_s"] = time.perf_counter() - setup_start
    compiled, timings, lowered = common.compile_timed(fn, variables, xs, ys, key)
    record.update(timings)

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

    # The first batch after compilation (the first of the --warmup batches)
    # is timed apart, as in bench_lbgat.
    first_start = time.perf_counter()
    common.block(run_batch(None))
    record["first_step_s"] = time.perf_counter() - first_start
    figures, ok = common.timed_steps(run_batch, None, steps=spec["steps"],
                                     warmup=max(spec["warmup"] - 1, 0), images_per_step=b)
    figures["warmup"] = spec["warmup"]
    record.update(figures)
    record["robust_acc_random_weights"] = float(np.mean(parallel.fetch_to_host(ok)))
    record["peak_rss_mib"] = common.peak_rss_mib()
    common.add_flop_rates(record, spec["peak_gflops"] or common.default_peak(record["backend"]))
    if not spec["attack"].startswith(("pgd", "cw", "fgsm")):
        record["note"] = "random weights: attack cost depends on robustness"
    return record


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", default="wrn16_4", help=f"comma-separated: {', '.join(MODELS)}")
    parser.add_argument("--attacks", default="pgd20", help="advcore.attacks.make_attack names")
    parser.add_argument("--batch", default="256")
    parser.add_argument("--precision", default="float32")
    parser.add_argument("--unroll", default="default",
                        help="comma-separated attack unroll values (ints, 'full') or 'default'")
    parser.add_argument("--no_flops", action="store_true")


def specs(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[dict]:
    unrolls = ["default"] if args.unroll == "default" else common.split_list(
        args.unroll, lambda u: True if u == "full" else int(u))
    out = []
    for model, attack, batch, precision, unroll in itertools.product(
            common.split_list(args.models), common.split_list(args.attacks),
            common.split_list(args.batch, int), common.split_list(args.precision), unrolls):
        if model not in MODELS:
            parser.error(f"--models: unknown {model!r}; valid: {', '.join(MODELS)}")
        out.append(dict(model=model, attack=attack, batch=batch, precision=precision,
                        unroll=unroll, flops=not args.no_flops))
    return out


BENCHMARK = common.Benchmark(
    name="bench_eval", description=__doc__.split("\n")[0], columns=COLUMNS,
    add_options=add_options, specs=specs, run_child=run_child, steps=3, warmup=1,
    describe=lambda s: f"{s['model']} {s['attack']} B={s['batch']} {s['precision']} "
                       f"unroll={s['unroll']}")


def main(argv=None) -> None:
    common.run_benchmark(BENCHMARK, argv)


if __name__ == "__main__":
    main()
