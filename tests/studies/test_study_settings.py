"""The studies' scale settings name real config fields (a typo only showed after hours)."""

import importlib

import pytest

from experiments import ladder_study


@pytest.mark.parametrize("dataset", ladder_study.DATASETS)
def test_ladder_cpu_overrides_name_existing_config_fields(dataset):
    config = importlib.import_module(f"configs.ladder.{dataset}").get_config("")
    for key, value in ladder_study.scale_overrides("cpu").items():
        node = config
        for part in key.split("."):
            assert part in node, f"{key}: no field {part!r} in configs/ladder/{dataset}.py"
            node = node[part]
        if isinstance(value, dict):
            for sub in value:
                assert sub in node, f"{key}.{sub}: not a field of configs/ladder/{dataset}.py"


def test_ladder_stage_command_spells_every_override():
    cmd = ladder_study.stage_command("mnist", "cpu", "generate", "/tmp/w",
                                     ladder_study.scale_overrides("cpu"))
    assert "--config.attacks.jsma.overrides.num_steps=50" in cmd
    assert "--config.generator.microbatch=16" in cmd


def test_lbgat_run_overrides_change_only_their_fields():
    from experiments import lbgat_study

    def config_of(key):
        run = lbgat_study.RUN_BY_KEY[key]
        return lbgat_study.build_config(run, "mnist", "cpu", "/tmp/runs", cpu=True)

    base, base_over = config_of("bgat")
    diag, diag_over = config_of("bgat_lr001")
    assert base.optim.lr == 0.05 and diag.optim.lr == 0.01
    base_dict, diag_dict = base.to_dict(), diag.to_dict()
    base_dict["optim"].pop("lr"), diag_dict["optim"].pop("lr")
    assert base_dict == diag_dict
    assert diag_over.pop("optim.lr") == 0.01 and base_over.pop("optim.lr") == 0.05
    assert diag_over == base_over


def test_lbgat_cpu_lr01_scale_differs_from_cpu_only_in_lr():
    from experiments import lbgat_study

    for dataset in lbgat_study.DATASETS:
        first = lbgat_study.scale_overrides("cpu", dataset)
        second = lbgat_study.scale_overrides("cpu_lr01", dataset)
        assert (first.pop("optim.lr"), second.pop("optim.lr")) == (0.05, 0.01)
        assert first == second
