"""Looking at runs: training curves of a run, and a table + scatter of many runs.

Two commands (also console scripts):

    python -m advcore.report curves --workdir=runs/a --workdir=runs/b --out=curves.png
    python -m advcore.report collect --workdir=runs/a --workdir=runs/b --out=results/table

``curves`` draws loss, adversarial train accuracy, learning rate and, when
the runs evaluated during training (``eval_every_epochs``) or at the end,
the clean and robust accuracies they logged. ``collect`` gathers every
evaluation result the runs hold (the training run's final ``eval.json`` and
every ``eval_<model>*.json`` written by ``advcore.evaluate``) into one
markdown and CSV table, one row per (run, model, result), each row stating
its threat model, and draws the robustness-accuracy scatter (clean vs worst
case over the attacks) of the rows.
"""

from __future__ import annotations

import csv
import glob
import io
import os
import sys
from typing import Any, Sequence

from absl import flags

from advcore import cli, files, plots, tables

_COMMANDS = ("curves", "collect")


def collect_results(workdirs: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``{row label: {metric: value, ...}}`` of every evaluation the runs hold."""
    rows: dict[str, dict[str, Any]] = {}
    for workdir in workdirs:
        run = os.path.basename(os.path.normpath(workdir))
        final = files.read_json(os.path.join(workdir, "eval.json"))
        if final:
            threat = final.get("threat_model") or {}
            for label, row in final["rows"].items():
                rows[f"{run}: {label}"] = {**_accuracies(row), **_threat_columns(threat)}
        for path in sorted(glob.glob(os.path.join(workdir, "eval_*.json"))):
            payload = files.read_json(path)
            if not payload or "accuracies" not in payload:
                continue
            name = os.path.splitext(os.path.basename(path))[0]
            rows[f"{run}: {payload['model']} [{name}]"] = {
                **_accuracies(payload["accuracies"]), **_threat_columns(payload)}
    if not rows:
        raise FileNotFoundError(
            f"no evaluation result (eval.json, eval_*.json) in {list(workdirs)}; evaluate the "
            "runs first (final_eval=True or python -m advcore.evaluate)")
    return rows


def _accuracies(row: dict) -> dict[str, float]:
    return {k: v for k, v in row.items() if k != "n" and isinstance(v, (int, float))}


def _threat_columns(threat: dict) -> dict[str, Any]:
    return {"dataset": threat.get("dataset"), "n": threat.get("n_examples"),
            "norm": threat.get("threat_model"), "eps": threat.get("eps")}


_INFO = ("dataset", "n", "norm", "eps")


def write_collection(rows: dict[str, dict[str, Any]], prefix: str, title: str = "") -> list[str]:
    """``prefix.md``, ``prefix.csv`` and ``prefix_tradeoff.png``; returns the paths."""
    metrics = []
    for row in rows.values():
        for k in row:
            if k not in _INFO and k not in metrics:
                metrics.append(k)
    columns = list(_INFO) + metrics
    md_rows = {label: {c: row.get(c) for c in metrics} for label, row in rows.items()}
    info = "\n".join(f"- {label}: " + ", ".join(f"{c}={row.get(c)}" for c in _INFO)
                     for label, row in rows.items())
    files.write_text(prefix + ".md", (f"## {title}\n\n" if title else "")
                     + tables.markdown_table(md_rows, metrics, row_header="run: model")
                     + "\n\nThreat model of each row:\n\n" + info + "\n")
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["row"] + columns)
    for label, row in rows.items():
        writer.writerow([label] + [row.get(c, "") for c in columns])
    files.write_text(prefix + ".csv", buffer.getvalue())
    paths = [prefix + ".md", prefix + ".csv"]
    points = {label: (row.get("clean"), row.get("worst_case")) for label, row in rows.items()}
    if any(c is not None and r is not None for c, r in points.values()):
        paths.append(plots.plot_tradeoff(
            points, prefix + "_tradeoff.png", ylabel="robust accuracy (%), worst case",
            title=title))
    return paths


# --------------------------------------------------------------------------
# Command line.
# --------------------------------------------------------------------------

_WORKDIR = flags.DEFINE_multi_string("workdir", [], "A run's workdir (repeat for several).")
_OUT = flags.DEFINE_string("out", "", "curves: the PNG; collect: the output prefix "
                           "(writes .md, .csv and _tradeoff.png).")
_TITLE = flags.DEFINE_string("title", "", "Title of the figure / table.")


def _run(command: str, argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments: {list(argv[1:])}")
    if not _WORKDIR.value:
        raise ValueError("--workdir is required (repeat it for several runs)")
    missing = [w for w in _WORKDIR.value if not os.path.isdir(w)]
    if missing:
        raise FileNotFoundError(f"--workdir {missing[0]} is not a directory")
    if command == "curves":
        out = _OUT.value or os.path.join(_WORKDIR.value[0], "curves.png")
        labels = {os.path.basename(os.path.normpath(w)) or w: w for w in _WORKDIR.value}
        print(plots.plot_training_curves(labels, out, title=_TITLE.value))
    else:
        out = _OUT.value or os.path.join(_WORKDIR.value[0], "collected")
        for path in write_collection(collect_results(_WORKDIR.value), out, _TITLE.value):
            print(path)


def curves_main() -> None:
    """Console script ``advcore-curves``."""
    cli.run(lambda argv: _run("curves", argv))


def collect_main() -> None:
    """Console script ``advcore-collect``."""
    cli.run(lambda argv: _run("collect", argv))


def main() -> None:
    """``python -m advcore.report {curves,collect} --workdir=... [--out=...]``."""
    if len(sys.argv) < 2 or sys.argv[1] not in _COMMANDS:
        print(f"error: the first argument must be one of {_COMMANDS}", file=sys.stderr)
        sys.exit(cli.EXIT_ERROR)
    command = sys.argv.pop(1)
    cli.run(lambda argv: _run(command, argv))


if __name__ == "__main__":
    main()
