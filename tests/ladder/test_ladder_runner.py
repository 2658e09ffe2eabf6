"""The runner on a small chain of units: skip, redo, refuse stale inputs, --force.

Three units ``a`` -> ``b`` -> ``c`` (in the stages ``classifier``, ``latents``
and ``svm``) write files derived from their settings and inputs, so each test
can see which units ran and what they read. The real pipeline's version of
these checks is in ``test_ladder_pipeline.py``.
"""

from __future__ import annotations

import os
import types

import pytest

from advcore.metrics import MetricWriter
from ladder_jax import runner
from ladder_jax.units import Unit
from ladder_jax.workdir import Workdir


class Chain:
    """a (classifier) -> b (latents) -> c (svm); ``settings`` per unit."""

    def __init__(self, root: str):
        self.root = root
        self.ctx = types.SimpleNamespace(wd=Workdir(root), writer=MetricWriter(root))
        self.settings = {"a": 1, "b": 1, "c": 1}
        self.calls: list[str] = []
        # Like a training unit on a nondeterministic device: every run of a
        # gives other content, which it reports as its output digest.
        self.a_reports_digest = False
        self.a_runs = 0

    def _work(self, name: str, inputs: tuple[str, ...]):
        def work(ctx, identity):
            self.calls.append(name)
            read = [open(ctx.wd.path(i, "out.txt")).read() for i in inputs]
            os.makedirs(ctx.wd.path(name), exist_ok=True)
            with open(ctx.wd.path(name, "out.txt"), "w") as f:
                f.write(f"{name}{self.settings[name]}(" + ",".join(read) + ")")
            info = {"value": self.settings[name]}
            if name == "a" and self.a_reports_digest:
                self.a_runs += 1
                info["output_digest"] = f"a{self.settings['a']}-run{self.a_runs}"
            return info

        return work

    def graph(self) -> runner.UnitGraph:
        spec = (("a", "classifier", ()), ("b", "latents", ("a",)), ("c", "svm", ("b",)))
        return runner.UnitGraph(
            [Unit(n, stage, {"x": self.settings[n]}, self._work(n, inputs), inputs=inputs,
                  outputs=(n,)) for n, stage, inputs in spec], self.ctx.wd)

    def run(self, *stages: str, force: bool = False) -> list[str]:
        self.calls = []
        runner.run_stages(self.ctx, stages or ("classifier", "latents", "svm"), force=force,
                          graph=self.graph(),
                          command=lambda s: f"python -m ladder_jax.main --stage={s}")
        return self.calls

    def output(self, name: str) -> str:
        return open(self.ctx.wd.path(name, "out.txt")).read()


@pytest.fixture
def chain(tmp_path):
    return Chain(str(tmp_path))


def test_units_run_once_then_are_skipped(chain):
    assert chain.run() == ["a", "b", "c"]
    assert chain.output("c") == "c1(b1(a1()))"
    assert chain.run() == []
    marker = chain.ctx.wd.read_marker("b")
    assert marker["inputs"] == {"a": chain.ctx.wd.read_marker("a")["output"]}


def test_fingerprint_covers_upstream_settings(chain):
    before = {n: chain.graph().fingerprint(n) for n in "abc"}
    chain.settings["a"] = 2
    after = {n: chain.graph().fingerprint(n) for n in "abc"}
    assert all(before[n] != after[n] for n in "abc")
    chain.settings = {"a": 1, "b": 1, "c": 2}
    only_c = {n: chain.graph().fingerprint(n) for n in "abc"}
    assert only_c["a"] == before["a"] and only_c["b"] == before["b"]
    assert only_c["c"] != before["c"]


def test_changed_setting_redoes_the_unit_and_everything_downstream(chain):
    chain.run()
    chain.settings["b"] = 2
    assert chain.run() == ["b", "c"]
    assert chain.output("c") == "c1(b2(a1()))"


def test_stage_alone_refuses_a_stale_input_and_names_what_to_run(chain):
    chain.run()
    chain.settings["a"] = 2  # e.g. a classifier setting changed
    markers = {n: chain.ctx.wd.read_marker(n) for n in "abc"}
    with pytest.raises(runner.StaleInputError) as err:
        chain.run("svm")
    msg = str(err.value)
    assert "\n" not in msg
    assert "c needs 'b', which is stale: it was made under another config (stale: a, b)" in msg
    assert msg.index("--stage=classifier") < msg.index("--stage=latents")
    assert chain.calls == []
    assert {n: chain.ctx.wd.read_marker(n) for n in "abc"} == markers  # nothing touched
    # Redoing only the first stage is not enough: b still is the old a's.
    assert chain.run("classifier") == ["a"]
    with pytest.raises(runner.StaleInputError, match=r"\(stale: b\); redo it first: "
                       r"python -m ladder_jax.main --stage=latents$"):
        chain.run("svm")


def test_missing_input_is_refused(chain):
    with pytest.raises(runner.StaleInputError, match="it has not run in this workdir"):
        chain.run("latents")


