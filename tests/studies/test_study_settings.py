"""The studies' scale settings name real config fields (a typo only showed after hours)."""

import importlib

import pytest

from experiments import ladder_study


@pytest.mark.parametrize("scale", ("cpu", "cpu_svm255", "cpu_previous_defaults",
                                   "cpu_svm255_previous_defaults"))
@pytest.mark.parametrize("dataset", ladder_study.DATASETS)
def test_ladder_cpu_overrides_name_existing_config_fields(dataset, scale):
    config = importlib.import_module(f"configs.ladder.{dataset}").get_config(
        ladder_study.SCALE_TOKENS.get(scale, ""))
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


def _flat(config):
    from advcore.config_schema import flatten

    return flatten(config, ("model.kwargs", "attacks.fgsm.overrides", "attacks.pgd.overrides",
                            "attacks.cw.overrides", "attacks.jsma.overrides",
                            "attacks.aa.overrides", "evaluate.substitute_model.kwargs"))


@pytest.mark.parametrize("scale,changed", [
    ("cpu_svm255", {"svm.latent_scaling": "pixels255"}),
    # The former defaults: the committed tables of the former cpu / cpu_svm255 scales.
    ("cpu_previous_defaults", {
        "svm.latent_scaling": "none", "svm.allow_untrained_normals": True,
        "generate.eps_unit": "raw", "generate.eps_list": (0.5,), "finetune.eps": 0.5,
        "svm.check_eps": (0.5, 2.0, 5.0, 10.0, 20.0, 30.0), "evaluate.attack_source": "vanilla"}),
    ("cpu_svm255_previous_defaults", {
        "svm.latent_scaling": "pixels255", "svm.allow_untrained_normals": True,
        "generate.eps_unit": "raw", "generate.eps_list": (0.5,), "finetune.eps": 0.5,
        "evaluate.attack_source": "vanilla"}),
])
def test_ladder_linked_scales_are_cpu_with_their_svm_and_eps_settings(tmp_path, scale, changed):
    from ladder_jax.context import make_context
    from ladder_jax.runner import build_graph

    assert ladder_study.scale_overrides(scale) == ladder_study.scale_overrides("cpu")
    assert ladder_study.UPSTREAM_SCALE[scale] == "cpu"
    cpu, other = (_flat(ladder_study._load_config("mnist", s)) for s in ("cpu", scale))
    differ = {k: other[k] for k in cpu if cpu[k] != other[k]}
    for key, value in changed.items():
        assert differ.pop(key) == value, key
    # What is left is the raw ε unit's own settings (check grid, sweep, search).
    assert set(differ) <= {"svm.check_eps", "generate.sweep_eps", "generate.eps_init",
                           "generate.eps_step", "generate.eps_max"}, differ
    # The stages it links from `cpu` keep their fingerprints (so the copied
    # markers are valid); the SVMs and every unit that reads them change.
    graphs = {s: build_graph(make_context(ladder_study._load_config("mnist", s),
                                          str(tmp_path / s)))
              for s in ("cpu", scale)}
    cpu_graph, other_graph = graphs["cpu"], graphs[scale]
    for stage in ladder_study.UPSTREAM_STAGES:
        for unit in other_graph.of_stage(stage):
            assert cpu_graph.fingerprint(unit.name) == other_graph.fingerprint(unit.name)
    reads_svm = {"svm"}
    for name, unit in cpu_graph.units.items():
        if reads_svm & set(unit.inputs):
            reads_svm.add(name)
    for name in reads_svm & set(other_graph.units):
        assert cpu_graph.fingerprint(name) != other_graph.fingerprint(name), name
    if scale == "cpu_svm255":  # same ε unit and attack source: only the SVMs' readers change
        for name in cpu_graph.units:
            changed_fp = cpu_graph.fingerprint(name) != other_graph.fingerprint(name)
            assert changed_fp == (name in reads_svm), name


def test_ladder_stage_command_spells_the_scale_tokens():
    cmd = ladder_study.stage_command("mnist", "cpu_previous_defaults", "svm", "/tmp/w",
                                     ladder_study.scale_overrides("cpu_previous_defaults"))
    assert "--config=configs/ladder/mnist.py:previous_defaults" in cmd
    cmd = ladder_study.stage_command("mnist", "cpu", "svm", "/tmp/w", {})
    assert "--config=configs/ladder/mnist.py" in cmd
    assert ladder_study.fig9_eps("cpu")[-1] == 1.0  # latent-norm units
    assert ladder_study.fig9_eps("cpu_previous_defaults") == ladder_study.FIG9_EPS  # raw
