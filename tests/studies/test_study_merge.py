"""The studies keep committed results that the (untracked) runs cache lacks.

On a fresh clone ``experiments/runs`` is empty. Before the merge, one
``lbgat_study --only=x`` (or a ``--report_only``) rewrote the committed
summary with the cache's runs alone and dropped every earlier number.
"""

import json
import os

from experiments import ladder_study, lbgat_study


def _write(path, payload):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        if isinstance(payload, str):
            f.write(payload)
        else:
            json.dump(payload, f)


def _col(acc, n=1000):
    return {"accuracy": acc, "n": n}


def test_lbgat_write_results_merges_cache_into_committed_summary(tmp_path):
    runs, results = str(tmp_path / "runs"), str(tmp_path / "results")
    out = os.path.join(results, "mnist", "cpu")
    _write(os.path.join(out, "lbgat_summary.json"), {"runs": {
        # Only in the committed summary: kept as it is.
        "natural": {"label": "Natural", "trained": True, "train_seconds": 10.0,
                    "train_command": "cmd-natural",
                    "eval": {"Clean": _col(99.0), "PGD-40": _col(0.5)}},
        # In both, same command: the cache's columns win, AA comes from the summary.
        "trades6": {"label": "TRADES (α=6)", "trained": True,
                    "train_seconds": 50.0, "train_command": "cmd-trades",
                    "eval": {"Clean": _col(90.0), "PGD-40": _col(40.0), "AA": _col(20.0)}},
        # In both, retrained with another command: the summary's numbers are stale.
        "lbgat": {"label": "LBGAT", "trained": True, "train_seconds": 5.0,
                  "train_command": "cmd-old", "eval": {"Clean": _col(50.0), "AA": _col(9.0)}},
    }})
    for key, command, ev in (("trades6", "cmd-trades", {"Clean": _col(90.0),
                                                         "PGD-40": _col(41.0)}),
                             ("lbgat", "cmd-new", {"Clean": _col(60.0),
                                                   "PGD-40": _col(30.0)})):
        wd = lbgat_study.run_workdir(runs, "mnist", "cpu", key)
        _write(os.path.join(wd, "study_train.json"),
               {"finished": True, "train_seconds": 1.0, "command": command})
        _write(os.path.join(wd, "study_eval.json"),
               {"results": {c: dict(r, hash="h") for c, r in ev.items()}})
    _write(os.path.join(lbgat_study.run_workdir(runs, "mnist", "cpu", "trades6"),
                        "metrics.jsonl"),
           '{"step": 8, "loss": 1.5, "train/adv_acc": 0.4, "lr": 0.05}\n'
           '{"step": 16, "loss": 1.2, "train/adv_acc": 0.5, "lr": 0.05}\n')

    summary = lbgat_study.write_results("mnist", "cpu", runs, results, tsne_n=0, cpu=True)

    got = {k: {c: r["accuracy"] for c, r in v["eval"].items()}
           for k, v in summary["runs"].items()}
    assert got == {"natural": {"Clean": 99.0, "PGD-40": 0.5},
                   "trades6": {"Clean": 90.0, "PGD-40": 41.0, "AA": 20.0},
                   "lbgat": {"Clean": 60.0, "PGD-40": 30.0}}
    assert list(summary["runs"]) == ["natural", "trades6", "lbgat"]  # priority order
    assert summary["runs"]["natural"]["train_command"] == "cmd-natural"
    assert summary["runs"]["lbgat"]["train_command"] == "cmd-new"
    # The table has every row, and the curve is stored beside it for later clones.
    table = open(os.path.join(out, "lbgat_table.md")).read()
    assert "| Natural |" in table and "| 99.00 |" in table and "| 20.00 |" in table
    stored = os.path.join(out, "curves", "trades6", "metrics.jsonl")
    assert os.path.exists(stored) and os.path.exists(os.path.join(out, "training_curves.png"))

    # A second clone (empty cache): the file it writes is the one it read.
    before = open(os.path.join(out, "lbgat_summary.json")).read()
    again = lbgat_study.write_results("mnist", "cpu", str(tmp_path / "empty"), results,
                                      tsne_n=0, cpu=True)
    assert open(os.path.join(out, "lbgat_summary.json")).read() == before
    assert again["runs"]["trades6"]["eval"]["PGD-40"]["accuracy"] == 41.0


