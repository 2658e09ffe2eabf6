"""The MNIST ``:smoke`` config through every stage on a tiny real-MNIST subset, then resume.

One module-scoped run (the expensive part) feeds several checks: the
outputs of every stage, the evaluable-checkpoint contract, the tables, that
re-running finishes without redoing any unit, that a unit whose marker is
lost resumes from its checkpoint without training again, that a config
change redoes only the affected units, that a stage run alone refuses stale
inputs, and that ``--force`` retrains from scratch.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

from advcore.attacks import load_attack_set
from configs.ladder import mnist
from ladder_jax import generate, runner, training
from ladder_jax.workdir import Workdir

try:
    from advcore.data import load_split

    load_split("mnist", "test", limit=1)
except Exception as e:  # pragma: no cover - depends on the machine
    pytest.skip(f"real MNIST is not available offline: {e}", allow_module_level=True)


def _config():
    c = mnist.get_config("smoke")
    # Fewer rows and attacks than the full smoke run keep this test short;
    # the ladder, TRADES+LADDER, a baseline and a targeted attack set remain.
    c.generate.variants = ("ladder",)
    c.finetune.rows = ("ladder", "trades_ladder", "fgsm")
    c.evaluate.attacks = ("fgsm", "jsma")
    return c


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("ladder_smoke"))
    runner.run(_config(), workdir, "all")
    return workdir


class _Counter:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *a, **kw):
        self.calls += 1
        return self.fn(*a, **kw)


def test_every_stage_wrote_its_outputs(run_dir):
    wd = Workdir(run_dir)
    units = set(wd.done_units())
    expected = {"classifier", "latents", "generator/ae", "svm", "generate/ladder",
                "generate/sweep", "trainset/fgsm", "finetune/ladder", "finetune/trades_ladder",
                "finetune/fgsm", "testset/fgsm", "testset/jsma", "testset/ladder",
                "score/vanilla", "score/ladder", "score/trades_ladder", "score/fgsm"}
    assert expected <= units, expected - units
    p = lambda *a: os.path.join(run_dir, *a)  # noqa: E731
    z = np.load(p("latents", "train_z.npy"))
    assert z.shape == (400, 500)
    assert os.path.getsize(p("generator", "ae", "reconstruction.png")) > 0
    with open(p("generator", "ae", "report.json")) as f:
        rep = json.load(f)
    assert 0 < rep["mse_train"] < 1 and 0 < rep["mse_test"] < 1
    with open(p("svm", "report.json")) as f:
        svm = json.load(f)
    assert len(svm["pairs"]) == 90 and len(svm["heldout_accuracy"]) == 90
    assert np.load(p("svm", "att_w.npy")).shape == (90, 500, 500)
    arrays, info = generate.load_generated_set(p("generated", "ladder"))
    assert arrays["x_adv"].shape == (60, 28, 28, 1) and arrays["x_adv"].dtype == np.uint8
    assert np.bincount(arrays["label"], minlength=10).tolist() == [6] * 10  # per-class cap
    assert (arrays["target"] != arrays["label"]).all() and np.allclose(arrays["eps"], 0.5)
    np.testing.assert_array_equal(arrays["fools"], arrays["pred"] != arrays["label"])
    assert info["count"] == 60
    assert os.path.getsize(p("generated", "eps_sweep.png")) > 0
    s = load_attack_set(p("attack_sets", "test", "jsma"))
    assert len(s) == 40 and s.targets is not None and (s.targets != s.labels).all()
    assert load_attack_set(p("attack_sets", "train", "fgsm")).indices.tolist() == \
        arrays["index"].tolist()  # baselines perturb the same training images


def test_checkpoints_are_evaluable(run_dir):
    from advcore.evaluation import load_evaluable

    for row in ("vanilla", "ladder", "fgsm"):
        apply_fn, variables, spec = load_evaluable(os.path.join(run_dir, "models", row))
        assert spec["models"][spec["default_model"]]["arch"] == "lenet"
        assert spec["models"]["model"]["state_key"] == "model"
        assert spec["dataset"]["name"] == "mnist" and spec["method"] == f"ladder/{row}"
        assert spec["threat_model"]["norm"] == "linf" and spec["threat_model"]["eps"] == 0.3
        logits = apply_fn(variables, np.zeros((2, 28, 28, 1), np.float32))
        assert logits.shape == (2, 10)


def test_tables(run_dir):
    with open(os.path.join(run_dir, "evaluate", "table.json")) as f:
        table = json.load(f)
    rows = table["rows"]
    assert set(rows) == {"Vanilla", "LADDER", "FGSM Adv"}
    assert rows["FGSM Adv"]["FGSM"] is None  # "−": trained on this attack
    assert rows["Vanilla"]["FGSM"] is not None and 0 <= rows["LADDER"]["JSMA"] <= 100
    assert set(table["avg_rank"]) == set(rows)
    md = open(os.path.join(run_dir, "evaluate", "table.md")).read()
    assert "Avg. Rank" in md and "−" in md
    assert os.path.exists(os.path.join(run_dir, "evaluate", "table5.md"))
    with open(os.path.join(run_dir, "evaluate", "table8.json")) as f:
        assert "TRADES+LADDER" in json.load(f)["rows"]


def test_rerun_does_not_redo_finished_work(run_dir, monkeypatch):
    wd = Workdir(run_dir)
    before = {u: wd.read_marker(u) for u in wd.done_units()}
    fits = _Counter(training.fit)
    monkeypatch.setattr(training, "fit", fits)
    runner.run(_config(), run_dir, "all")
    assert fits.calls == 0
    after = {u: wd.read_marker(u) for u in wd.done_units()}
    assert after == before  # no marker rewritten: every unit was skipped


def test_lost_marker_resumes_from_checkpoint_without_training(run_dir, monkeypatch):
    wd = Workdir(run_dir)
    ckpt_dir = os.path.join(run_dir, "models", "ladder", "checkpoints")
    steps_before = sorted(os.listdir(ckpt_dir))
    metrics = os.path.join(run_dir, "models", "ladder", "metrics.jsonl")
    lines_before = open(metrics).read()
    wd.clear_marker("finetune/ladder")
    runner.run(_config(), run_dir, "finetune")
    assert wd.read_marker("finetune/ladder") is not None
    assert sorted(os.listdir(ckpt_dir)) == steps_before
    assert open(metrics).read() == lines_before  # no epoch was trained again


def test_config_change_redoes_only_affected_units(run_dir):
    c = _config()
    c.finetune.alpha = 0.3
    wd = Workdir(run_dir)
    old = {u: wd.read_marker(u)["fingerprint"] for u in wd.done_units()}
    runner.run(c, run_dir, "finetune")
    new = {u: wd.read_marker(u)["fingerprint"] for u in wd.done_units()}
    for unit in ("classifier", "latents", "generator/ae", "svm", "generate/ladder",
                 "trainset/fgsm", "testset/fgsm", "testset/jsma", "testset/ladder"):
        assert new[unit] == old[unit]
    for unit in ("finetune/ladder", "finetune/fgsm", "finetune/trades_ladder"):
        assert new[unit] != old[unit]


def test_stage_alone_refuses_stale_upstream(run_dir):
    """``--stage=svm`` after a classifier change: refused in one line, nothing touched."""
    c = _config()
    c.classifier.lr = 0.02
    wd = Workdir(run_dir)
    before = {u: wd.read_marker(u) for u in wd.done_units()}
    with pytest.raises(runner.StaleInputError) as err:
        runner.run(c, run_dir, "svm")
    msg = str(err.value)
    assert msg.startswith("svm needs 'latents', which is stale") and "\n" not in msg
    assert "(stale: classifier, latents)" in msg
    assert msg.index("--stage=classifier") < msg.index("--stage=latents")
    assert {u: wd.read_marker(u) for u in wd.done_units()} == before


def test_force_retrains_from_scratch(run_dir):
    """``--force`` moves the finished model aside and trains again from step 0 (this
    test changes the run: it comes last)."""
    from advcore.metrics import read_metrics
    from ladder_jax.runner import build_graph

    wd = Workdir(run_dir)
    vanilla = os.path.join(run_dir, "models", "vanilla")
    old_marker = wd.read_marker("classifier")
    old_steps = sorted(os.listdir(os.path.join(vanilla, "checkpoints")))
    old_train = [r["step"] for r in read_metrics(os.path.join(vanilla, "metrics.jsonl"))
                 if "loss" in r]
    start = time.time()
    ctx = runner.run(_config(), run_dir, "classifier", force=True)
    discarded = os.path.join(run_dir, "discarded")
    (moved,) = [d for d in os.listdir(discarded) if d.endswith("-classifier")]
    assert sorted(os.listdir(os.path.join(discarded, moved, "models", "vanilla",
                                          "checkpoints"))) == old_steps
    records = list(read_metrics(os.path.join(vanilla, "metrics.jsonl")))
    train = [r["step"] for r in records if "loss" in r]
    # A new log holding only this training, from the first epoch on.
    assert train == old_train and all(r["time"] >= start for r in records)
    marker = wd.read_marker("classifier")
    assert marker["fingerprint"] == old_marker["fingerprint"]
    assert marker["finished_at"] >= start
    # Downstream units stay current only if the retrained model is bit-identical.
    same = marker["info"]["output_digest"] == old_marker["info"]["output_digest"]
    assert build_graph(ctx).is_current("latents") == same
