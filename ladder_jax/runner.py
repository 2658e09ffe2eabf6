"""The LADDER pipeline runner: which units are done, which are stale, running the rest.

``run(config, workdir, stage, force)`` builds every stage's units
(``ladder_jax.stages``) into one graph and runs the selected stages in
pipeline order.

Fingerprints and inputs
-----------------------
A unit's *fingerprint* hashes its own settings and the fingerprints of the
units it reads, as the current config defines them, recursively: ``svm``'s
covers ``latents``', which covers ``classifier``'s. A finished unit's marker
records

* ``fingerprint``: the fingerprint it was made under;
* ``inputs``: for every unit it read, that unit's ``output`` id at the time;
* ``output``: its own output id, a hash of the fingerprint, the input ids and
  the content: a training unit reports its final checkpoint's SHA-256
  (``output_digest``), so a retrained model that differs in any bit (a
  nondeterministic GPU, a newer library) gets a new id while a restored one
  keeps its id. The other units' outputs are functions of their config and
  inputs; they get a fresh token only when forced.

A unit is *current* when its marker's fingerprint is the expected one, every
input is current, and every recorded input id is that input's output id now.
Only current units are skipped, so ``--stage=all`` never skips a unit whose
config, or whose inputs' config or outputs, changed since it ran.

Stale inputs
------------
Before a unit runs, every input must be current. If one is missing or stale
the runner refuses with one line (``StaleInputError``, a ``ValueError``)
naming it and the commands that redo it. It never runs unselected upstream
stages by itself: those may be hours of training. ``--stage=all`` runs the
stages in pipeline order, so there every input is redone first.

--force
-------
``--force`` moves the selected units' outputs aside (``discarded/``) before
running them, so a training unit restarts from scratch instead of restoring
its finished checkpoint. Downstream units become stale, except after a
retraining that reproduced the model bit for bit (same checkpoint digest).
"""

from __future__ import annotations

import logging
import os
import shlex
import time
import uuid
from typing import Any, Callable, Optional, Sequence

from ladder_jax.config_schema import STAGES
from ladder_jax.units import Unit, stable_hash
from ladder_jax.workdir import Workdir

log = logging.getLogger("ladder_jax")


class StaleInputError(ValueError):
    """A unit's input is missing or was made under another config or from other inputs."""


def default_command(workdir: str) -> Callable[[str], str]:
    """How the refusal message spells the command that runs a stage."""

    def command(stage: str) -> str:
        return (f"python -m ladder_jax.main --config=<the same config> --workdir={workdir} "
                f"--stage={stage}")

    return command


def command_from_argv(argv: Sequence[str]) -> Callable[[str], str]:
    """``stage -> the command line argv[1:] with --stage=<stage>`` (no ``--force``)."""
    kept, skip = [], False
    for arg in argv[1:]:
        if skip:
            skip = False
            continue
        name = arg.lstrip("-").split("=")[0]
        if name == "stage" and "=" not in arg:
            skip = True  # "--stage svm": its value follows
            continue
        if name in ("stage", "force", "noforce"):
            continue
        kept.append(shlex.quote(arg))

    def command(stage: str) -> str:
        return " ".join(["python -m ladder_jax.main", *kept, f"--stage={stage}"])

    return command


class UnitGraph:
    """Every unit of a run (in pipeline order), their fingerprints and currency."""

    def __init__(self, units: Sequence[Unit], wd: Workdir):
        self.wd = wd
        self.units: dict[str, Unit] = {}
        for unit in units:
            if unit.name in self.units:
                raise ValueError(f"unit names must be unique, got {unit.name!r} twice")
            missing = [i for i in unit.inputs if i not in self.units]
            if missing:
                # Inputs must come earlier: the order is the order units run in.
                raise ValueError(f"unit {unit.name!r} reads {missing}, which are not units "
                                 "defined before it")
            self.units[unit.name] = unit
        self._fingerprints: dict[str, str] = {}

    def of_stage(self, stage: str) -> list[Unit]:
        return [u for u in self.units.values() if u.stage == stage]

    def fingerprint(self, name: str) -> str:
        """The fingerprint ``name`` has under the current config."""
        if name not in self._fingerprints:
            unit = self.units[name]
            self._fingerprints[name] = stable_hash({
                "settings": dict(unit.settings),
                "inputs": {i: self.fingerprint(i) for i in unit.inputs}})
        return self._fingerprints[name]

    def marker(self, name: str) -> Optional[dict]:
        return self.wd.read_marker(name)

    def why_stale(self, name: str) -> Optional[str]:
        """None when ``name`` is current, else why it is not."""
        marker = self.marker(name)
        if marker is None:
            return "it has not run in this workdir"
        if marker.get("fingerprint") != self.fingerprint(name):
            return "it was made under another config"
        recorded = marker.get("inputs") or {}
        for i in self.units[name].inputs:
            if self.why_stale(i) is not None:
                return f"its input {i!r} is stale"
            if recorded.get(i) != self.marker(i).get("output"):
                return f"its input {i!r} was redone after it"
        return None

    def is_current(self, name: str) -> bool:
        return self.why_stale(name) is None

    def stale_upstream(self, name: str) -> list[str]:
        """``name`` and every unit it depends on that is not current, in pipeline order."""
        needed, todo = set(), [name]
        while todo:
            n = todo.pop()
            if n not in needed:
                needed.add(n)
                todo.extend(self.units[n].inputs)
        return [n for n in self.units if n in needed and not self.is_current(n)]