def test_ladder_merge_keeps_committed_parts_and_counts_commands_once():
    def cmd(part, stage, seconds):
        return {"part": part, "stage": stage, "command": f"run {part}/{stage}",
                "seconds": seconds, "returncode": 0}

    committed = {"dataset": "mnist", "scale": "cpu",
                 "commands": [cmd("main", "classifier", 250.0), cmd("main", "svm", 30.0)],
                 "vanilla": {"test_accuracy": 98.9}, "table": {"rows": {"old": {}}}}
    fresh = {"dataset": "mnist", "scale": "cpu",
             "commands": [cmd("main", "svm", 2.0), cmd("eps2", "finetune", 80.0)],
             "table": {"rows": {"new": {}}}}
    merged = ladder_study.merge_committed(fresh, committed)
    assert merged["vanilla"] == {"test_accuracy": 98.9}  # the cache lacked it
    assert merged["table"] == {"rows": {"new": {}}}  # the cache's result wins
    # The svm stage is the cache's (its log holds every invocation it ran):
    # neither dropped nor summed twice with the committed 30 s.
    assert [(c["part"], c["stage"], c["seconds"]) for c in merged["commands"]] == [
        ("main", "classifier", 250.0), ("main", "svm", 2.0), ("eps2", "finetune", 80.0)]
    assert list(merged) == ["dataset", "scale", "commands", "vanilla", "table"]
    # An empty cache leaves the committed summary exactly as it was.
    assert ladder_study.merge_committed({"dataset": "mnist", "scale": "cpu", "commands": []},
                                        committed) == committed


def test_ladder_report_on_an_empty_cache_keeps_the_committed_fig9_rows(tmp_path):
    out = tmp_path / "results" / "mnist" / "cpu"
    rows = {"ε=0.1": {"Clean": 99.1, "FGSM": 6.7, "PGD": 0.2},
            "ε=2": {"Clean": 99.0, "FGSM": 6.8, "PGD": 0.2}}
    _write(str(out / "ladder_summary.json"),
           {"dataset": "mnist", "scale": "cpu", "commands": [],
            "fig9": {"rows": rows, "vanilla": {"Clean": 98.9}}})
    summary = ladder_study.write_results("mnist", "cpu", str(tmp_path / "runs"),
                                         str(tmp_path / "results"))
    assert summary["fig9"]["rows"] == rows
    assert "| ε=2 |" in (out / "ladder_fig9_eps.md").read_text()


def _cache_run(runs, key, command, finished, ev, curve=None):
    wd = lbgat_study.run_workdir(runs, "mnist", "cpu", key)
    _write(os.path.join(wd, "study_train.json"),
           {"finished": finished, "train_seconds": 1.0, "command": command})
    _write(os.path.join(wd, "study_eval.json"),
           {"results": {c: dict(r, hash="h") for c, r in ev.items()}})
    if curve:
        _write(os.path.join(wd, "metrics.jsonl"), curve)


def test_lbgat_unfinished_cached_run_keeps_the_committed_finished_one(tmp_path):
    runs, results = str(tmp_path / "runs"), str(tmp_path / "results")
    out = os.path.join(results, "mnist", "cpu")
    committed = {"label": "LBGAT", "trained": True, "train_seconds": 500.0,
                 "train_command": "cmd", "eval": {"Clean": _col(60.0), "AA": _col(9.0)}}
    _write(os.path.join(out, "lbgat_summary.json"), {"runs": {"lbgat": committed}})
    _cache_run(runs, "lbgat", "cmd-other", False, {})  # retraining, not finished yet
    summary = lbgat_study.write_results("mnist", "cpu", runs, results, tsne_n=0, cpu=True)
    row = summary["runs"]["lbgat"]
    assert row["trained"] and row["train_seconds"] == 500.0 and row["train_command"] == "cmd"
    assert {c: r["accuracy"] for c, r in row["eval"].items()} == {"Clean": 60.0, "AA": 9.0}
    assert "lbgat" not in summary["not_run"]


def test_lbgat_curves_plot_is_not_redrawn_without_every_finished_runs_curve(tmp_path):
    runs, results = str(tmp_path / "runs"), str(tmp_path / "results")
    out = os.path.join(results, "mnist", "cpu")
    # "natural" finished before curves were stored: its curve is only in the old plot.
    _write(os.path.join(out, "lbgat_summary.json"), {"runs": {"natural": {
        "label": "Natural", "trained": True, "train_seconds": 1.0, "train_command": "n",
        "eval": {"Clean": _col(99.0)}}}})
    _write(os.path.join(out, "training_curves.png"), "old plot")
    curve = '{"step": 8, "loss": 1.5, "train/acc": 0.4, "lr": 0.05}\n'
    _cache_run(runs, "trades6", "t", True, {"Clean": _col(90.0)}, curve)
    _cache_run(runs, "lbgat", "l", False, {}, curve)  # unfinished: its curve is not stored
    lbgat_study.write_results("mnist", "cpu", runs, results, tsne_n=0, cpu=True)
    assert open(os.path.join(out, "training_curves.png")).read() == "old plot"
    assert os.path.exists(os.path.join(out, "curves", "trades6", "metrics.jsonl"))
    assert not os.path.exists(os.path.join(out, "curves", "lbgat"))


