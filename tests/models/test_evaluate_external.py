"""README "Evaluate a PyTorch checkpoint", as written, on a checkpoint PyTorch saves here."""

import json
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip(
    "torch", reason="PyTorch is a test-only dependency (pip install torch==2.13.0)")

from torch_reference_models import SmallCNN  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_cli_scores_a_torch_state_dict_and_states_the_threat_model(tmp_path):
    torch.manual_seed(0)
    model = SmallCNN()  # TRADES' MNIST SmallCNN, random weights
    path = tmp_path / "smallcnn.pt"
    torch.save(model.state_dict(), path)
    proc = subprocess.run(
        [sys.executable, "-m", "advcore.evaluate", "--arch=small_cnn", f"--checkpoint={path}",
         "--dataset=mnist", "--eps=0.3", "--attacks=fgsm,pgd20", "--n=16", "--batch_size=8"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(tmp_path / "eval_smallcnn.json") as f:
        payload = json.load(f)
    assert payload["n_examples"] == 16 and payload["eps"] == 0.3
    assert payload["threat_model"] == "Linf" and payload["dataset"] == "mnist"
    assert payload["attacks"]["pgd20"]["eps"] == 0.3
    assert payload["model_spec"]["source"]["format"] == "torch_zip"
    assert 0.0 <= payload["robust_acc"] <= payload["clean_acc"] <= 100.0
    assert "Linf eps=0.3" in proc.stdout  # the printed title states the threat model
    # No eps: refused in one line (an external checkpoint records no threat model).
    proc = subprocess.run(
        [sys.executable, "-m", "advcore.evaluate", "--arch=small_cnn", f"--checkpoint={path}",
         "--dataset=mnist"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "--checkpoint needs --eps" in proc.stderr
