"""README command 1: LBGAT+TRADES (α=0) vs TRADES (α=6) on real MNIST, on a CPU.

    python -m lbgat_jax.demo --workdir=runs/demo

Trains both methods from ``configs/lbgat/mnist.py:demo`` (a 4k-example subset
of real MNIST, SmallCNN, ε = 0.3) and prints one clean / PGD-20 table. Each run
resumes if interrupted. The numbers are indicative only: the paper-scale
protocols are in experiments/RESULTS.md ("Full protocols on a GPU").
"""

from __future__ import annotations

import argparse
import os

from advcore import tables

RUNS = (
    ("LBGAT+TRADES (α=0)", "demo,lbgat_trades,alpha0"),
    ("TRADES (α=6)", "demo,trades,alpha6"),
)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default="runs/demo")
    parser.add_argument("--dataset", default="mnist", choices=["mnist", "fashion_mnist"])
    args = parser.parse_args(argv)
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every file at INFO

    from advcore import parallel

    parallel.initialize_distributed()
    from configs.lbgat import fashion_mnist, mnist
    from lbgat_jax import train

    config_module = mnist if args.dataset == "mnist" else fashion_mnist
    rows = {}
    for label, variant in RUNS:
        config = config_module.get_config(variant)
        config.lock()
        workdir = os.path.join(args.workdir, variant.replace(",", "_"))
        result = train.train_and_evaluate(config, workdir)
        for name, row in result["eval"].items():
            model = "robust" if "(robust)" in name else "natural"
            rows[f"{label} — {model} model"] = {
                k: v for k, v in row.items() if k not in ("n", "worst_case")
            }
    table = tables.markdown_table(rows, row_header="method")
    path = os.path.join(args.workdir, "demo_table.md")
    with open(path, "w") as f:
        f.write(table + "\n")
    print(f"\n{args.dataset}: clean and PGD-20 accuracy (%), written to {path}\n")
    print(table)


if __name__ == "__main__":
    main()
