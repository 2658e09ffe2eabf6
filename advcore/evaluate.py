"""Data-parallel robustness evaluation and the ``advcore.evaluate`` CLI.

``evaluate_classifier`` runs clean accuracy and any number of attacks over a
dataset, one jitted program per attack, with batches sharded over the
``('data',)`` mesh. Every attack sees the same examples; the worst case is the
per-example AND of "still correct" across all attacks (AutoAttack's rule).

CLI: evaluate the newest checkpoint of any training run (LBGAT or LADDER)::

    python -m advcore.evaluate --workdir=DIR --attacks=pgd20,cw20,aa_standard --n=1000
    python -m advcore.evaluate --workdir=DIR --attacks=aa_standard --cpu_devices=2  # 2-core CPU

It rebuilds the model from the run's saved config (``model.robust.{name,
kwargs}``, ``dataset.name``) and writes ``eval_<model>.md/.json`` in DIR.
"""

from __future__ import annotations

import os
import time
from typing import Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from advcore import parallel

LogitsApply = Callable[[dict, jax.Array], jax.Array]
Attack = Callable[..., jax.Array]


def is_shard_local(attack: Optional[Attack]) -> bool:
    """Whether ``attack`` asks to run per device shard (``attack.shard_local``)."""
    return bool(getattr(attack, "shard_local", False))


def _make_eval_fn(apply_fn: LogitsApply, attack: Optional[Attack], mesh: Mesh):
    """jit(variables, images, labels, key) -> per-example correctness.

    By default the attack is one program over the global batch, partitioned
    by the compiler (its random draws do not depend on the device layout).
    A ``shard_local`` attack (AutoAttack: ``advcore.attacks.autoattack``)
    instead runs independently on each device's shard under ``jax.shard_map``
    with the key folded with the device index: its cost depends on which
    points are still robust (compaction, early exits), and a partitioned
    program would gather the global batch for that and lose the parallelism.
    Its random starts then depend on the number of devices (like upstream's
    dependence on the batch size), not its per-point rules.
    """

    def run(variables, images, labels, key):
        logits_fn = lambda x: apply_fn(variables, x)  # noqa: E731
        x = images if attack is None else attack(logits_fn, images, labels, key)
        return jnp.argmax(logits_fn(x), axis=-1) == labels

    repl = parallel.replicated(mesh)
    data = parallel.data_sharded(mesh)
    if is_shard_local(attack) and mesh.devices.size > 1:
        axis = mesh.axis_names[0]

        def run_local(variables, images, labels, key):
            return run(variables, images, labels,
                       jax.random.fold_in(key, jax.lax.axis_index(axis)))

        local = jax.shard_map(run_local, mesh=mesh, in_specs=(P(), P(axis), P(axis), P()),
                              out_specs=P(axis), check_vma=False)
        return jax.jit(local, in_shardings=(repl, data, data, repl), out_shardings=data)
    return jax.jit(run, in_shardings=(repl, data, data, repl), out_shardings=data)


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

    Returns:
      ``{'clean': acc, <attack>: acc, ..., 'worst_case': acc, 'n': N}``.
    """
    mesh = parallel.make_mesh() if mesh is None else mesh
    key = jax.random.PRNGKey(0) if key is None else key
    num_devices = mesh.devices.size
    if batch_size % num_devices:
        batch_size += num_devices - batch_size % num_devices
    n = len(labels)
    if n == 0:
        raise ValueError("evaluation needs at least one example, got 0")

    fns: dict[str, Callable] = {"clean": _make_eval_fn(apply_fn, None, mesh)}
    for name, attack in attacks.items():
        if transfer_source is None:
            fns[name] = _make_eval_fn(apply_fn, attack, mesh)
        else:
            fns[name] = _make_transfer_fn(apply_fn, transfer_source[0], attack, mesh)

    correct = {name: np.zeros(n, bool) for name in fns}
    iterator = range(0, n, batch_size)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc="eval", unit="batch", leave=False)
    for start in iterator:
        stop = min(start + batch_size, n)
        x = np.asarray(images[start:stop])
        x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
        y = np.asarray(labels[start:stop]).astype(np.int32)
        pad = batch_size - (stop - start)
        if pad:
            x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)])
            y = np.concatenate([y, np.repeat(y[-1:], pad, axis=0)])
        xs, ys = parallel.shard_host_batch((x, y), mesh)
        batch_key = jax.random.fold_in(key, start)
        for name, fn in fns.items():
            if transfer_source is not None and name != "clean":
                ok = fn(variables, transfer_source[1], xs, ys, batch_key)
            else:
                ok = fn(variables, xs, ys, batch_key)
            # fetch_to_host: in multi-process runs ``ok`` spans other hosts'
            # devices, and np.asarray alone cannot read it.
            correct[name][start:stop] = parallel.fetch_to_host(ok)[: stop - start]

    result = {name: 100.0 * float(c.mean()) for name, c in correct.items()}
    worst = np.logical_and.reduce([c for c in correct.values()])
    result["worst_case"] = 100.0 * float(worst.mean())
    result["n"] = n
    return result


def _make_transfer_fn(target_apply: LogitsApply, source_apply: LogitsApply,
                      attack: Attack, mesh: Mesh):
    def run(target_vars, source_vars, images, labels, key):
        source_fn = lambda x: source_apply(source_vars, x)  # noqa: E731
        x_adv = attack(source_fn, images, labels, key)
        return jnp.argmax(target_apply(target_vars, x_adv), axis=-1) == labels

    repl = parallel.replicated(mesh)
    data = parallel.data_sharded(mesh)
    return jax.jit(run, in_shardings=(repl, repl, data, data, repl), out_shardings=data)


def build_attacks(names: Sequence[str], **overrides) -> dict[str, Attack]:
    """``{name: make_attack(name, **overrides)}``; overrides with value None are dropped."""
    from advcore.attacks import make_attack

    kwargs = {k: v for k, v in overrides.items() if v is not None}
    return {name: make_attack(name, **kwargs) for name in names}


# --------------------------------------------------------------------------
# Evaluating a saved run.
# --------------------------------------------------------------------------


def load_evaluable(workdir: str, which: str = "robust"):
    """Rebuilds ``(apply_fn, variables, config)`` from a run's newest checkpoint."""
    from advcore import checkpoint as ckpt_lib
    from advcore.data import get_dataset_info
    from advcore.models import build_model

    state, config, _ = ckpt_lib.load_raw_state(workdir)
    if which not in state or not state[which]:
        raise ValueError(
            f"model must be one of {[k for k in ('robust', 'natural') if state.get(k)]}"
            f" for this run, got {which!r}"
        )
    spec = config["model"][which]
    info = get_dataset_info(config["dataset"]["name"])
    kwargs = dict(spec.get("kwargs", {}))
    if config.get("shared_conv_separate_bn") and which == "robust":
        kwargs["num_bn_sets"] = 2
    model = build_model(spec["name"], info.num_classes, **kwargs)
    variables = {"params": state[which]["params"]}
    if state[which].get("batch_stats"):
        variables["batch_stats"] = state[which]["batch_stats"]
    variables = jax.tree.map(jnp.asarray, variables)

    def apply_fn(v, x):
        return model.apply(v, x, train=False)

    return apply_fn, variables, config