@pytest.mark.parametrize("a_reports_digest", [False, True])
def test_all_never_skips_a_unit_whose_recorded_inputs_differ(chain, a_reports_digest):
    chain.a_reports_digest = a_reports_digest
    chain.run()
    # Settings of a changed, a redone alone, then the change reverted: a is
    # stale again (made under the other settings), and so are b and c,
    # although their own fingerprints match the current config.
    chain.settings["a"] = 2
    chain.run("classifier")
    chain.settings["a"] = 1
    graph = chain.graph()
    assert graph.wd.read_marker("b")["fingerprint"] == graph.fingerprint("b")
    assert not graph.is_current("b") and not graph.is_current("c")
    if a_reports_digest:
        # a's new content differs from what b read: everything after it is redone.
        assert chain.run() == ["a", "b", "c"]
    else:
        # a is a function of its settings: redone under them, it is what b read.
        assert chain.run() == ["a"]
    assert chain.output("c") == "c1(b1(a1()))"
    assert all(chain.graph().is_current(n) for n in "abc")


def test_force_redoes_from_scratch_and_makes_downstream_stale(chain):
    chain.run()  # a reports no digest: --force alone must give it a new output id
    old_output = chain.ctx.wd.read_marker("a")["output"]
    assert chain.run("classifier", force=True) == ["a"]
    # The previous outputs were moved aside, not deleted.
    discarded = chain.ctx.wd.path("discarded")
    (moved,) = os.listdir(discarded)
    assert moved.endswith("-a") and os.path.exists(os.path.join(discarded, moved, "a",
                                                                 "out.txt"))
    assert chain.ctx.wd.read_marker("a")["output"] != old_output
    assert not chain.graph().is_current("b")
    with pytest.raises(runner.StaleInputError, match="its input 'a' was redone after it"):
        chain.run("svm")
    assert chain.run() == ["b", "c"]


def test_refusal_commands_repeat_the_command_line():
    command = runner.command_from_argv(
        ["ladder_jax/main.py", "--config=configs/ladder/mnist.py:smoke", "--stage", "svm",
         "--force", "--workdir=/tmp/run dir", "--config.generate.eps_list=(0.5,2.0)"])
    assert command("latents") == (
        "python -m ladder_jax.main --config=configs/ladder/mnist.py:smoke "
        "'--workdir=/tmp/run dir' '--config.generate.eps_list=(0.5,2.0)' --stage=latents")


def test_stages_do_not_import_each_other():
    """Shared helpers live in the context or library modules, not in another stage."""
    import ast

    from ladder_jax.stages import STAGE_MODULES

    for name, module in STAGE_MODULES.items():
        tree = ast.parse(open(module.__file__).read())
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
                imported.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                imported.update(a.name for a in node.names)
        assert not {i for i in imported if i.startswith("ladder_jax.stages")}, name
        assert module.STAGE == name


def _pipeline_graph(tmp_path, name, **changes):
    """The real pipeline's unit graph for the MNIST config with dotted ``changes``."""
    from configs.ladder import mnist
    from ladder_jax.context import make_context

    config = mnist.get_config("")
    for path, value in changes.items():
        node = config
        *parents, leaf = path.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return runner.build_graph(make_context(config, str(tmp_path / name)))


def _downstream(graph, roots):
    """``roots`` and every unit that reads one of them, transitively."""
    out = set(roots)
    for name, unit in graph.units.items():  # pipeline order: inputs come first
        if out & set(unit.inputs):
            out.add(name)
    return out


@pytest.mark.parametrize("path,value,roots", [
    ("svm.latent_scaling", "pixels255", {"svm"}),
    ("svm.fit_norm", 3e4, {"svm"}),
    ("svm.allow_untrained_normals", True, {"svm"}),
    ("svm.check_eps", (0.1, 0.5), {"svm"}),
    ("svm.flip_target", 0.7, {"svm"}),
    ("generate.eps_unit", "raw", {"svm", "generate/ladder", "generate/cavRandom",
                                  "generate/random", "generate/sweep", "testset/ladder"}),
    ("evaluate.substitute_model.name", "small_cnn", {"substitute"}),
    ("classifier.epochs", 3, {"classifier", "substitute"}),  # one recipe for both
])
def test_fingerprints_react_to_the_new_fields(tmp_path, path, value, roots):
    base = _pipeline_graph(tmp_path, "base")
    changed = _pipeline_graph(tmp_path, "changed", **{path: value})
    assert set(base.units) == set(changed.units)
    differ = {n for n in base.units if base.fingerprint(n) != changed.fingerprint(n)}
    assert differ == _downstream(base, roots)


def test_attack_source_decides_which_model_the_test_sets_read(tmp_path):
    base = _pipeline_graph(tmp_path, "base")
    vanilla = _pipeline_graph(tmp_path, "vanilla", **{"evaluate.attack_source": "vanilla"})
    assert "substitute" in base.units and "substitute" not in vanilla.units
    for key in ("fgsm", "jsma", "pgd", "cw", "aa"):
        assert base.units[f"testset/{key}"].inputs == ("substitute",)
        assert vanilla.units[f"testset/{key}"].inputs == ("classifier",)
    # The "X Adv." training sets and the LADDER test set stay on the vanilla model.
    for name in ("trainset/fgsm", "testset/ladder"):
        assert "substitute" not in base.units[name].inputs
    differ = {n for n in vanilla.units if base.fingerprint(n) != vanilla.fingerprint(n)}
    assert differ == _downstream(base, {f"testset/{k}" for k in ("fgsm", "jsma", "pgd", "cw",
                                                                 "aa")})
    # The substitute is the vanilla recipe under its own random streams.
    from ladder_jax.stages.classifier import ROW_STREAMS

    assert set(ROW_STREAMS["vanilla"]).isdisjoint(ROW_STREAMS["substitute"])
    assert base.units["substitute"].settings["classifier"] == \
        base.units["classifier"].settings["classifier"]
