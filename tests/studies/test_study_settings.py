"""The studies' scale settings name real config fields (a typo only showed after hours)."""

import importlib

import pytest

from experiments import ladder_study


@pytest.mark.parametrize("scale", ("cpu", "cpu_svm255"))
@pytest.mark.parametrize("dataset", ladder_study.DATASETS)
def test_ladder_cpu_overrides_name_existing_config_fields(dataset, scale):
    config = importlib.import_module(f"configs.ladder.{dataset}").get_config("")
    for key, value in ladder_study.scale_overrides(scale).items():
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


@pytest.mark.parametrize("dataset", ("mnist", "fashion_mnist"))
def test_lbgat_cpu60k_scale_is_the_config_recipe_on_the_whole_split(dataset):
    from experiments import lbgat_study

    run = lbgat_study.RUN_BY_KEY["lbgat_trades0"]
    config, overrides = lbgat_study.build_config(run, dataset, "cpu60k", "/tmp/runs", cpu=True)
    recipe = importlib.import_module(f"configs.lbgat.{dataset}").get_config("lbgat_trades,alpha0")
    assert config.dataset.train_limit == 0  # the whole 60k split
    assert config.optim.lr == recipe.optim.lr == 0.01
    assert config.num_epochs == 10 and config.attack.num_steps == 5
    # The recipe's decays at 55 / 75 / 90 % of training, scaled to 10 epochs.
    # The config now drops after epochs 54 / 74 / 89 (TRADES' script drops
    # from 1-based epochs 55 / 75 / 90); the cpu60k study keeps the schedule
    # its committed runs were trained with, one epoch later at 100 epochs.
    assert tuple(recipe.optim.decay_epochs) == (54, 74, 89)
    assert [round((e + 1) / recipe.num_epochs * 10) for e in recipe.optim.decay_epochs] == \
        list(config.optim.decay_epochs)
    assert "dataset.train_limit" not in overrides and "optim.lr" not in overrides


def test_ladder_svm255_scale_is_cpu_with_the_authors_svm_inputs(tmp_path):
    from ladder_jax.context import make_context
    from ladder_jax.runner import build_graph

    cpu = ladder_study.scale_overrides("cpu")
    svm255 = ladder_study.scale_overrides("cpu_svm255")
    assert svm255.pop("svm.legacy_pixel_scale") is True
    assert svm255 == cpu
    # The stages it links from `cpu` keep their fingerprints (so the copied
    # markers are valid); the SVMs and every unit that reads them change.
    graphs = {s: build_graph(make_context(ladder_study._load_config("mnist", s),
                                          str(tmp_path / s)))
              for s in ("cpu", "cpu_svm255")}
    cpu_graph, svm_graph = graphs["cpu"], graphs["cpu_svm255"]
    for stage in ladder_study.UPSTREAM_STAGES:
        for unit in cpu_graph.of_stage(stage):
            assert cpu_graph.fingerprint(unit.name) == svm_graph.fingerprint(unit.name)
    reads_svm = {"svm"}
    for name, unit in cpu_graph.units.items():
        if reads_svm & set(unit.inputs):
            reads_svm.add(name)
    for stage in ("svm", "generate", "finetune", "evaluate"):
        for unit in cpu_graph.of_stage(stage):
            changed = cpu_graph.fingerprint(unit.name) != svm_graph.fingerprint(unit.name)
            assert changed == (unit.name in reads_svm), unit.name