def main(argv=None) -> None:
    import argparse
    import json

    from advcore import tables
    from advcore.data import load_split

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="a training run's workdir")
    parser.add_argument("--attacks", default="pgd20,cw20",
                        help="comma-separated attack names (advcore.attacks.make_attack)")
    parser.add_argument("--n", type=int, default=1000, help="number of test examples")
    parser.add_argument("--model", default="robust", choices=["robust", "natural"])
    parser.add_argument("--eps", type=float, default=None, help="override every attack's eps")
    parser.add_argument("--step_size", type=float, default=None)
    parser.add_argument("--batch_size", type=int, default=200)
    parser.add_argument("--split", default="test")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--transfer_from", default="",
                        help="workdir of a source model: black-box transfer evaluation")
    parser.add_argument("--cpu_devices", type=int, default=1,
                        help="simulated CPU devices (jax_num_cpu_devices); on a CPU, one per "
                             "core makes attacks much faster (README, Speed)")
    args = parser.parse_args(argv)
    if args.cpu_devices < 1:
        parser.error(f"--cpu_devices must be >= 1, got {args.cpu_devices}")
    if args.cpu_devices > 1:
        # Must precede the backend's start; a GPU/TPU backend stays the default.
        jax.config.update("jax_num_cpu_devices", args.cpu_devices)
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every file at INFO
    if args.n < 1:
        parser.error(f"--n must be >= 1, got {args.n}")

    apply_fn, variables, config = load_evaluable(args.workdir, args.model)
    dataset = config["dataset"]
    test = load_split(dataset["name"], args.split, source=dataset.get("source", "auto"),
                      data_dir=dataset.get("data_dir") or None, limit=args.n)
    names = [a for a in args.attacks.split(",") if a]
    attack_fns = build_attacks(names, eps=args.eps, step_size=args.step_size)
    transfer = None
    if args.transfer_from:
        src_apply, src_vars, _ = load_evaluable(args.transfer_from, "robust")
        transfer = (src_apply, src_vars)
    start = time.time()
    result = evaluate_classifier(
        apply_fn, variables, test.images, test.labels, attack_fns,
        batch_size=args.batch_size, key=jax.random.PRNGKey(args.seed),
        progress=True, transfer_source=transfer,
    )
    result["seconds"] = time.time() - start
    row = {k: v for k, v in result.items() if k not in ("n", "seconds")}
    label = f"{config.get('method', 'model')} ({args.model})"
    suffix = "_transfer" if transfer else ""
    prefix = os.path.join(args.workdir, f"eval_{args.model}{suffix}")
    tables.write_table(prefix, {label: row},
                       title=f"{dataset['name']} {args.split}, n={result['n']}")
    with open(prefix + ".json", "w") as f:
        json.dump({"rows": {label: row}, "result": result, "attacks": names,
                   "args": vars(args)}, f, indent=2)
    print(tables.markdown_table({label: row}))


if __name__ == "__main__":
    main()
