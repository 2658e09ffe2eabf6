"""Data-parallel robustness evaluation, stating the threat model of every number.

``evaluate_classifier`` runs clean accuracy and any number of attacks over a
dataset, one jitted program per attack, with batches sharded over the
``('data',)`` mesh. Every attack sees the same examples; the worst case is the
per-example AND of "still correct" across all attacks (AutoAttack's rule).

``evaluate_run`` evaluates a saved run (any method) at the threat model it
was trained for: the run spec stored with its checkpoint (``advcore.run_spec``)
says how to rebuild each model and which norm, ε and attacks its config
names; explicit arguments override them. ``write_result`` writes the result as
markdown and JSON, with the threat model (dataset, split, n, norm, ε, every
attack's settings, seed, library version) in both, using RobustBench's field
names where one exists (``clean_acc``, ``robust_acc``, ``autoattack_acc``,
``threat_model``, ``eps``, ``n_examples``). The command line is
``python -m advcore.evaluate``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from advcore import checkpoint as ckpt_lib
from advcore import files, parallel, run_spec, tables
from advcore.attacks import check_input_range, make_attack
from advcore.attacks.autoattack_eval import run_autoattack
from advcore.batching import make_eval_fn, map_batches
from advcore.data import load_split
from advcore.version import __version__

LogitsApply = Callable[[dict, jax.Array], jax.Array]
Attack = Callable[..., jax.Array]

log = logging.getLogger("advcore")

THREAT_MODEL_NAMES = {"linf": "Linf", "l2": "L2", "l1": "L1"}


def _make_transfer_fn(target_apply: LogitsApply, source_apply: LogitsApply,
                      attack: Attack, mesh: Mesh):
    def run(target_vars, source_vars, images, labels, key):
        source_fn = lambda x: source_apply(source_vars, x)  # noqa: E731
        x_adv = attack(source_fn, images, labels, key)
        return jnp.argmax(target_apply(target_vars, x_adv), axis=-1) == labels

    repl = parallel.replicated(mesh)
    data = parallel.data_sharded(mesh)
    return jax.jit(run, in_shardings=(repl, repl, data, data, repl), out_shardings=data)


def evaluate_classifier(
    apply_fn: LogitsApply,
    variables: dict,
    images: np.ndarray,
    labels: np.ndarray,
    attacks: Mapping[str, Attack],
    *,
    batch_size: int = 200,
    mesh: Optional[Mesh] = None,
    key: Optional[jax.Array] = None,
    progress: bool = False,
    transfer_source: Optional[tuple[LogitsApply, dict]] = None,
    resume_dir: Optional[str] = None,
) -> dict[str, float]:
    """Clean and robust accuracy (in %) of ``apply_fn(variables, x)``.

    Args:
      apply_fn: ``(variables, x) -> logits`` in eval mode.
      variables: the model's variables (a traced argument: one compilation per
        attack, whatever the weights).
      images: uint8 NHWC or float in [0, 1]; labels: int (N,).
      attacks: ``{name: attack(logits_fn, x, y, key)}``.
      batch_size: global batch size; the last batch is padded and masked.
      transfer_source: ``(source_apply_fn, source_variables)``: craft every
        attack on this model and score ``apply_fn`` on the result (black box).
      resume_dir: run each AutoAttack cascade (``aa_*``) through the resumable
        driver (``advcore.attacks.autoattack_eval``), its state in
        ``<resume_dir>/<name>.state.json``: per-point flags and finished stages
        are saved after every stage, so a killed evaluation does not redo
        them, and each stage's robust accuracy and time are logged.

    Returns:
      ``{'clean': acc, <attack>: acc, ..., 'worst_case': acc, 'n': N}`` (and
      ``autoattack_stages``: each resumable cascade's per-stage accuracies
      and times).
    """
    mesh = parallel.make_mesh() if mesh is None else mesh
    key = jax.random.PRNGKey(0) if key is None else key
    labels = np.asarray(labels).astype(np.int32)
    n = len(labels)
    if n == 0:
        raise ValueError("evaluation needs at least one example, got 0")
    _check_pixel_range(images)

    correct: dict[str, np.ndarray] = {}
    stage_log: dict[str, dict] = {}
    for name, attack in {"clean": None, **attacks}.items():
        if resume_dir is not None and transfer_source is None and _is_cascade(attack):
            # The resumable driver: stage by stage over the whole dataset,
            # per-point flags saved after every stage, the reference's log.
            result = run_autoattack(
                apply_fn, variables, images, labels, mesh=mesh, key=jax.random.fold_in(key, 1),
                batch_size=batch_size, state_path=os.path.join(resume_dir, f"{name}.state.json"),
                log=_log_line, **_cascade_args(attack))
            correct[name] = np.asarray(result["robust_flags"], bool)
            stage_log[name] = {k: v for k, v in result.items() if k != "robust_flags"}
            continue
        if transfer_source is not None and attack is not None:
            fn = _make_transfer_fn(apply_fn, transfer_source[0], attack, mesh)
            source_vars = transfer_source[1]
            run = lambda x, y, k, fn=fn: fn(variables, source_vars, x, y, k)  # noqa: E731
        else:
            fn = make_eval_fn(apply_fn, attack, mesh)
            run = lambda x, y, k, fn=fn: fn(variables, x, y, k)  # noqa: E731
        correct[name] = map_batches(run, (images, labels), batch_size=batch_size, mesh=mesh,
                                    key=key, progress=progress, desc=name)

    result = {name: 100.0 * float(c.mean()) for name, c in correct.items()}
    result["worst_case"] = 100.0 * float(np.logical_and.reduce(list(correct.values())).mean())
    result["n"] = n
    if stage_log:
        result["autoattack_stages"] = stage_log
    return result


def _is_cascade(attack: Optional[Attack]) -> bool:
    return getattr(attack, "name", "") in ("aa_standard", "aa_plus", "aa_rand")


_DRIVER_ARGS = ("eps", "norm", "version", "attacks_to_run", "num_iters", "n_queries",
                "n_target_classes", "restarts", "use_largereps", "unroll")


def _cascade_args(attack: Attack) -> dict:
    params = dict(attack.params)
    if params.get("stochastic"):
        raise ValueError(f"{attack.name}: a randomised model's AutoAttack cannot be resumed "
                         "stage by stage; evaluate it without a resume directory")
    return {k: v for k, v in params.items() if k in _DRIVER_ARGS}


def _log_line(message: str) -> None:
    if parallel.is_main_process():
        log.info("%s", message)


def _check_pixel_range(images: np.ndarray) -> None:
    """Attacks work on pixels in [0, 1]: a normalised dataset is refused, not clipped."""
    images = np.asarray(images)
    if images.dtype != np.uint8:  # uint8 pixels are in range by construction
        check_input_range(images, name="images")


def build_attacks(names: Sequence[str], **overrides) -> dict[str, Attack]:
    """``{name: make_attack(name, **overrides)}``; overrides with value None are dropped."""
    kwargs = {k: v for k, v in overrides.items() if v is not None}
    return {name: make_attack(name, **kwargs) for name in names}


# --------------------------------------------------------------------------
# Saved runs.
# --------------------------------------------------------------------------


def load_evaluable(workdir: str, which: Optional[str] = None):
    """``(apply_fn, variables, spec)`` of one model of a run's newest checkpoint.

    ``which`` names a model of the run spec (default: the spec's default
    model); ``spec`` is the run spec. The checkpoint is verified in full.
    """
    state, _, meta = ckpt_lib.load_raw_state(workdir)
    spec = meta.get("run_spec")
    if not spec:
        raise ValueError(f"the checkpoint in {workdir} has no run spec (saved by an older "
                         "version of this library); retrain or evaluate it by architecture")
    which = which or spec["default_model"]
    if which not in spec["models"]:
        raise ValueError(f"model must be one of {sorted(spec['models'])} for this run, "
                         f"got {which!r}")
    model = spec["models"][which]
    return run_spec.make_apply_fn(model), run_spec.variables_from_state(model, state), spec


def resolve_threat_model(spec: Mapping[str, Any], *, attacks: Optional[Sequence[str]] = None,
                         eps: Optional[float] = None, norm: Optional[str] = None,
                         step_size: Optional[float] = None) -> dict:
    """The run's threat model with explicit overrides applied (None keeps the run's)."""
    tm = dict(spec.get("threat_model") or {})
    resolved = {
        "norm": norm or tm.get("norm", "linf"),
        "eps": float(eps) if eps is not None else tm.get("eps"),
        "attacks": list(attacks) if attacks else list(tm.get("attacks") or ["pgd20"]),
        "step_size": step_size if step_size is not None else tm.get("step_size"),
    }
    if resolved["eps"] is None:
        raise ValueError("the run records no threat model: pass --eps (and --norm)")
    return resolved


def evaluate_run(
    workdir: str,
    *,
    model: Optional[str] = None,
    attacks: Optional[Sequence[str]] = None,
    eps: Optional[float] = None,
    norm: Optional[str] = None,
    step_size: Optional[float] = None,
    n: int = 1000,
    split: Optional[str] = None,
    batch_size: int = 200,
    seed: int = 0,
    transfer_from: str = "",
    progress: bool = True,
    out_dir: Optional[str] = None,
) -> dict:
    """Evaluates a saved run at its own threat model (overrides as arguments).

    Writes ``eval_<model>[_transfer].{md,json}`` in ``out_dir`` (default:
    ``workdir``) and returns the JSON payload.
    """
    apply_fn, variables, spec = load_evaluable(workdir, model)
    model = model or spec["default_model"]
    tm = resolve_threat_model(spec, attacks=attacks, eps=eps, norm=norm, step_size=step_size)
    dataset = spec["dataset"]
    transfer = None
    if transfer_from:
        src_apply, src_vars, _ = load_evaluable(transfer_from)
        transfer = (src_apply, src_vars, transfer_from)
    suffix = "_transfer" if transfer else ""
    return evaluate_model(
        apply_fn, variables, label=f"{spec.get('method', 'model')} ({model})",
        dataset=dataset, split=split or dataset.get("test_split", "test"), n=n,
        threat_model=tm, batch_size=batch_size, seed=seed, transfer=transfer,
        progress=progress, out_prefix=os.path.join(out_dir or workdir, f"eval_{model}{suffix}"))


def evaluate_model(
    apply_fn: LogitsApply,
    variables: dict,
    *,
    label: str,
    dataset: Mapping[str, Any],
    split: str,
    n: int,
    threat_model: Mapping[str, Any],
    batch_size: int = 200,
    seed: int = 0,
    transfer: Optional[tuple] = None,
    progress: bool = True,
    out_prefix: Optional[str] = None,
    extra: Optional[Mapping[str, Any]] = None,
) -> dict:
    """Evaluates one model on ``dataset`` at ``threat_model`` and writes the result.

    ``threat_model`` is ``{"norm", "eps", "attacks", "step_size"}``;
    ``transfer`` is ``(source_apply_fn, source_variables, source_name)`` for a
    black-box evaluation; ``extra`` is stored in the JSON (e.g. the model spec
    of an external checkpoint). Returns the JSON payload.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    test = load_split(dataset["name"], split, source=dataset.get("source", "auto"),
                      data_dir=dataset.get("data_dir") or None, limit=n)
    if len(test.labels) < n:
        print(f"note: the {dataset['name']} {split} split has {len(test.labels)} examples, "
              f"fewer than n={n}; evaluating all of them")
    attack_fns = build_attacks(threat_model["attacks"], eps=threat_model["eps"],
                               step_size=threat_model.get("step_size"))
    start = time.time()
    result = evaluate_classifier(
        apply_fn, variables, test.images, test.labels, attack_fns, batch_size=batch_size,
        key=jax.random.PRNGKey(seed), progress=progress,
        transfer_source=None if transfer is None else transfer[:2],
        resume_dir=None if out_prefix is None else out_prefix + "_state")
    threat = threat_model_record(dataset["name"], split, threat_model["norm"],
                                 threat_model["eps"], attack_fns, n=result["n"], seed=seed,
                                 transfer_source=None if transfer is None else transfer[2])
    payload = result_payload(label, result, threat, seconds=time.time() - start)
    if extra:
        payload.update(extra)
    if out_prefix:
        write_result(out_prefix, payload)
    return payload


