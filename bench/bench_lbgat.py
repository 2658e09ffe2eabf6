"""LBGAT train-step throughput: lbgat_trades, PGD-10 KL inner loop, random 32x32x3.

    python -m bench.bench_lbgat                                   # the default grid
    python -m bench.bench_lbgat --models=wrn16_4 --batch=32 --steps=3 --unroll=1,2,5,full
    python -m bench.bench_lbgat --models=wrn34_10 --batch=32 --steps=3 --warmup=1
    python -m bench.bench_lbgat --precision=bfloat16 --models=wrn16_4 --batch=32
    python -m bench.bench_lbgat --models=wrn16_4 --batch=32 --precision=float32 \
        --rewrites=on,off --devices=1,2 --rounds=3               # levers, interleaved
    python -m bench.bench_lbgat --models=wrn16_4 --batch=32 --precision=float32 \
        --compilation_cache=fresh --rounds=2                     # cold vs cached compile

Model pairs (robust / natural): ``wrn16_4`` = WRN-16-4 / WRN-16-4,
``wrn34_10`` = WRN-34-10 / LBGAT's ResNet18 (the paper's CIFAR setting).

The step is the library's own (``lbgat_jax.step.make_train_step``: one jit
with the PGD loop, both models' forward/backward and the SGD update, state
donated) built directly from ``lbgat_jax.state`` on a synthetic batch, so no
dataset is needed and input loading is not measured. Each configuration runs
in its own subprocess (see ``bench/common.py``, which also defines the
options every benchmark shares: ``--rewrites``, ``--devices``, ``--xla_flags``,
``--rounds``, ``--compilation_cache``, ...); results go to
``bench/results/bench_lbgat_<date>.json`` and the table is printed. Run
``python -m bench.common`` afterwards to refresh ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import itertools
import time

from bench import common

PAIRS = {
    "wrn16_4": ({"name": "wrn", "kwargs": {"depth": 16, "widen_factor": 4}},
                {"name": "wrn", "kwargs": {"depth": 16, "widen_factor": 4}}),
    "wrn34_10": ({"name": "wrn", "kwargs": {"depth": 34, "widen_factor": 10}},
                 {"name": "resnet18_lbgat", "kwargs": {}}),
}
PAIR_LABEL = {"wrn16_4": "WRN-16-4 / WRN-16-4", "wrn34_10": "WRN-34-10 / ResNet18"}

COLUMNS = [
    ("label", "models", 0),
    ("batch", "B", 0),
    ("precision", "precision", 0),
    ("unroll", "unroll", 0),
    *common.CONFIG_COLUMNS,
    ("variant", "variant", 0),
    common.ROUND_COLUMN,
    *common.STEP_FIGURE_COLUMNS,
]


def parse_unroll(token: str):
    return True if token in ("full", "true", "True") else int(token)


def build_step(spec: dict):
    """(compiled-able jitted step, state, batch) for one configuration."""
    import jax
    import numpy as np

    from advcore import optim as optim_lib
    from advcore import parallel
    from configs.lbgat import cifar10
    from lbgat_jax import state as state_lib
    from lbgat_jax import step as step_lib
    from lbgat_jax.methods import get_method

    config = cifar10.get_config(spec["method"])
    robust, natural = PAIRS[spec["models"]]
    config.model.robust.name = robust["name"]
    config.model.robust.kwargs = robust["kwargs"]
    config.model.natural.name = natural["name"]
    config.model.natural.kwargs = natural["kwargs"]
    config.precision = spec["precision"]
    config.batch_size = spec["batch"]
    config.attack.num_steps = spec["attack_steps"]
    num_steps = spec["attack_steps"]
    unroll = spec["unroll"]
    if unroll != "default":
        # unroll=True is spelled as the trip count (the config field is an int).
        config.attack.unroll = num_steps if unroll is True else int(unroll)

    method = get_method(config.method)
    models = state_lib.build_models(config, method, 10)
    schedule = optim_lib.epoch_piecewise_schedule(
        config.optim.lr, 390, tuple(config.optim.decay_epochs), config.optim.decay_factor,
        config.optim.warmup_epochs, config.optim.warmup_lr)
    tx = optim_lib.torch_sgd(schedule, config.optim.momentum, config.optim.weight_decay,
                             config.optim.nesterov)
    mesh = parallel.make_mesh()
    state = state_lib.create_train_state(config, models, tx, jax.random.PRNGKey(0),
                                         (32, 32, 3))
    state = parallel.replicate(state, mesh)
    rng = np.random.default_rng(0)
    batch = parallel.shard_batch({
        "image": rng.uniform(0, 1, (spec["batch"], 32, 32, 3)).astype(np.float32),
        "label": rng.integers(0, 10, (spec["batch"],)).astype(np.int32),
    }, mesh)
    train_step = step_lib.make_train_step(config, method, models, tx, schedule, mesh)
    return train_step, state, batch, config, (method, models, tx, schedule, mesh)


def run_child(spec: dict) -> dict:
    import jax

    from lbgat_jax import step as step_lib

    record = dict(spec)
    record["label"] = PAIR_LABEL[spec["models"]]
    record["unroll"] = "full" if spec["unroll"] is True else spec["unroll"]
    setup_start = time.perf_counter()
    train_step, state, batch, config, extra = build_step(spec)
    record["setup_s"] = time.perf_counter() - setup_start
    compiled, timings, lowered = common.compile_timed(train_step, state, batch)
    record.update(timings)
    record["backend"] = jax.default_backend()
    record["effective_unroll"] = config.attack.unroll
    if spec["unroll"] == "default":
        record["unroll"] = f"default ({record['effective_unroll']})"

    # FLOPs: XLA counts a while body once, so take them from the fully
    # unrolled program's HLO unless the measured program is already unrolled.
    if spec["flops"] != "none":
        if record["effective_unroll"] == config.attack.num_steps:
            record["flops_per_step"] = common.flops_of(compiled)
            record["flops_source"] = "compiled (fully unrolled)"
        else:
            method, models, tx, schedule, mesh = extra
            full = config.copy_and_resolve_references()
            full.attack.unroll = full.attack.num_steps
            jitted = step_lib.make_train_step(full, method, models, tx, schedule, mesh)
            if spec["flops"] == "compiled":
                record["flops_per_step"] = common.flops_of(jitted.lower(state, batch).compile())
                record["flops_source"] = "compiled fully unrolled variant"
            else:
                record["flops_per_step"] = common.flops_of(jitted.lower(state, batch))
                record["flops_source"] = "lowered HLO of the fully unrolled variant"

    # The first step after compilation (the first of the --warmup steps) is
    # timed apart: with the compilation cache, set-up + compile + first step
    # is the wait before training runs.
    first_start = time.perf_counter()
    state, metrics = common.block(compiled(state, batch))
    record["first_step_s"] = time.perf_counter() - first_start

    def run_step(carry):
        return compiled(carry[0], batch)

    figures, (state, metrics) = common.timed_steps(
        run_step, (state, metrics), steps=spec["steps"], warmup=max(spec["warmup"] - 1, 0),
        images_per_step=spec["batch"])
    figures["warmup"] = spec["warmup"]
    record.update(figures)
    record["loss"] = float(metrics["loss"])
    record["peak_rss_mib"] = common.peak_rss_mib()
    common.add_flop_rates(record, spec["peak_gflops"] or common.default_peak(record["backend"]))
    return record


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", default="wrn16_4,wrn34_10",
                        help=f"comma-separated pairs: {', '.join(PAIRS)}")
    parser.add_argument("--batch", default="32,128", help="comma-separated batch sizes")
    parser.add_argument("--max_batch_wrn34_10", type=int, default=32,
                        help="skip wrn34_10 above this batch (slow on CPU); 0 = no limit")
    parser.add_argument("--precision", default="float32,bfloat16")
    parser.add_argument("--unroll", default="default",
                        help="comma-separated attack.unroll values (ints, 'full'), or "
                             "'default' = the config's per-backend default")
    parser.add_argument("--method", default="lbgat_trades")
    parser.add_argument("--attack_steps", type=int, default=10)
    parser.add_argument("--flops", default="lowered", choices=["lowered", "compiled", "none"],
                        help="how to count FLOPs of a rolled loop (see bench/common.py)")


def specs(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[dict]:
    unrolls = ["default"] if args.unroll == "default" else common.split_list(
        args.unroll, parse_unroll)
    out = []
    for models, batch, precision, unroll in itertools.product(
            common.split_list(args.models), common.split_list(args.batch, int),
            common.split_list(args.precision), unrolls):
        if models not in PAIRS:
            parser.error(f"--models: unknown pair {models!r}; valid: {', '.join(PAIRS)}")
        if (models == "wrn34_10" and args.max_batch_wrn34_10
                and batch > args.max_batch_wrn34_10):
            continue
        out.append(dict(models=models, batch=batch, precision=precision, unroll=unroll,
                        method=args.method, attack_steps=args.attack_steps, flops=args.flops))
    return out


BENCHMARK = common.Benchmark(
    name="bench_lbgat", description=__doc__.split("\n")[0], columns=COLUMNS,
    add_options=add_options, specs=specs, run_child=run_child, steps=5, warmup=1,
    describe=lambda s: f"{s['models']} B={s['batch']} {s['precision']} unroll={s['unroll']}")


def main(argv=None) -> None:
    common.run_benchmark(BENCHMARK, argv)


if __name__ == "__main__":
    main()
