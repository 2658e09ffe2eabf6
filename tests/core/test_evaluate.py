"""Data-parallel evaluation: exact counts with padding, worst case, transfer, and the CLI."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advcore import evaluation as evaluate
from advcore import parallel
from advcore.batching import is_shard_local

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def linear_apply(variables, x):
    return x.reshape(x.shape[0], -1) @ variables["w"]


def test_counts_are_exact_with_a_padded_last_batch():
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(37, 2, 2, 1)).astype(np.float32)
    w = rng.normal(size=(4, 3)).astype(np.float32)
    y = rng.integers(0, 3, size=37).astype(np.int32)
    expected_clean = 100.0 * np.mean((x.reshape(37, -1) @ w).argmax(-1) == y)

    def flip_first_half(logits_fn, xb, yb, key):  # a fake "attack": zero images
        return jnp.zeros_like(xb)

    result = evaluate.evaluate_classifier(
        linear_apply, {"w": jnp.asarray(w)}, x, y, {"zero": flip_first_half},
        batch_size=8, mesh=parallel.make_mesh())
    assert result["n"] == 37
    assert result["clean"] == pytest.approx(expected_clean)
    zero_pred = (np.zeros((1, 4)) @ w).argmax(-1)[0]
    assert result["zero"] == pytest.approx(100.0 * np.mean(y == zero_pred))
    clean_ok = (x.reshape(37, -1) @ w).argmax(-1) == y
    assert result["worst_case"] == pytest.approx(100.0 * np.mean(clean_ok & (y == zero_pred)))


def test_shard_local_attacks_run_per_device_shard_with_a_folded_key():
    # A shard-local attack (AutoAttack) sees only its device's shard and the
    # batch key folded with the device index: the result must equal running
    # it by hand on each shard, and differ from one global call (the noise
    # depends on the key, which is how we see the per-shard path was taken).
    from advcore.attacks.autoattack import make_autoattack

    rng = np.random.default_rng(1)
    n, num_devices = 32, 4
    x = rng.uniform(size=(n, 2, 2, 1)).astype(np.float32)
    w = rng.normal(size=(4, 3)).astype(np.float32)
    y = (x.reshape(n, -1) @ w).argmax(-1).astype(np.int32)  # clean accuracy 100%

    def noisy(logits_fn, xb, yb, key):  # key-dependent output (predictions ~ random)
        return jax.random.uniform(key, xb.shape)

    noisy.shard_local = True
    assert is_shard_local(noisy)
    assert is_shard_local(make_autoattack("aa_standard", eps=0.1))
    mesh = parallel.make_mesh()
    assert mesh.devices.size == num_devices
    key = jax.random.PRNGKey(3)
    result = evaluate.evaluate_classifier(
        linear_apply, {"w": jnp.asarray(w)}, x, y, {"noisy": noisy}, batch_size=n,
        mesh=mesh, key=key)
    batch_key = jax.random.fold_in(key, 0)
    per = n // num_devices
    expected = np.concatenate([
        np.asarray(linear_apply({"w": w}, noisy(None, x[i * per:(i + 1) * per], None,
                                                jax.random.fold_in(batch_key, i)))).argmax(-1)
        == y[i * per:(i + 1) * per] for i in range(num_devices)])
    assert result["noisy"] == pytest.approx(100.0 * expected.mean())
    one_call = np.asarray(linear_apply({"w": w}, noisy(None, x, None, batch_key))).argmax(-1) == y
    assert result["noisy"] != pytest.approx(100.0 * one_call.mean())


def test_cli_evaluates_a_training_run_and_transfer(tmp_path):
    from configs.lbgat import mnist
    from lbgat_jax import train

    config = mnist.get_config("smoke,natural")
    config.final_eval = False
    source = str(tmp_path / "source")
    train.train_and_evaluate(config, source)
    target = str(tmp_path / "target")
    config = mnist.get_config("smoke,vanilla_at")
    config.final_eval = False
    train.train_and_evaluate(config, target)

    evaluate.evaluate_run(target, attacks=["fgsm", "pgd5"], n=24, eps=0.3, step_size=0.05,
                          batch_size=8, progress=False)
    with open(os.path.join(target, "eval_robust.json")) as f:
        payload = json.load(f)
    row = payload["accuracies"]
    assert payload["n_examples"] == 24 and 0 <= row["pgd5"] <= row["clean"] <= 100
    assert row["worst_case"] <= min(row["fgsm"], row["pgd5"])
    assert os.path.exists(os.path.join(target, "eval_robust.md"))

    evaluate.evaluate_run(target, attacks=["pgd5"], n=24, eps=0.3, transfer_from=source,
                          batch_size=8, progress=False)
    with open(os.path.join(target, "eval_robust_transfer.json")) as f:
        assert 0 <= json.load(f)["accuracies"]["pgd5"] <= 100

    with pytest.raises(ValueError, match="model must be one of"):
        evaluate.load_evaluable(target, "natural")


def test_cli_refuses_a_bad_cpu_device_count(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "advcore.evaluate", f"--workdir={tmp_path}", "--cpu_devices=-1"],
        capture_output=True, text=True, cwd=REPO)
    assert proc.returncode != 0
    assert "--cpu_devices must be >= 0, got -1" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_autoattack_runs_resumably_stage_by_stage_when_given_a_directory(tmp_path):
    from advcore.attacks import make_attack

    rng = np.random.default_rng(2)
    n = 24
    x = rng.uniform(size=(n, 4, 4, 1)).astype(np.float32)
    w = rng.normal(size=(16, 10)).astype(np.float32)
    y = (x.reshape(n, -1) @ w).argmax(-1).astype(np.int32)
    aa = make_attack("aa_standard", eps=0.05, num_steps=5, n_queries=20)
    kwargs = dict(batch_size=8, mesh=parallel.make_mesh(), key=jax.random.PRNGKey(0),
                  resume_dir=str(tmp_path / "state"))
    first = evaluate.evaluate_classifier(linear_apply, {"w": jnp.asarray(w)}, x, y,
                                         {"aa_standard": aa}, **kwargs)
    state = json.load(open(tmp_path / "state" / "aa_standard.state.json"))
    assert state["finished"] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    stages = first["autoattack_stages"]["aa_standard"]
    # Robust accuracy never rises along the cascade, and the table's number
    # is the last stage's.
    order = [stages["clean"]] + [stages[s] for s in state["finished"]]
    assert all(a >= b for a, b in zip(order, order[1:]))
    assert first["aa_standard"] == pytest.approx(stages["robust"])
    again = evaluate.evaluate_classifier(linear_apply, {"w": jnp.asarray(w)}, x, y,
                                         {"aa_standard": aa}, **kwargs)
    assert again["aa_standard"] == first["aa_standard"]  # read back from the saved state