def threat_model_record(dataset: str, split: str, norm: str, eps: float,
                        attacks: Mapping[str, Attack], *, n: int, seed: int,
                        transfer_source: Optional[str] = None) -> dict:
    """Everything a reader needs to reproduce or compare a robust accuracy."""
    record = {
        "dataset": dataset,
        "split": split,
        "n_examples": int(n),
        "threat_model": THREAT_MODEL_NAMES.get(norm, norm),
        "eps": float(eps),
        "attacks": {name: _jsonable(getattr(a, "params", {})) for name, a in attacks.items()},
        "seed": int(seed),
        "library_version": __version__,
    }
    if transfer_source:
        record["transfer_source"] = transfer_source
    return record


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def result_payload(label: str, result: Mapping[str, Any], threat: Mapping[str, Any],
                   seconds: Optional[float] = None) -> dict:
    """JSON payload: accuracies with RobustBench's names plus the threat model."""
    accs = {k: v for k, v in result.items() if k not in ("n", "autoattack_stages")}
    payload = {
        "model": label,
        "clean_acc": accs.get("clean"),
        "robust_acc": accs.get("worst_case"),
        "accuracies": accs,
        **threat,
    }
    for name in accs:
        if name.startswith("aa_"):
            payload["autoattack_acc"] = accs[name]
    if result.get("autoattack_stages"):
        payload["autoattack_stages"] = result["autoattack_stages"]
    if seconds is not None:
        payload["seconds"] = seconds
    return payload


