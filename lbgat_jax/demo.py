"""README command 1: LBGAT+TRADES (α=0) vs TRADES (α=6) on real MNIST, on a CPU.

    python -m lbgat_jax.demo --workdir=runs/demo

Trains both methods from ``lbgat/mnist.py:demo`` (a 4k-example subset
of real MNIST, SmallCNN, ε = 0.3) and prints one clean / PGD-20 table. Each run
resumes if interrupted. The numbers are indicative only: the paper-scale
protocols are in experiments/RESULTS.md ("Full protocols on a GPU").
"""

from __future__ import annotations

import os
from typing import Sequence

from absl import flags

from advcore import cli, config_files, evaluation, files, tables
from lbgat_jax import train

_WORKDIR = flags.DEFINE_string("workdir", "runs/demo", "Directory of the two runs.")
_DATASET = flags.DEFINE_enum("dataset", "mnist", ["mnist", "fashion_mnist"], "Dataset.")

RUNS = (
    ("LBGAT+TRADES (α=0)", "demo,lbgat_trades,alpha0"),
    ("TRADES (α=6)", "demo,trades,alpha6"),
)


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments: {list(argv[1:])}")
    cli.setup("lbgat_jax.demo")
    rows = {}
    threat = None
    for label, variant in RUNS:
        config = config_files.get_config(f"lbgat/{_DATASET.value}.py:{variant}")
        workdir = os.path.join(_WORKDIR.value, variant.replace(",", "_"))
        result = train.train_and_evaluate(config, workdir)
        for name, row in result["eval"].items():
            model = "robust" if "(robust)" in name else "natural"
            rows[f"{label} — {model} model"] = {
                k: v for k, v in row.items() if k not in ("n", "worst_case")
            }
        threat = result["threat_model"]
    table = tables.markdown_table(rows, row_header="method")
    title = f"{evaluation.threat_model_title(threat)}: clean and PGD-20 accuracy (%)"
    path = os.path.join(_WORKDIR.value, "demo_table.md")
    files.write_text(path, f"## {title}\n\n{table}\n")
    print(f"\n{title}, written to {path}\n")
    print(table)


def run() -> None:
    cli.run(main)


if __name__ == "__main__":
    run()