def test_ladder_merge_refuses_to_mix_tables_of_another_vanilla_model():
    committed = {"dataset": "mnist", "commands": [], "vanilla": {"test_accuracy": 98.93,
                                                                 "seconds": 250.0},
                 "table": {"rows": {"old": {}}}}
    same = {"dataset": "mnist", "commands": [], "vanilla": {"test_accuracy": 98.93,
                                                            "seconds": 300.0}}
    assert ladder_study.merge_committed(same, committed)["table"] == {"rows": {"old": {}}}
    other = {"dataset": "mnist", "commands": [], "vanilla": {"test_accuracy": 98.96}}
    try:
        ladder_study.merge_committed(other, committed)
    except ValueError as e:
        assert "vanilla" in str(e) and "table" in str(e)
    else:
        raise AssertionError("a cache with another vanilla model was merged")
    # A cache that re-ran everything replaces the committed summary whole.
    complete = dict(other, table={"rows": {"new": {}}})
    assert ladder_study.merge_committed(complete, committed) == complete


def test_ladder_partial_whitebox_run_keeps_the_committed_rows(tmp_path):
    out = tmp_path / "results" / "mnist" / "cpu"
    rows = {m: {"clean": 99.0, "FGSM": 7.0, "PGD": 0.1, "n": 1000} for m in ("vanilla", "pgd")}
    _write(str(out / "ladder_summary.json"), {"dataset": "mnist", "scale": "cpu",
                                               "commands": [], "whitebox": rows})
    wd = tmp_path / "runs" / "ladder"
    _write(str(wd / "whitebox.json"), {"vanilla": dict(rows["vanilla"], FGSM=8.0)})
    summary = ladder_study.write_results("mnist", "cpu", str(tmp_path / "runs"),
                                         str(tmp_path / "results"))
    assert set(summary["whitebox"]) == {"vanilla", "pgd"}
    assert summary["whitebox"]["vanilla"]["FGSM"] == 8.0
    assert "| PGD Adv |" in (out / "ladder_table7_whitebox.md").read_text()


def test_lbgat_same_command_but_another_model_is_not_merged(tmp_path):
    # Retrained on other code: same command, different clean accuracy. The
    # committed AA is of the old model and must not sit in the new model's row.
    runs, results = str(tmp_path / "runs"), str(tmp_path / "results")
    out = os.path.join(results, "mnist", "cpu")
    _write(os.path.join(out, "lbgat_summary.json"), {"runs": {"natural": {
        "label": "Natural", "trained": True, "train_seconds": 1.0, "train_command": "n",
        "eval": {"Clean": _col(97.9), "PGD-40": _col(1.2), "AA": _col(0.0)}}}})
    _cache_run(runs, "natural", "n", True, {"Clean": _col(97.6), "PGD-40": _col(2.5)})
    summary = lbgat_study.write_results("mnist", "cpu", runs, results, tsne_n=0, cpu=True)
    assert {c: r["accuracy"] for c, r in summary["runs"]["natural"]["eval"].items()} == \
        {"Clean": 97.6, "PGD-40": 2.5}


def test_ladder_report_ignores_eps_workdirs_of_other_svms(tmp_path):
    """A runs cache may keep ε workdirs of an earlier protocol: only those on the main
    run's current SVMs join the Fig. 9 table."""
    root = tmp_path / "runs"
    svm = {"fingerprint": "f-new", "output": "o-new", "info": {}}
    _write(str(root / "ladder" / "markers" / "svm.json"), svm)
    row = {"Clean": 99.0, "FGSM": 10.0, "PGD": 1.0}
    for name, marker in (("eps0.3", svm), ("eps5", {"fingerprint": "f-old", "output": "o-old"})):
        _write(str(root / "eps" / name / "markers" / "svm.json"), marker)
        _write(str(root / "eps" / name / "evaluate" / "table.json"),
               {"rows": {"LADDER": row, "Vanilla": row}})
    summary = ladder_study.write_results("mnist", "cpu", str(root), str(tmp_path / "results"))
    assert list(summary["fig9"]["rows"]) == ["ε=0.3"]