class Runner:
    """Runs units of a graph on a context: skip, refuse or run, then mark."""

    def __init__(self, ctx: Any, graph: UnitGraph, command: Callable[[str], str]):
        self.ctx, self.graph, self.command = ctx, graph, command

    def _refusal(self, unit: Unit, stale_input: str, reason: str) -> str:
        stale = self.graph.stale_upstream(stale_input)
        stages = [s for s in STAGES if any(self.graph.units[n].stage == s for n in stale)]
        commands = " && ".join(self.command(s) for s in stages)
        return (f"{unit.name} needs {stale_input!r}, which is stale: {reason} (stale: "
                f"{', '.join(stale)}); redo it first: {commands}")

    def run_unit(self, unit: Unit, force: bool = False) -> bool:
        """Runs ``unit`` unless it is current (and not forced); True when it ran."""
        graph, wd = self.graph, self.ctx.wd
        if not force and graph.is_current(unit.name):
            log.info("%s: done, skipped", unit.name)
            return False
        for i in unit.inputs:
            reason = graph.why_stale(i)
            if reason is not None:
                raise StaleInputError(self._refusal(unit, i, reason))
        wd.clear_marker(unit.name)
        if force:
            moved = wd.move_aside(unit.name, unit.outputs)
            if moved:
                log.info("%s: --force moved its previous outputs to %s", unit.name, moved)
        fingerprint = graph.fingerprint(unit.name)
        inputs = {i: graph.marker(i)["output"] for i in unit.inputs}
        identity = {"unit": unit.name, "fingerprint": fingerprint, "inputs": inputs}
        log.info("%s: running", unit.name)
        start = time.time()
        info = dict(unit.work(self.ctx, identity) or {})
        info["seconds"] = round(time.time() - start, 3)
        content = info.get("output_digest") or (uuid.uuid4().hex if force else None)
        output = stable_hash({"fingerprint": fingerprint, "inputs": inputs, "content": content})
        wd.write_marker(unit.name, {"fingerprint": fingerprint, "inputs": inputs,
                                    "output": output, "info": info})
        self.ctx.writer.write(0, {f"{unit.name}/{k}": v for k, v in info.items()
                                  if isinstance(v, (int, float))})
        written = ", ".join(o + ("/" if os.path.isdir(wd.path(o)) else "")
                            for o in unit.outputs if os.path.exists(wd.path(o)))
        log.info("%s: finished in %.1fs, wrote %s", unit.name, info["seconds"],
                 written or "nothing")
        return True


def build_graph(ctx: Any) -> UnitGraph:
    """The units of every stage (whether selected or not: fingerprints need them all)."""
    from ladder_jax.stages import STAGE_MODULES

    return UnitGraph([u for name in STAGES for u in STAGE_MODULES[name].units(ctx)], ctx.wd)


def run_stages(ctx: Any, stages: Sequence[str], force: bool = False,
               command: Optional[Callable[[str], str]] = None,
               graph: Optional[UnitGraph] = None) -> UnitGraph:
    """Runs the units of ``stages`` (in pipeline order) on an open context.

    ``graph`` defaults to every stage's units for ``ctx`` (``build_graph``).
    """
    from ladder_jax.stages import STAGE_MODULES

    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"stages must be in {STAGES}, got {unknown}")
    graph = build_graph(ctx) if graph is None else graph
    runner = Runner(ctx, graph, command or default_command(ctx.wd.root))
    log.info("workdir %s: stages %s%s", ctx.wd.root,
             ", ".join(s for s in STAGES if s in stages), " (forced)" if force else "")
    for name in STAGES:  # always in pipeline order
        if name not in stages:
            continue
        start = time.time()
        log.info("stage %s: %d unit(s)", name, len(graph.of_stage(name)))
        for unit in graph.of_stage(name):
            runner.run_unit(unit, force)
        finish = getattr(STAGE_MODULES[name], "finish", None)
        if finish is not None:
            finish(ctx)
        seconds = time.time() - start
        ctx.writer.write(0, {f"stage_seconds/{name}": seconds})
        log.info("stage %s finished in %.1fs", name, seconds)
    return graph


def run(config: Any, workdir: str, stage: str = "all", force: bool = False,
        command: Optional[Callable[[str], str]] = None) -> Any:
    """Runs ``stage`` (or every stage of ``config.stages``) on ``workdir``; returns the context.

    Raises:
      StaleInputError: a selected unit reads a missing or stale unit of an
        unselected stage.
    """
    from ladder_jax.context import make_context

    if stage != "all" and stage not in STAGES:
        raise ValueError(f"stage must be one of {('all',) + STAGES}, got {stage!r}")
    ctx = make_context(config, workdir)
    run_stages(ctx, tuple(config.stages) if stage == "all" else (stage,), force, command)
    return ctx
