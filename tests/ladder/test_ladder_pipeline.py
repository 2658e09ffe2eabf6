"""The MNIST ``:smoke`` config through every stage on a tiny real-MNIST subset, then resume.

One module-scoped run (the expensive part) feeds several checks: the
outputs of every stage, the evaluable-checkpoint contract, the svm stage's
direction check and the calibrated ε every later stage uses, the substitute
that crafts the black-box sets, the tables and their titles, the svm stage's
loud failure on untrained normals, that re-running finishes without redoing
any unit, that a unit whose marker is lost resumes from its checkpoint
without training again, that a config change redoes only the affected
units, that a stage run alone refuses stale inputs, and that ``--force``
retrains from scratch.
"""

from __future__ import annotations

import json
import os
import shutil
import time

import numpy as np
import pytest

from advcore.attacks import load_attack_set
from configs.ladder import mnist
from ladder_jax import direction_check, generate, runner, training
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
    expected = {"classifier", "substitute", "latents", "generator/ae", "svm", "generate/ladder",
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
    assert np.load(p("svm", "mu.npy")).shape == np.load(p("svm", "sigma.npy")).shape == (90, 500)
    assert svm["latent_scaling"] == "standardize" and svm["mean_init_cos"] < 0.9
    check, cal = svm["direction_check"], svm["calibration"]
    assert check["eps"] == list(mnist.get_config("smoke").svm.check_eps)
    assert check["num_latents"] == 60 and check["eps_unit"] == "latent_norm"
    assert len(check["ladder_flip"]) == len(check["random_flip"]) == len(check["eps"])
    # The calibration rule on the reported fractions.
    assert (cal["eps"], cal["reached"]) == direction_check.calibrate(
        check["eps"], check["ladder_flip"], 0.5)
    arrays, info = generate.load_generated_set(p("generated", "ladder"))
    assert arrays["x_adv"].shape == (60, 28, 28, 1) and arrays["x_adv"].dtype == np.uint8
    assert np.bincount(arrays["label"], minlength=10).tolist() == [6] * 10  # per-class cap
    # eps_list = (0,): generated at the calibrated eps, recorded with the set.
    assert info["calibrated_eps"] == cal["eps"] and info["eps_unit"] == "latent_norm"
    assert (arrays["target"] != arrays["label"]).all() and np.allclose(arrays["eps"], cal["eps"])
    with open(p("models", "ladder", "report.json")) as f:
        row = json.load(f)
    assert row["eps"] == cal["eps"] and row["eps_calibrated"] is True
    np.testing.assert_array_equal(arrays["fools"], arrays["pred"] != arrays["label"])
    assert info["count"] == 60
    assert os.path.getsize(p("generated", "eps_sweep.png")) > 0
    s = load_attack_set(p("attack_sets", "test", "jsma"))
    assert len(s) == 40 and s.targets is not None and (s.targets != s.labels).all()
    train_set = load_attack_set(p("attack_sets", "train", "fgsm"))
    assert train_set.indices.tolist() == arrays["index"].tolist()  # the same images
    # The "X Adv." training sets are crafted on the vanilla model, the test sets
    # on the substitute, the LADDER test set against the vanilla model.
    assert train_set.meta["source_model"]["row"] == "vanilla"
    assert s.meta["source_model"] == {"row": "substitute", "name": "lenet"}
    ladder_set = load_attack_set(p("attack_sets", "test", "ladder"))
    assert ladder_set.meta["source_model"]["row"] == "vanilla"
    assert ladder_set.meta["attack"]["params"]["eps"] == cal["eps"]


def test_checkpoints_are_evaluable(run_dir):
    from advcore.evaluation import load_evaluable

    for row in ("vanilla", "ladder", "fgsm"):
        apply_fn, variables, spec = load_evaluable(os.path.join(run_dir, "models", row))
        assert spec["models"][spec["default_model"]]["arch"] == "lenet"
        assert spec["models"]["model"]["state_key"] == "model"
        assert spec["dataset"]["name"] == "mnist" and spec["method"] == f"ladder/{row}"
        assert spec["threat_model"]["norm"] == "linf" and spec["threat_model"]["eps"] == 0.3
        assert spec["threat_model"]["step_size"] == 0.05  # LADDER's PGD step, not pgd10's rule
        logits = apply_fn(variables, np.zeros((2, 28, 28, 1), np.float32))
        assert logits.shape == (2, 10)


def test_substitute_crafts_the_black_box_sets(run_dir):
    """Another seed gives other weights; the stored FGSM set is FGSM on the substitute."""
    import jax

    from ladder_jax.context import make_context

    ctx = make_context(_config(), run_dir)
    vanilla, substitute = ctx.load_model_vars("vanilla"), ctx.load_model_vars("substitute")
    differ = [not np.allclose(a, b) for a, b in zip(jax.tree.leaves(vanilla.params),
                                                     jax.tree.leaves(substitute.params))]
    assert all(differ)
    stored = load_attack_set(os.path.join(run_dir, "attack_sets", "test", "fgsm"))
    test = ctx.test_set()
    n = len(stored)
    x, y = test.images[:n], np.asarray(test.labels[:n], np.int32)
    _, run = ctx.attack_program("fgsm", "substitute")
    key = jax.random.key(0)  # FGSM draws nothing

    def crafted(mv):
        x_adv = np.asarray(run(mv, x.astype(np.float32) / 255.0, y, key)[0])
        return np.round(x_adv * 255.0).astype(np.uint8)

    np.testing.assert_array_equal(crafted(substitute), stored.images)
    assert (crafted(vanilla) != stored.images).any()
    # Every model is scored on it, the vanilla model included.
    with open(os.path.join(run_dir, "evaluate", "scores", "vanilla.json")) as f:
        scores = json.load(f)
    assert set(scores) == {"clean", "fgsm", "jsma", "ladder"}
    assert scores["fgsm"] == pytest.approx(ctx.classifier.accuracy(vanilla, stored.images,
                                                                   stored.labels, 40))


def test_tables(run_dir):
    with open(os.path.join(run_dir, "evaluate", "table.json")) as f:
        table = json.load(f)
    rows = table["rows"]
    assert set(rows) == {"Vanilla", "LADDER", "FGSM Adv"}
    # The titles (markdown and JSON) name the model that crafted the sets and the ε.
    with open(os.path.join(run_dir, "svm", "report.json")) as f:
        eps = json.load(f)["calibration"]["eps"]
    assert "crafted on an independently trained substitute (lenet" in table["title"]
    assert f"LADDER rows at ε = {eps:g} (latent_norm, calibrated" in table["title"]
    assert table["attack_source"] == "substitute" and table["finetune_eps"] == eps
    with open(os.path.join(run_dir, "evaluate", "table8.json")) as f:
        t8 = json.load(f)
    assert "against the vanilla model (white box)" in t8["title"]
    assert t8["attack_source"] == "vanilla"
    assert rows["FGSM Adv"]["FGSM"] is None  # "−": trained on this attack
    assert rows["Vanilla"]["FGSM"] is not None and 0 <= rows["LADDER"]["JSMA"] <= 100
    assert set(table["avg_rank"]) == set(rows)
    md = open(os.path.join(run_dir, "evaluate", "table.md")).read()
    assert "Avg. Rank" in md and "−" in md and table["title"] in md
    assert os.path.exists(os.path.join(run_dir, "evaluate", "table5.md"))
    with open(os.path.join(run_dir, "evaluate", "table8.json")) as f:
        assert "TRADES+LADDER" in json.load(f)["rows"]


def test_svm_stage_fails_loudly_on_untrained_normals(run_dir, tmp_path):
    """'none' (the former default) keeps the normals at their init: one-line error, no marker."""
    wd = tmp_path / "run"
    for rel in ("models/vanilla", "latents"):  # the svm stage's inputs, shared read-only
        os.makedirs(os.path.dirname(wd / rel), exist_ok=True)
        os.symlink(os.path.join(run_dir, rel), wd / rel)
    os.makedirs(wd / "markers")
    for marker in ("classifier", "latents"):
        shutil.copy(os.path.join(run_dir, "markers", f"{marker}.json"), wd / "markers")
    c = _config()
    c.svm.latent_scaling = "none"
    with pytest.raises(direction_check.UntrainedNormalsError) as err:
        runner.run(c, str(wd), "svm")
    assert "\n" not in str(err.value) and "svm.allow_untrained_normals=True" in str(err.value)
    assert not (wd / "markers" / "svm.json").exists()  # downstream stages will refuse
    with open(wd / "svm" / "report.json") as f:  # written for inspection
        report = json.load(f)
    assert report["mean_init_cos"] > direction_check.UNTRAINED_COS
    c.svm.allow_untrained_normals = True  # the legacy reproductions go on
    runner.run(c, str(wd), "svm")
    assert Workdir(str(wd)).read_marker("svm")["info"]["mean_init_cos"] == \
        pytest.approx(report["mean_init_cos"])


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
    for unit in ("classifier", "substitute", "latents", "generator/ae", "svm",
                 "generate/ladder", "trainset/fgsm", "testset/fgsm", "testset/jsma",
                 "testset/ladder"):
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
