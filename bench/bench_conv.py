"""One convolution layer: forward, input gradient and weight gradient, in GFLOP/s.

    python -m bench.bench_conv                                  # a 3x3 conv + WRN-16-4 shortcuts
    python -m bench.bench_conv --rewrites=off,on --rounds=3     # JAX's own forms vs the backend's
    python -m bench.bench_conv --xla_flags=none \\
        --xla_flags=--xla_cpu_experimental_ynn_fusion_type=individual_dot
    python -m bench.bench_conv --shapes=64:32:256:256:1:1:0 --dtype=float32,bfloat16

The layer is the library's own ``advcore.models.layers.Conv2d`` (no bias),
applied inside ``advcore.backend.model_rewrites`` as the runtime applies it,
so ``--rewrites`` chooses between JAX's plain convolution and the CPU forms
of ``advcore.backend``. Each program is jitted apart and timed as the median
of ``--steps`` calls after ``--warmup`` untimed ones:

* ``fwd``: the convolution;
* ``dx``: its input gradient (a VJP), what an attack step needs;
* ``dw``: its weight gradient, what a training step needs as well;
* ``loop dx``: one iteration of a ``fori_loop`` of input-gradient steps, as
  in a PGD attack (XLA:CPU treats convolutions inside a loop body apart).

GFLOP/s counts 2 x B x Ho x Wo x Cout x k x k x Cin per program. The
``img/s`` figure (for the interleaved-rounds summary) is B over the sum of
the fwd, dx and dw times. Shapes are ``B:H:Cin:Cout:k:stride:pad`` (square
images and kernels); the defaults are a 3x3 64->64 convolution at 32x32
(WRN-16-4's first group) and WRN-16-4's three 1x1 shortcuts.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time

from bench import common

DEFAULT_SHAPES = "32:32:64:64:3:1:1,32:32:16:64:1:1:0,32:32:64:128:1:2:0,32:16:128:256:1:2:0"
LOOP_ITERATIONS = 5

COLUMNS = [
    ("shape", "B:H:Cin:Cout:k:stride:pad", 0),
    ("dtype", "dtype", 0),
    *common.CONFIG_COLUMNS,
    common.ROUND_COLUMN,
    ("fwd_ms", "fwd ms", 2),
    ("fwd_gflops", "fwd GFLOP/s", 0),
    ("dx_ms", "dx ms", 2),
    ("dx_gflops", "dx GFLOP/s", 0),
    ("dw_ms", "dw ms", 2),
    ("dw_gflops", "dw GFLOP/s", 0),
    ("loop_dx_ms", "loop dx ms/iter.", 2),
    ("loadavg_before", "load", 1),
]


def parse_shape(text: str) -> dict:
    parts = text.split(":")
    if len(parts) != 7:
        raise ValueError(f"shape must be B:H:Cin:Cout:k:stride:pad, got {text!r}")
    batch, size, cin, cout, k, stride, pad = (int(p) for p in parts)
    return dict(batch=batch, size=size, cin=cin, cout=cout, k=k, stride=stride, pad=pad)


def median_seconds(fn, args: tuple, steps: int, warmup: int) -> float:
    for _ in range(warmup):
        common.block(fn(*args))
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        common.block(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_child(spec: dict) -> dict:
    import jax
    import jax.numpy as jnp

    from advcore import backend
    from advcore.models import layers

    s = parse_shape(spec["shape"])
    dtype = jnp.dtype(spec["dtype"])
    layer = layers.Conv2d(s["cout"], s["k"], s["stride"], s["pad"], use_bias=False, dtype=dtype)
    x = jax.random.uniform(jax.random.PRNGKey(0), (s["batch"], s["size"], s["size"], s["cin"]))
    w = layer.init(jax.random.PRNGKey(1), x)["params"]["kernel"]

    def conv(w, x):
        with backend.model_rewrites():
            return layer.apply({"params": {"kernel": w}}, x)

    y = jax.eval_shape(conv, w, x)
    g = jax.random.normal(jax.random.PRNGKey(2), y.shape, y.dtype)
    _, ho, wo, cout = y.shape
    gflop = 2 * s["batch"] * ho * wo * cout * s["k"] ** 2 * s["cin"] / 1e9

    def loop_dx(w, x):  # PGD-like: input-gradient steps inside a while loop
        step = jax.grad(lambda z: jnp.sum(jnp.tanh(conv(w, z).astype(jnp.float32))))
        return jax.lax.fori_loop(0, LOOP_ITERATIONS, lambda i, z: z + 1e-3 * step(z), x)

    programs = {
        "fwd": (lambda w, x, g: conv(w, x), (w, x, g)),
        "dx": (lambda w, x, g: jax.vjp(lambda x_: conv(w, x_), x)[1](g)[0], (w, x, g)),
        "dw": (lambda w, x, g: jax.vjp(lambda w_: conv(w_, x), w)[1](g)[0], (w, x, g)),
        "loop_dx": (loop_dx, (w, x)),
    }
    record = dict(spec, gflop=gflop, backend=jax.default_backend(), loadavg_before=common.loadavg())
    compile_s = 0.0
    for name, (fn, args) in programs.items():
        compiled, timings, _ = common.compile_timed(jax.jit(fn), *args)
        compile_s += timings["compile_s"]
        seconds = median_seconds(compiled, args, spec["steps"], spec["warmup"])
        if name == "loop_dx":
            record["loop_dx_ms"] = 1e3 * seconds / LOOP_ITERATIONS
        else:
            record[f"{name}_ms"] = 1e3 * seconds
            record[f"{name}_gflops"] = gflop / seconds
    record["compile_s"] = compile_s
    record["img_per_s"] = s["batch"] * 1e3 / (record["fwd_ms"] + record["dx_ms"] + record["dw_ms"])
    record["loadavg_after"] = common.loadavg()
    return record


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shapes", default=DEFAULT_SHAPES,
                        help="comma list of B:H:Cin:Cout:k:stride:pad")
    parser.add_argument("--dtype", default="float32", help="comma list: float32, bfloat16")


def specs(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[dict]:
    out = []
    for shape, dtype in itertools.product(common.split_list(args.shapes),
                                          common.split_list(args.dtype)):
        try:
            parse_shape(shape)
        except ValueError as err:
            parser.error(f"--shapes: {err}")
        if dtype not in ("float32", "bfloat16"):
            parser.error(f"--dtype: got {dtype!r}; valid values: float32, bfloat16")
        out.append({"shape": shape, "dtype": dtype})
    return out


BENCHMARK = common.Benchmark(
    name="bench_conv", description=__doc__.split("\n")[0], columns=COLUMNS,
    add_options=add_options, specs=specs, run_child=run_child, steps=20, warmup=3,
    details="fwd_gflops,dx_gflops,dw_gflops",
    describe=lambda s: f"conv {s['shape']} {s['dtype']}")


def main(argv=None) -> None:
    common.run_benchmark(BENCHMARK, argv)


if __name__ == "__main__":
    main()
