"""Shared benchmark plumbing: machine info, timing, FLOPs, isolation, results.

Every benchmark configuration runs in its **own subprocess** (``run_isolated``):
peak host memory (``ru_maxrss``) is then per configuration, XLA flags can
differ per configuration, and one configuration's compile cache or allocator
state never flatters the next. Configurations run one after another, never
in parallel.

Figures recorded per configuration (see ``timed_steps``):

* ``compile_s``: ``lower`` + ``compile`` of the jitted program, timed apart;
* ``img_per_s``: images per wall-clock second over the timed steps (after
  ``warmup`` untimed steps);
* ``img_per_s_idle_est``: images / max(process CPU time / cores, CPU time of
  the busiest thread): an estimate of the idle-machine rate that does not
  assume every core is kept busy (XLA:CPU's YNNPACK convolutions run mostly on
  one thread, so ``img_per_cpu_s`` alone overstates them);
* ``img_per_cpu_s``: images per *process CPU* second times the core count,
  i.e. the rate an otherwise idle machine would give if the program kept all
  cores busy. On a shared machine (other jobs running) wall-clock rates drop
  while this one barely moves; both are reported, together with the load
  average, so a reader can tell a slow program from a busy machine;
* ``flops_per_step``: XLA's cost analysis. XLA counts a ``while`` body once
  whatever its trip count, so the PGD loop's FLOPs are taken from the fully
  unrolled program's HLO (``flops_source`` says which);
* ``achieved_gflops`` and ``fraction_of_peak``: FLOPs per wall second over
  the assumed peak (``--peak_gflops``; 340 GFLOP/s fp32 for this 2-core
  AVX-512 CPU, an assumption from the issue, not a measurement).

The driver every benchmark script shares (``Benchmark``, ``run_benchmark``): the
common options (``common_parser``), the grid of process-level settings every
configuration is crossed with (CPU rewrites on/off, simulated CPU devices,
XLA flag sets), interleaved rounds, the parent/child protocol and result
saving and printing. A script declares only its own options, its own grid
(``specs``) and ``run_child``.

``python -m bench.common`` adds every JSON in ``bench/results/`` to
``bench/RESULTS.md`` (one table per benchmark invocation, with its command;
tables already there are kept).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import glob
import itertools
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
RESULTS_DIR = os.path.join(HERE, "results")
RESULTS_MD = os.path.join(HERE, "RESULTS.md")

# fp32 peak of the 2-core CPU the issue measured on (an assumption; the issue
# quotes ~340 GFLOP/s and PyTorch reaching ~250 on the same machine).
DEFAULT_PEAK_GFLOPS = {"cpu": 340.0}


# --------------------------------------------------------------------------
# Machine and software.
# --------------------------------------------------------------------------


def cpu_model_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


def cpu_has_amx() -> Optional[bool]:
    """Whether the CPU advertises AMX tiles (``amx_tile`` in /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return "amx_tile" in line.split()
    except OSError:
        pass
    return None


def machine_info() -> dict[str, Any]:
    import flax
    import jax
    import jaxlib
    import numpy as np
    import optax

    devices = jax.devices()
    return {
        "cpu_model": cpu_model_name(),
        "cpu_amx": cpu_has_amx(),
        "cpu_count": os.cpu_count(),
        "backend": jax.default_backend(),
        "device_kind": devices[0].device_kind,
        "num_devices": len(devices),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "numpy": np.__version__,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux: ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def loadavg() -> float:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return float("nan")


# --------------------------------------------------------------------------
# Timing.
# --------------------------------------------------------------------------


def block(tree):
    import jax

    return jax.block_until_ready(tree)


def compile_timed(jitted, *args) -> tuple[Any, dict[str, float], Any]:
    """``(compiled, timings, lowered)`` for ``jitted`` at ``args``.

    ``timings``: ``trace_lower_s`` (Python tracing and lowering to StableHLO,
    which JAX's persistent compilation cache cannot skip), ``xla_compile_s``
    (XLA's compilation, or loading it from that cache) and ``compile_s``,
    their sum.
    """
    start = time.perf_counter()
    lowered = jitted.lower(*args)
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
    end = time.perf_counter()
    return compiled, {"trace_lower_s": lowered_at - start, "xla_compile_s": end - lowered_at,
                      "compile_s": end - start}, lowered


def flops_of(stage) -> Optional[float]:
    """'flops' of a ``Lowered`` or ``Compiled`` cost analysis (None if absent)."""
    try:
        cost = stage.cost_analysis()
    except Exception:  # some backends do not implement it
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    if not cost or "flops" not in cost:
        return None
    return float(cost["flops"])


def thread_cpu_seconds() -> dict[str, float]:
    """CPU seconds (user + system) of each thread of this process (Linux)."""
    out = {}
    hz = os.sysconf("SC_CLK_TCK")
    try:
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            out[tid] = (int(fields[11]) + int(fields[12])) / hz
    except OSError:
        pass
    return out


def timed_steps(
    run_step: Callable[[Any], Any],
    carry: Any,
    *,
    steps: int,
    warmup: int,
    images_per_step: int,
) -> tuple[dict[str, float], Any]:
    """Runs ``carry = run_step(carry)`` warm-up + timed times; returns figures.

    ``run_step`` must return something ``block_until_ready`` can wait on as the
    next carry; only the end of the timed window is synchronised (no per-step
    host sync), which is how a real training loop runs.
    """
    for _ in range(warmup):
        carry = block(run_step(carry))
    load_before = loadavg()
    threads0 = thread_cpu_seconds()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    per_step = []
    for _ in range(steps):
        t = time.perf_counter()
        carry = run_step(carry)
        if steps <= 20:  # per-step times for short runs (small sync cost)
            carry = block(carry)
            per_step.append(time.perf_counter() - t)
    carry = block(carry)
    wall = time.perf_counter() - wall0
    cpu = time.process_time() - cpu0
    threads1 = thread_cpu_seconds()
    per_thread = sorted((threads1[t] - threads0.get(t, 0.0) for t in threads1), reverse=True)
    busiest = per_thread[0] if per_thread else cpu
    cores = os.cpu_count() or 1
    images = steps * images_per_step
    # An idle machine cannot finish before the busiest thread has run, nor
    # before all the CPU time is spread over every core.
    idle_wall = max(cpu / cores, busiest)
    figures = {
        "steps": steps,
        "warmup": warmup,
        "wall_s": wall,
        "cpu_s": cpu,
        "img_per_s": images / wall,
        "img_per_cpu_s": images / (cpu / cores) if cpu > 0 else float("nan"),
        "busiest_thread_s": busiest,
        "thread_cpu_s": per_thread[:4],
        "img_per_s_idle_est": images / idle_wall if idle_wall > 0 else float("nan"),
        "step_s_min": min(per_step) if per_step else wall / steps,
        "step_s_median": sorted(per_step)[len(per_step) // 2] if per_step else wall / steps,
        "img_per_s_best_step": images_per_step / min(per_step) if per_step else images / wall,
        "loadavg_before": load_before,
        "loadavg_after": loadavg(),
    }
    return figures, carry


def add_flop_rates(record: dict, peak_gflops: Optional[float]) -> None:
    flops = record.get("flops_per_step")
    if not flops:
        return
    steps_per_s = record["img_per_s"] / record["batch"]
    record["achieved_gflops"] = flops * steps_per_s / 1e9
    record["achieved_gflops_cpu_est"] = flops * record["img_per_cpu_s"] / record["batch"] / 1e9
    best = record["img_per_s_best_step"] / record["batch"]
    record["achieved_gflops_best_step"] = flops * best / 1e9
    if peak_gflops:
        record["peak_gflops_assumed"] = peak_gflops
        record["fraction_of_peak"] = record["achieved_gflops"] / peak_gflops
        record["fraction_of_peak_best_step"] = record["achieved_gflops_best_step"] / peak_gflops


def default_peak(backend: str) -> Optional[float]:
    return DEFAULT_PEAK_GFLOPS.get(backend)


# --------------------------------------------------------------------------
# Isolation: one subprocess per configuration.
# --------------------------------------------------------------------------

CHILD_FLAG = "--_child"

# --rewrites values -> advcore.backend.set_cpu_rewrites arguments.
REWRITES = {"default": None, "on": True, "off": False}


def run_isolated(module: str, spec: dict, extra_env: Optional[dict] = None,
                 timeout_s: float = 3600) -> dict:
    """Runs ``python -m module --_child=<json spec>``; returns its JSON record.

    The child prints its record as the last stdout line. A failure (crash,
    timeout, OOM) becomes a record with an ``error`` field, so one bad
    configuration never loses the others' figures. ``process_wall_s`` is the
    child's whole life (imports, set-up, compilation, timed steps): what a
    user waits for.
    """
    env = dict(os.environ)
    env.update(extra_env or {})
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH", "")) if p)
    cmd = [sys.executable, "-m", module, f"{CHILD_FLAG}={json.dumps(spec)}"]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {**spec, "error": f"timeout after {timeout_s}s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout)[-2000:]
        return {**spec, "error": f"exit {proc.returncode}: {tail}"}
    return {**json.loads(lines[-1]), "process_wall_s": time.perf_counter() - start}


def run_and_report(module: str, spec: dict, records: list[dict],
                   extra_env: Optional[dict] = None, timeout_s: float = 3600,
                   details: str = "") -> dict:
    """``run_isolated`` one configuration, append its record, print a one-line result.

    ``details`` names extra record fields to print after the rate (e.g.
    ``"run_s,robust_acc"``).
    """
    record = run_isolated(module, spec, extra_env, timeout_s)
    records.append(record)
    if "error" in record:
        print(f"    error: {record['error'][-500:]}", file=sys.stderr, flush=True)
    else:
        parts = [f"{record['img_per_s']:.2f} img/s", f"compile {record['compile_s']:.1f}s"]
        parts += [f"{k} {fmt(record.get(k), 3)}" for k in details.split(",") if k]
        print("    " + ", ".join(parts), file=sys.stderr, flush=True)
    return record


def child_spec(argv: list[str]) -> Optional[dict]:
    for arg in argv:
        if arg.startswith(CHILD_FLAG + "="):
            return json.loads(arg[len(CHILD_FLAG) + 1:])
    return None


def emit(record: dict) -> None:
    """The child's last stdout line: its JSON record."""
    print(json.dumps(record, default=float), flush=True)


def prepare_child(spec: dict) -> dict[str, float]:
    """The process-level settings of one configuration, before JAX starts its backend.

    Simulated CPU devices and XLA flags go through ``advcore.backend.configure_cpu``
    (as the command lines set them), the CPU model rewrites through
    ``set_cpu_rewrites``, and the persistent compilation cache as
    ``advcore.cli.setup`` enables it. Returns a dict the compilation-cache
    events are counted into.
    """
    import jax

    from advcore import backend

    flags = spec.get("xla_flags")
    backend.configure_cpu(spec.get("devices") or None,
                          xla_flags=None if flags is None else tuple(flags.split()))
    backend.set_cpu_rewrites(REWRITES[spec.get("rewrites", "default")])
    cache_events = {"cache_hits": 0, "cache_misses": 0}
    if spec.get("compilation_cache_dir"):
        jax.config.update("jax_compilation_cache_dir", spec["compilation_cache_dir"])
        # The threshold advcore.cli.setup uses: programs that compile in under
        # a second are not worth a disk entry.
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)

        def count(event: str, **_: Any) -> None:
            name = event.rsplit("/", 1)[-1]
            if name in cache_events:
                cache_events[name] += 1

        jax.monitoring.register_event_listener(count)
    return cache_events


def serve_child(argv: list[str], run_child: Callable[[dict], dict]) -> bool:
    """In a child process (``run_isolated``), runs ``run_child(spec)`` and
    emits its record; returns whether this process was a child.

    The record also says which settings the process really ran with: the CPU
    rewrites (``rewrites_active``), the device count, ``XLA_FLAGS`` and, with
    a compilation cache, how many programs it loaded from the cache and how
    many it compiled and stored.
    """
    spec = child_spec(argv)
    if spec is None:
        return False
    cache_events = prepare_child(spec)
    record = run_child(spec)

    import jax

    from advcore import backend

    record.update(rewrites_active=backend.cpu_rewrites_enabled(),
                  num_devices=jax.device_count(), xla_flags_env=os.environ.get("XLA_FLAGS", ""))
    if spec.get("compilation_cache_dir"):
        record.update(cache_events)
    emit(record)
    return True


# --------------------------------------------------------------------------
# The driver every benchmark script shares.
# --------------------------------------------------------------------------

# Settings that differ per process, crossed with every script's own grid.
CONFIG_KEYS = ("rewrites", "devices", "xla_flags_label")
CONFIG_COLUMNS = [
    ("rewrites", "CPU rewrites", 0),
    ("devices", "devices", 0),
    ("xla_flags_label", "XLA flags", 0),
]
ROUND_COLUMN = ("round", "round", 0)

# The figure columns of the per-step benchmarks (bench_lbgat, bench_eval).
STEP_FIGURE_COLUMNS = [
    ("compile_s", "compile s", 1),
    ("img_per_s", "img/s (wall)", 2),
    ("img_per_s_best_step", "img/s (best step)", 2),
    ("img_per_cpu_s", "img/s (CPU-time est.)", 2),
    ("img_per_s_idle_est", "img/s (idle est.)", 2),
    ("achieved_gflops", "GFLOP/s (wall)", 1),
    ("achieved_gflops_cpu_est", "GFLOP/s (CPU est.)", 0),
    ("fraction_of_peak", "of 340 peak (wall)", 3),
    ("peak_rss_mib", "peak RSS MiB", 0),
    ("loadavg_before", "load", 1),
]

# Columns of the compilation-cache table (``--compilation_cache``).
COMPILE_COLUMNS = [
    ("round", "process", 0),
    ("cache_hits", "programs from cache", 0),
    ("cache_misses", "programs compiled", 0),
    ("setup_s", "set-up s", 1),
    ("trace_lower_s", "trace + lower s", 1),
    ("xla_compile_s", "XLA compile s", 1),
    ("first_step_s", "first step s", 1),
    ("process_wall_s", "process wall s", 1),
]


def split_list(text: str, convert: Callable[[str], Any] = str) -> list:
    """``"a,b,,c"`` -> ``[convert("a"), convert("b"), convert("c")]``."""
    return [convert(item) for item in text.split(",") if item]


def common_parser(description: str, *, steps: int, warmup: int) -> argparse.ArgumentParser:
    """The options every benchmark script has; a script adds its own to it."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--steps", type=int, default=steps, help="timed steps (batches, runs)")
    parser.add_argument("--warmup", type=int, default=warmup,
                        help="untimed steps after compilation")
    parser.add_argument("--rewrites", default="default",
                        help="comma list of advcore.backend CPU model rewrites to compare: "
                             "on, off, default (on exactly on the CPU backend)")
    parser.add_argument("--devices", default="1",
                        help="comma list of simulated CPU device counts (jax_num_cpu_devices, "
                             "set through advcore.backend.configure_cpu)")
    parser.add_argument("--xla_flags", action="append", default=None, metavar="FLAGS",
                        help="one set of XLA flags to compare; repeat the option for several "
                             "sets. 'library' = advcore.backend.CPU_XLA_FLAGS, as the command "
                             "lines apply them (the default); 'none' = XLA's own defaults")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run the whole grid this many times, interleaved (every other "
                             "round in reverse order), and summarise each configuration's "
                             "median and its ratio to its baseline round by round (see "
                             "summarize)")
    parser.add_argument("--compilation_cache", default="off",
                        help="JAX's persistent compilation cache for the measured processes: "
                             "'off', 'fresh' (a new empty temporary directory, removed at the "
                             "end: round 1 compiles, later rounds load) or a directory")
    parser.add_argument("--variant", default="", help="a free label for this run's rows")
    parser.add_argument("--peak_gflops", type=float, default=0.0,
                        help="peak for the fraction-of-peak column (0 = backend default)")
    parser.add_argument("--timeout_s", type=float, default=3600,
                        help="per-configuration time limit")
    parser.add_argument("--no_save", action="store_true", help="print only, save no JSON")
    return parser


def xla_flag_sets(values: Optional[Sequence[str]]) -> list[Optional[str]]:
    """``--xla_flags`` values -> flag strings; None: the library's choice."""
    sets: list[Optional[str]] = []
    for value in values or ["library"]:
        value = value.strip()
        sets.append(None if value == "library" else "" if value == "none" else value)
    return sets


def xla_flags_label(flags: Optional[str]) -> str:
    """How a flag set shows in the tables; the library's says what it resolves to."""
    if flags is None:
        from advcore import backend

        return f"library ({' '.join(backend.CPU_XLA_FLAGS) or 'none'})"
    return flags or "none"


def config_grid(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[dict]:
    """The process-level settings (``CONFIG_KEYS``) to cross with a script's grid."""
    rewrites = split_list(args.rewrites)
    bad = [r for r in rewrites if r not in REWRITES]
    if bad or not rewrites:
        parser.error(f"--rewrites: got {args.rewrites!r}; valid values: {', '.join(REWRITES)}")
    try:
        devices = split_list(args.devices, int)
    except ValueError:
        devices = []
    if not devices or min(devices) < 1:
        parser.error(f"--devices: got {args.devices!r}; expected a comma list of ints >= 1")
    return [{"rewrites": r, "devices": d, "xla_flags_label": xla_flags_label(flags),
             "xla_flags": flags}
            for r, d, flags in itertools.product(rewrites, devices,
                                                 xla_flag_sets(args.xla_flags))]


def cache_dir_for(option: str, parser: argparse.ArgumentParser) -> str:
    """``--compilation_cache`` -> the directory the children use ('' = off)."""
    if option == "off":
        return ""
    if option == "fresh":
        return tempfile.mkdtemp(prefix="bench_jax_cache_")
    path = os.path.abspath(os.path.expanduser(option))
    if os.path.exists(path) and not os.path.isdir(path):
        parser.error(f"--compilation_cache: {option!r} is not a directory; valid values: "
                     "off, fresh or a directory")
    return path


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """What a benchmark script declares; ``run_benchmark`` does the rest.

    Attributes:
      name: the results name (``bench/results/<name>_<date>.json``); the
        script is the module ``bench.<name>``.
      description: the ``--help`` line.
      columns: ``(record key, header, digits)`` of the printed table.
      add_options: adds the script's own options to the common parser.
      specs: ``(args, parser) -> [spec]``: the script's own grid (one dict of
        JSON values per configuration, without the common settings).
      run_child: ``spec -> record``, in the configuration's own process.
      describe: ``spec -> str`` for the progress line.
      details: record fields printed after the rate in the progress line.
      steps, warmup: the defaults of ``--steps`` / ``--warmup``.
    """

    name: str
    description: str
    columns: list
    add_options: Callable[[argparse.ArgumentParser], None]
    specs: Callable[[argparse.Namespace, argparse.ArgumentParser], list[dict]]
    run_child: Callable[[dict], dict]
    describe: Callable[[dict], str] = str
    details: str = ""
    steps: int = 3
    warmup: int = 1


def run_benchmark(bench: Benchmark, argv: Optional[list[str]] = None) -> list[dict]:
    """A benchmark script's entry point: child or parent, by its arguments.

    The parent runs every configuration (the script's grid x the common
    settings) in its own process, ``--rounds`` times, saves the records and
    prints the table (and, with several rounds, the summary). Returns the
    records (empty in a child).
    """
    argv = sys.argv[1:] if argv is None else argv
    if serve_child(argv, bench.run_child):
        return []
    parser = common_parser(bench.description, steps=bench.steps, warmup=bench.warmup)
    bench.add_options(parser)
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds: got {args.rounds}; expected an int >= 1")
    own_specs, configs = bench.specs(args, parser), config_grid(args, parser)
    common = {"steps": args.steps, "warmup": args.warmup, "peak_gflops": args.peak_gflops,
              "variant": args.variant,
              "compilation_cache_dir": cache_dir_for(args.compilation_cache, parser)}
    grid = [{**own, **config, **common} for own in own_specs for config in configs]
    try:
        records = run_rounds(bench, grid, args)
    finally:
        if args.compilation_cache == "fresh":  # a temporary directory of ours
            shutil.rmtree(common["compilation_cache_dir"], ignore_errors=True)
    print()
    print_table(records, bench.columns)
    summary = summarize(records, varying_keys(grid)) if args.rounds > 1 else []
    if summary:
        print()
        print_table(summary, SUMMARY_COLUMNS)
    if common["compilation_cache_dir"]:
        print()
        print_table(records, COMPILE_COLUMNS)
    if not args.no_save:
        path = save_results(bench.name, records, argv, machine_info(), summary)
        print(f"saved {path}")
    return records


def run_rounds(bench: Benchmark, grid: list[dict], args: argparse.Namespace) -> list[dict]:
    """Every configuration of ``grid``, ``args.rounds`` times, interleaved."""
    records: list[dict] = []
    for round_index in range(args.rounds):
        order = grid if round_index % 2 == 0 else grid[::-1]
        for spec in order:
            spec = {**spec, "round": round_index + 1}
            print(f"... round {round_index + 1}: {bench.describe(spec)} | rewrites "
                  f"{spec['rewrites']}, {spec['devices']} device(s), XLA flags "
                  f"{spec['xla_flags_label']}", file=sys.stderr, flush=True)
            run_and_report(f"bench.{bench.name}", spec, records, timeout_s=args.timeout_s,
                           details=bench.details)
    return records


# --------------------------------------------------------------------------
# Interleaved rounds: a configuration against the first one, round by round.
# --------------------------------------------------------------------------

SUMMARY_COLUMNS = [
    ("config", "configuration", 0),
    ("rounds", "rounds", 0),
    ("median_img_per_s", "img/s (wall), median", 2),
    ("min_img_per_s", "min", 2),
    ("max_img_per_s", "max", 2),
    ("median_ratio", "vs baseline, median ratio", 3),
    ("faster_rounds", "faster in rounds", 0),
]


def varying_keys(grid: list[dict]) -> list[str]:
    """The spec keys whose values differ between the grid's configurations."""
    return [k for k in grid[0] if k not in ("xla_flags", "round")
            and len({json.dumps(spec.get(k), sort_keys=True) for spec in grid}) > 1]


def config_name(record: dict, keys: Sequence[str]) -> str:
    """A record's configuration, named by the values of ``keys`` (no round)."""
    return "; ".join(f"{k}={record.get(k)}" for k in keys) or "all"


def summarize(records: list[dict], keys: Sequence[str]) -> list[dict]:
    """Per configuration (named by ``keys``): median/min/max wall img/s over the
    rounds and the median of its per-round ratio to its baseline (same round),
    with the number of rounds it was faster in.

    The baseline is the first configuration that differs at most in the
    process-level settings (``CONFIG_KEYS``: rewrites, devices, XLA flags),
    so a lever is compared on the same model, batch, shape... Interleaving
    makes each ratio compare two runs a few minutes apart, so slow drift of
    the machine (other jobs, thermal state) cancels.
    """
    ok = [r for r in records if "error" not in r]
    own_keys = [k for k in keys if k not in CONFIG_KEYS]
    names = list(dict.fromkeys(config_name(r, keys) for r in ok))
    first = {r_own: name for name, r_own in reversed(
        [(config_name(r, keys), config_name(r, own_keys)) for r in ok])}
    rate = {(config_name(r, keys), r.get("round", 1)): r["img_per_s"] for r in ok}
    baseline_of = {config_name(r, keys): first[config_name(r, own_keys)] for r in ok}
    rows = []
    for name in names:
        baseline = baseline_of[name]
        rates = [v for (n, _), v in rate.items() if n == name]
        ratios = [v / rate[(baseline, rnd)] for (n, rnd), v in rate.items()
                  if n == name and (baseline, rnd) in rate]
        rows.append({
            "config": name, "rounds": len(rates), "baseline": baseline,
            "median_img_per_s": statistics.median(rates),
            "min_img_per_s": min(rates), "max_img_per_s": max(rates),
            "median_ratio": statistics.median(ratios) if ratios else None,
            "faster_rounds": (f"{sum(r > 1 for r in ratios)} of {len(ratios)}"
                              if ratios and name != baseline else "–"),
        })
    return rows


# --------------------------------------------------------------------------
# Results.
# --------------------------------------------------------------------------


def save_results(name: str, records: list[dict], argv: list[str], info: dict,
                 summary: Optional[list[dict]] = None) -> str:
    os.makedirs(RESULTS_DIR, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = os.path.join(RESULTS_DIR, f"{name}_{stamp}.json")
    payload = {
        "benchmark": name,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": "python -m bench." + name + " " + " ".join(argv),
        "machine": info,
        "records": records,
        "summary": summary or [],
    }
    with open(path, "w") as f:
        json.dump(payload, f, indent=2, default=float)
    return path


def fmt(value, digits=2) -> str:
    if value is None or value == "":
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value != value:  # nan
            return "–"
        return f"{value:.{digits}f}"
    return str(value)


def table_lines(records: list[dict], columns: list[tuple[str, str, int]]) -> list[str]:
    """A markdown table of ``records``; a failed configuration shows its error."""
    lines = ["| " + " | ".join(c[1] for c in columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    for r in records:
        if "error" in r:
            lines.append("| " + " | ".join(
                [fmt(r.get(columns[0][0]))] + [f"error ({r['error'][:60].strip()}...)"]
                + ["" for _ in columns[2:]]) + " |")
        else:
            lines.append("| " + " | ".join(fmt(r.get(k), d) for k, _, d in columns) + " |")
    return lines


def print_table(records: list[dict], columns: list[tuple[str, str, int]]) -> str:
    table = "\n".join(table_lines(records, columns))
    print(table)
    return table


def all_results(names: Optional[Sequence[str]] = None) -> list[dict]:
    """Every saved result file of the ``names`` benchmarks (default: all), oldest first."""
    names = tuple(names or TITLES)
    payloads = []
    paths = [p for name in names for p in glob.glob(os.path.join(RESULTS_DIR, f"{name}_*.json"))]
    for path in sorted(paths, key=_stamp):
        with open(path) as f:
            payload = json.load(f)
        payload["path"] = os.path.relpath(path, REPO)
        payloads.append(payload)
    return payloads


def _stamp(path: str) -> str:
    return os.path.basename(path).rsplit("_", 1)[-1]


TITLES = {
    "bench_lbgat": "LBGAT step (lbgat_trades, PGD-10 KL inner loop, random 32x32x3)",
    "bench_eval": "Robust evaluation (attack + final forward, random 32x32x3)",
    "bench_attacks": "Attacks: PGD-20 and AutoAttack (SmallCNN / MNIST, WRN-16-4)",
    "bench_conv": "One convolution: forward, input gradient, weight gradient",
}


GENERATED_MARKER = "<!-- tables below are generated by `python -m bench.common` -->"
_DATE_LINE = re.compile(r"^- date: (\S+?);", re.MULTILINE)


def payload_section(payload: dict, columns: list) -> str:
    """One invocation's markdown: command, machine, versions, tables."""
    m = payload["machine"]
    amx = {True: ", AMX", False: ", no AMX"}.get(m.get("cpu_amx"), "")
    out = [f"## {TITLES.get(payload['benchmark'], payload['benchmark'])}", "",
           f"- command: `{payload['command']}`",
           f"- date: {payload['date']}; machine: {m['cpu_model']}{amx}, {m['cpu_count']} cores; "
           f"backend {m['backend']} ({m['device_kind']})",
           f"- versions: python {m['python']}, jax {m['jax']}, jaxlib {m['jaxlib']}, "
           f"flax {m['flax']}, optax {m['optax']}, numpy {m['numpy']}"
           + (f"; XLA_FLAGS `{m['xla_flags']}`" if m.get("xla_flags") else ""), ""]
    for r in payload["records"]:
        if r.get("flops_per_step") and "achieved_gflops_cpu_est" not in r:
            add_flop_rates(r, r.get("peak_gflops_assumed"))
    out += table_lines(payload["records"], columns)
    if payload.get("summary") and max(r.get("round", 1) for r in payload["records"]) > 1:
        out += ["", "Over the interleaved rounds:", ""]
        out += table_lines(payload["summary"], SUMMARY_COLUMNS)
    if any(r.get("compilation_cache_dir") for r in payload["records"]):
        out += ["", "Compilation cache (`--compilation_cache`; one row per process, in the "
                "order they ran):", ""]
        out += table_lines(payload["records"], COMPILE_COLUMNS)
    return "\n".join(out)


def write_results_md(payloads: list[dict], columns: dict[str, list], path: str = RESULTS_MD,
                     preamble: str = "") -> None:
    """Adds ``payloads`` to the generated tables of ``path``.

    Text above ``GENERATED_MARKER`` is kept. So is every generated section
    whose invocation has no JSON here (``bench/results/`` is not versioned):
    a section is replaced only by the JSON of the same date; the sections
    end up ordered by date.
    """
    sections: dict[str, str] = {}
    if os.path.exists(path):
        with open(path) as f:
            text = f.read()
        if GENERATED_MARKER in text:
            old_preamble, generated = text.split(GENERATED_MARKER, 1)
            preamble = preamble or old_preamble
            for chunk in re.split(r"\n(?=## )", generated):
                date = _DATE_LINE.search(chunk)
                if chunk.strip() and date:
                    sections[date.group(1)] = chunk.strip()
    for payload in payloads:
        sections[payload["date"]] = payload_section(payload, columns[payload["benchmark"]])
    preamble = preamble.strip() or "# Benchmark results"
    out = [preamble, "", GENERATED_MARKER, ""]
    for date in sorted(sections):
        out += [sections[date], ""]
    with open(path, "w") as f:
        f.write("\n".join(out).rstrip() + "\n")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Add bench/results/*.json to bench/RESULTS.md")
    parser.add_argument("--preamble", default="", help="a markdown file to put on top")
    args = parser.parse_args(argv)
    from bench import bench_attacks, bench_conv, bench_eval, bench_lbgat

    preamble = open(args.preamble).read() if args.preamble else ""
    scripts = (bench_lbgat, bench_eval, bench_attacks, bench_conv)
    write_results_md(all_results(), {s.BENCHMARK.name: s.BENCHMARK.columns for s in scripts},
                     preamble=preamble)
    print(f"wrote {RESULTS_MD}")


if __name__ == "__main__":
    main()
