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

``python -m bench.common`` rebuilds ``bench/RESULTS.md`` from every JSON in
``bench/results/`` (one table per benchmark invocation, with its command).
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import platform
import resource
import subprocess
import sys
import time
from typing import Any, Callable, Optional

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


def machine_info() -> dict[str, Any]:
    import flax
    import jax
    import jaxlib
    import numpy as np
    import optax

    devices = jax.devices()
    return {
        "cpu_model": cpu_model_name(),
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


def compile_timed(jitted, *args) -> tuple[Any, float, Any]:
    """``(compiled, seconds, lowered)`` for ``jitted`` at ``args``."""
    start = time.perf_counter()
    lowered = jitted.lower(*args)
    compiled = lowered.compile()
    return compiled, time.perf_counter() - start, lowered


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


def run_isolated(module: str, spec: dict, extra_env: Optional[dict] = None,
                 timeout_s: float = 3600) -> dict:
    """Runs ``python -m module --_child=<json spec>``; returns its JSON record.

    The child prints its record as the last stdout line. A failure (crash,
    timeout, OOM) becomes a record with an ``error`` field, so one bad
    configuration never loses the others' figures.
    """
    env = dict(os.environ)
    env.update(extra_env or {})
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH", "")) if p)
    cmd = [sys.executable, "-m", module, f"{CHILD_FLAG}={json.dumps(spec)}"]
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {**spec, "error": f"timeout after {timeout_s}s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout)[-2000:]
        return {**spec, "error": f"exit {proc.returncode}: {tail}"}
    return json.loads(lines[-1])


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
        extra = "".join(f", {k} {fmt(record.get(k), 3)}" for k in details.split(",") if k)
        print(f"    {record['img_per_s']:.2f} img/s, compile {record['compile_s']:.1f}s{extra}",
              file=sys.stderr, flush=True)
    return record


def finish(name: str, records: list[dict], argv: list[str],
           columns: list[tuple[str, str, int]], save: bool = True) -> None:
    """Prints the results table and saves the records under ``bench/results/``."""
    print()
    print_table(records, columns)
    if save:
        path = save_results(name, records, argv, machine_info())
        print(f"saved {path}")


def child_spec(argv: list[str]) -> Optional[dict]:
    for arg in argv:
        if arg.startswith(CHILD_FLAG + "="):
            return json.loads(arg[len(CHILD_FLAG) + 1:])
    return None


def emit(record: dict) -> None:
    """The child's last stdout line: its JSON record."""
    print(json.dumps(record, default=float), flush=True)


def serve_child(argv: list[str], run_child) -> bool:
    """In a child process (``run_isolated``), runs ``run_child(spec)`` and
    emits its record; returns whether this process was a child."""
    spec = child_spec(argv)
    if spec is None:
        return False
    emit(run_child(spec))
    return True


# --------------------------------------------------------------------------
# Results.
# --------------------------------------------------------------------------


def save_results(name: str, records: list[dict], argv: list[str], info: dict) -> str:
    os.makedirs(RESULTS_DIR, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = os.path.join(RESULTS_DIR, f"{name}_{stamp}.json")
    payload = {
        "benchmark": name,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": "python -m bench." + name + " " + " ".join(argv),
        "machine": info,
        "records": records,
    }
    with open(path, "w") as f:
        json.dump(payload, f, indent=2, default=float)
    return path


def fmt(value, digits=2) -> str:
    if value is None or value == "":
        return "–"
    if isinstance(value, float):
        if value != value:  # nan
            return "–"
        return f"{value:.{digits}f}"
    return str(value)


def print_table(records: list[dict], columns: list[tuple[str, str, int]]) -> str:
    head = "| " + " | ".join(c[1] for c in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    rows = []
    for r in records:
        if "error" in r:
            rows.append("| " + " | ".join(
                [fmt(r.get(columns[0][0]))] + [f"error: {r['error'][:60]!r}"]
                + ["" for _ in columns[2:]]) + " |")
            continue
        rows.append("| " + " | ".join(fmt(r.get(k), d) for k, _, d in columns) + " |")
    table = "\n".join([head, sep, *rows])
    print(table)
    return table


def all_results(names: tuple[str, ...] = ("bench_lbgat", "bench_eval", "bench_attacks")
                ) -> list[dict]:
    """Every saved result file of the ``names`` benchmarks, oldest first."""
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
}


GENERATED_MARKER = "<!-- tables below are generated by `python -m bench.common` -->"


def write_results_md(payloads: list[dict], columns: dict[str, list], path: str = RESULTS_MD,
                     preamble: str = "") -> None:
    """Writes the tables; text above ``GENERATED_MARKER`` in ``path`` is kept."""
    if not preamble and os.path.exists(path):
        with open(path) as f:
            text = f.read()
        if GENERATED_MARKER in text:
            preamble = text.split(GENERATED_MARKER)[0]
    preamble = preamble.strip() or "# Benchmark results"
    out = [preamble, "", GENERATED_MARKER, ""]
    for payload in payloads:
        name = payload["benchmark"]
        m = payload["machine"]
        out += [f"## {TITLES.get(name, name)}", "",
                f"- command: `{payload['command']}`",
                f"- date: {payload['date']}; machine: {m['cpu_model']}, {m['cpu_count']} cores; "
                f"backend {m['backend']} ({m['device_kind']}, {m['num_devices']} device(s))",
                f"- versions: python {m['python']}, jax {m['jax']}, jaxlib {m['jaxlib']}, "
                f"flax {m['flax']}, optax {m['optax']}, numpy {m['numpy']}"
                + (f"; XLA_FLAGS `{m['xla_flags']}`" if m.get("xla_flags") else ""), ""]
        cols = columns[name]
        out += ["| " + " | ".join(c[1] for c in cols) + " |",
                "|" + "|".join("---" for _ in cols) + "|"]
        for r in payload["records"]:
            if r.get("flops_per_step") and "achieved_gflops_cpu_est" not in r:
                add_flop_rates(r, r.get("peak_gflops_assumed"))
            if "error" in r:
                out.append("| " + " | ".join(
                    [fmt(r.get(cols[0][0]))] + [f"error ({r['error'][:40].strip()}...)"]
                    + ["" for _ in cols[2:]]) + " |")
            else:
                out.append("| " + " | ".join(fmt(r.get(k), d) for k, _, d in cols) + " |")
        out.append("")
    with open(path, "w") as f:
        f.write("\n".join(out).rstrip() + "\n")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Rebuild bench/RESULTS.md from bench/results/")
    parser.add_argument("--preamble", default="", help="a markdown file to put on top")
    args = parser.parse_args(argv)
    from bench import bench_attacks, bench_eval, bench_lbgat

    preamble = open(args.preamble).read() if args.preamble else ""
    write_results_md(all_results(), {"bench_lbgat": bench_lbgat.COLUMNS,
                                     "bench_eval": bench_eval.COLUMNS,
                                     "bench_attacks": bench_attacks.COLUMNS},
                     preamble=preamble)
    print(f"wrote {RESULTS_MD}")


if __name__ == "__main__":
    main()