def threat_model_title(threat: Mapping[str, Any]) -> str:
    """A one-line title stating the threat model (dataset, split, n, norm, ε, seed)."""
    title = (f"{threat['dataset']} {threat['split']}, n={threat['n_examples']}, "
             f"{threat['threat_model']} eps={threat['eps']:g}, seed {threat['seed']}")
    if threat.get("transfer_source"):
        title += f", transferred from {threat['transfer_source']}"
    return title


def threat_model_lines(threat: Mapping[str, Any]) -> list[str]:
    """Markdown lines listing every attack's settings and the library version."""
    lines = [f"- `{name}`: " + ", ".join(f"{k}={v}" for k, v in sorted(params.items()))
             for name, params in threat["attacks"].items()]
    lines.append(f"- library version {threat['library_version']}")
    return lines


def format_payload(payload: Mapping[str, Any]) -> str:
    """Markdown: a title stating the threat model, the table, every attack's settings."""
    md = tables.markdown_table({payload["model"]: dict(payload["accuracies"])},
                               row_header="model")
    return (f"## {threat_model_title(payload)}: accuracy (%)\n\n{md}\n\n"
            + "\n".join(threat_model_lines(payload)) + "\n")


def write_result(prefix: str, payload: Mapping[str, Any]) -> None:
    """``prefix.md`` (``format_payload``) and ``prefix.json``, written atomically."""
    files.write_text(prefix + ".md", format_payload(payload))
    files.write_json(prefix + ".json", payload)
