"""LBGAT-family training: build the run, train it with ``advcore.train_loop``, evaluate it.

``train_and_evaluate(config, workdir)`` trains any method of
``lbgat_jax.methods`` from a config, resumes exactly from the newest intact
checkpoint in ``workdir`` (``advcore.train_loop``: exact resume, clean stops on
NaN / SIGINT / SIGTERM), and ends with a clean/robust table at the run's
threat model. Every checkpoint carries the run spec (``advcore.run_spec``),
so ``python -m advcore.evaluate --workdir=...`` can evaluate it later.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import ml_collections
from flax import serialization

from advcore import checkpoint as ckpt_lib
from advcore import data as data_lib
from advcore import evaluation, files, parallel, run_spec, tables, train_loop
from advcore import optim as optim_lib
from advcore.metrics import MetricWriter
from advcore.train_loop import NonFiniteLossError  # noqa: F401 (re-exported)
from lbgat_jax import state as state_lib
from lbgat_jax import step as step_lib
from lbgat_jax.config_schema import RESUMABLE, validate_config
from lbgat_jax.methods import get_method

log = logging.getLogger("advcore")


def _augment_for(config, info) -> str:
    return info.train_augment if config.dataset.augment == "default" else config.dataset.augment


def make_run_spec(config, spec, num_classes: int) -> dict:
    """The run spec of an LBGAT-family run (its models, resolved, and threat model)."""
    robust_kwargs = dict(config.model.robust.kwargs)
    if config.shared_conv_separate_bn:
        robust_kwargs["num_bn_sets"] = 2
    models = {"robust": run_spec.model_spec(config.model.robust.name, num_classes,
                                            kwargs=robust_kwargs, state_key="robust")}
    if spec.teacher == "learnable":
        if config.shared_conv_separate_bn:  # M_n is M_r's convolutions with BN set 1
            models["natural"] = run_spec.model_spec(
                config.model.robust.name, num_classes, kwargs=robust_kwargs,
                call_kwargs={"bn_set": 1}, state_key="robust")
        else:
            models["natural"] = run_spec.model_spec(
                config.model.natural.name, num_classes,
                kwargs=dict(config.model.natural.kwargs), state_key="natural")
    return run_spec.run_spec(
        method=config.method,
        dataset={"name": config.dataset.name, "source": config.dataset.source,
                 "data_dir": config.dataset.data_dir, "test_split": config.dataset.test_split},
        models=models, default_model="robust",
        threat_model={"norm": config.attack.norm, "eps": config.eval.eps,
                      "attacks": eval_attack_names(config),
                      "step_size": config.eval.step_size or None})


def eval_attack_names(config) -> list[str]:
    return [a.strip() for a in config.eval.attacks.split(",") if a.strip()]


def build_run(config: ml_collections.ConfigDict, mesh=None) -> dict[str, Any]:
    """Everything a run needs, without training: used by train and tests."""
    validate_config(config)
    spec = get_method(config.method)
    info = data_lib.get_dataset_info(config.dataset.name)
    mesh = parallel.make_mesh() if mesh is None else mesh
    if config.batch_size % mesh.devices.size:
        raise ValueError(f"config.batch_size must be divisible by the device count "
                         f"({mesh.devices.size}), got {config.batch_size}")
    train = data_lib.load_split(
        config.dataset.name, config.dataset.train_split, source=config.dataset.source,
        data_dir=config.dataset.data_dir or None, limit=config.dataset.train_limit or None,
    )
    if config.batch_size > len(train.labels):
        raise ValueError(f"config.batch_size must be <= the number of training examples "
                         f"({len(train.labels)}), got {config.batch_size}")
    steps_per_epoch = data_lib.steps_per_epoch(len(train.labels), config.batch_size)
    lr_schedule = optim_lib.epoch_piecewise_schedule(
        config.optim.lr, steps_per_epoch, tuple(config.optim.decay_epochs),
        config.optim.decay_factor, config.optim.warmup_epochs, config.optim.warmup_lr,
    )
    tx = optim_lib.torch_sgd(
        lr_schedule, config.optim.momentum, config.optim.weight_decay, config.optim.nesterov
    )
    teacher_modules, teacher_vars = ((), None)
    if spec.teacher == "frozen":
        teacher_modules, teacher_vars = state_lib.load_teachers(config)
    models = state_lib.build_models(config, spec, info.num_classes, teacher_modules)
    state = state_lib.create_train_state(
        config, models, tx, jax.random.PRNGKey(config.seed), info.image_shape, teacher_vars
    )
    state = parallel.replicate(state, mesh)
    train_step = step_lib.make_train_step(config, spec, models, tx, lr_schedule, mesh)
    return dict(
        spec=spec, info=info, mesh=mesh, train=train, steps_per_epoch=steps_per_epoch,
        lr_schedule=lr_schedule, tx=tx, models=models, state=state, train_step=train_step,
        run_spec=make_run_spec(config, spec, info.num_classes),
    )


def evaluate_state(config, spec_of_run: dict, state, mesh) -> dict[str, Any]:
    """Clean and robust accuracy of every model of the run, at its threat model."""
    test = data_lib.load_split(
        config.dataset.name, config.dataset.test_split, source=config.dataset.source,
        data_dir=config.dataset.data_dir or None, limit=config.eval.num_examples or None)
    tm = spec_of_run["threat_model"]
    attacks = evaluation.build_attacks(tm["attacks"], eps=tm["eps"], step_size=tm["step_size"])
    pure = serialization.to_state_dict(jax.device_get(state))
    rows = {}
    for label, model in spec_of_run["models"].items():
        variables = run_spec.variables_from_state(model, pure)
        rows[f"{config.method} ({label})"] = evaluation.evaluate_classifier(
            run_spec.make_apply_fn(model), variables, test.images, test.labels, attacks,
            batch_size=config.eval.batch_size, mesh=mesh, key=jax.random.PRNGKey(config.seed + 1),
            progress=config.progress_bar)
    n = next(iter(rows.values()))["n"]
    threat = evaluation.threat_model_record(
        config.dataset.name, config.dataset.test_split, tm["norm"], tm["eps"], attacks, n=n,
        seed=config.seed + 1)
    return {"rows": rows, "threat_model": threat}


def _final_eval_fingerprint(config, step: int) -> dict:
    return {"step": step, "eval": config.eval.to_dict(), "attack_norm": config.attack.norm}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains (or resumes) the run in ``workdir``; returns the final eval rows."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise NotADirectoryError(f"--workdir {workdir} exists and is not a directory")
    run = build_run(config)
    mesh, state = run["mesh"], run["state"]
    steps_per_epoch = run["steps_per_epoch"]
    total_steps = config.num_epochs * steps_per_epoch

    os.makedirs(workdir, exist_ok=True)
    if parallel.is_main_process():
        files.write_text(os.path.join(workdir, "config.json"),
                         config.to_json_best_effort(indent=2))
        log.info("%s on %s: %d examples, %d steps per epoch, %d steps; workdir %s "
                 "(config.json, metrics.jsonl, checkpoints/, eval.md)", config.method,
                 config.dataset.name, len(run["train"].labels), steps_per_epoch, total_steps,
                 os.path.abspath(workdir))
    writer = MetricWriter(workdir, tensorboard=config.tensorboard)
    checkpointer = ckpt_lib.Checkpointer(
        os.path.join(workdir, "checkpoints"), config.to_dict(), resumable=RESUMABLE,
        max_to_keep=config.keep_checkpoints, run_spec=run["run_spec"],
    )
    batches = data_lib.make_train_iterator(
        run["train"], global_batch_size=config.batch_size, seed=config.seed,
        augment=_augment_for(config, run["info"]),
    )

    def eval_fn(st, step):
        result = evaluate_state(config, run["run_spec"], st, mesh)
        return {f"{label}/{k}": v for label, row in result["rows"].items()
                for k, v in row.items()}

    adv = run["spec"].adversarial
    try:
        state, step = train_loop.run(
            state=state, step_fn=run["train_step"], batches=batches, mesh=mesh,
            total_steps=total_steps, steps_per_epoch=steps_per_epoch,
            global_batch_size=config.batch_size, checkpointer=checkpointer,
            checkpoint_every_steps=config.checkpoint_every_steps, writer=writer,
            log_every_steps=config.log_every_steps, eval_fn=eval_fn,
            eval_every_epochs=config.eval_every_epochs, stop_after_steps=config.stop_after_steps,
            progress=config.progress_bar, desc=config.method,
            postfix=lambda m: {"loss": f"{m['loss']:.4f}", ("adv_acc" if adv else "acc"):
                               f"{m.get('train/adv_acc', m.get('train/acc', 0)):.3f}"})
    finally:
        checkpointer.close()

    result: dict[str, Any] = {"rows": {}, "threat_model": None}
    if step >= total_steps and config.final_eval:
        result = _final_eval(config, run, state, step, workdir, writer)
    writer.close()
    return {"state": state, "eval": result["rows"], "threat_model": result["threat_model"],
            "step": step}


def _final_eval(config, run, state, step: int, workdir: str, writer: MetricWriter) -> dict:
    """The final evaluation, written once: a re-run with the same settings reuses it."""
    path = os.path.join(workdir, "eval.json")
    fingerprint = _final_eval_fingerprint(config, step)
    stored = files.read_json(path)
    if stored and stored.get("fingerprint") == fingerprint:
        result = stored
    else:
        result = evaluate_state(config, run["run_spec"], state, run["mesh"])
        result["fingerprint"] = fingerprint
        for label, row in result["rows"].items():
            writer.write(step, {f"eval/{label}/{k}": v for k, v in row.items()})
        if parallel.is_main_process():
            files.write_json(path, result)
    text = _format_eval(result)
    if parallel.is_main_process():
        files.write_text(os.path.join(workdir, "eval.md"), text)
        print(text)
    return result


def _format_eval(result: dict) -> str:
    rows = {k: {c: v for c, v in r.items() if c != "n"} for k, r in result["rows"].items()}
    threat = result["threat_model"]
    return (f"## {evaluation.threat_model_title(threat)}: clean and robust accuracy (%)\n\n"
            + tables.markdown_table(rows) + "\n\n"
            + "\n".join(evaluation.threat_model_lines(threat)) + "\n")
