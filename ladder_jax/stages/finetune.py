"""Stage 6: fine-tuning the vanilla model on stored pairs, one unit per row.

Rows (``finetune.rows``), each saved as an evaluable checkpoint in
``models/<row>/``:

* ``ladder``, ``ladder_gan``, ``cavRandom``, ``random``: Eq. 6 on the
  generated pairs (x, x_hat, y = source label) of ``generated/<variant>``
  at ε = ``finetune.eps`` (0: the ε the svm stage calibrated, as recorded
  in the set's ``info.json``; all pairs in adaptive mode);
* ``trades_ladder``: TRADES+LADDER on the ``ladder`` pairs
  (``finetune.trades_mode``);
* ``fgsm``, ``jsma``, ``pgd``, ``cw``: the "X Adv." baselines: Eq. 6 on
  (x, attack(x), y), the attack crafted once on the same selected training
  images against the vanilla model (unit ``trainset/<row>``, stored in
  ``attack_sets/train/<row>``).

Every row starts from the vanilla checkpoint and uses the dataset's Table 6
recipe (SGD, constant LR, no augmentation); the training set is the pairs
only. The final model is kept (the code selects on test accuracy, which the
library does not do).
"""

from __future__ import annotations

import functools

import numpy as np

from advcore import attacks, data, files
from advcore.metrics import MetricWriter
from advcore.optim import torch_sgd
from ladder_jax import attack_sets, generate, streams, training
from ladder_jax.classifier import create_state, make_pair_step
from ladder_jax.config_schema import BASELINE_ROWS, VARIANTS
from ladder_jax.units import Unit, config_values

STAGE = "finetune"


class _Steps:
    """The jitted pair steps of this run, one per loss mode, shared by the rows.

    Every Eq. 6 row (LADDER variants and "X Adv." baselines) trains with the
    same program, so it is compiled once.
    """

    def __init__(self, ctx):
        self.ctx = ctx
        ft = ctx.config.finetune
        self.tx = torch_sgd(ft.lr, ft.momentum, ft.weight_decay)
        self._steps: dict[str, object] = {}

    def get(self, mode: str):
        if mode not in self._steps:
            ft = self.ctx.config.finetune
            trades = None
            if mode == "pgd_kl_plus_ladder":
                # TRADES' inner maximisation: PGD on KL from x + 0.001 N(0, 1).
                trades = functools.partial(
                    attacks.pgd, eps=ft.trades_eps, step_size=ft.trades_step_size,
                    num_steps=ft.trades_num_steps, norm="linf", loss="kl",
                    random_start="normal", init_std=0.001)
            step = make_pair_step(self.ctx.classifier, self.tx, mode=mode, alpha=ft.alpha,
                                  beta=ft.trades_beta, trades_attack=trades)
            self._steps[mode] = training.jit_step(step, self.ctx.mesh)
        return self._steps[mode]


def units(ctx) -> list[Unit]:
    c = ctx.config
    steps = _Steps(ctx)
    finetune_settings = config_values(c, "finetune")
    out = []
    for row in c.finetune.rows:
        if row in BASELINE_ROWS:
            # The "X Adv." pairs depend on the vanilla model, the attack and the
            # selected images only, not on the generator or the SVMs.
            out.append(Unit(
                f"trainset/{row}", STAGE,
                config_values(c, f"attacks.{row}", "generate.per_class_cap",
                              "evaluate.attack_batch_size"),
                functools.partial(craft_train_set, row=row), inputs=("classifier",),
                outputs=(f"attack_sets/train/{row}",)))
            pairs = f"trainset/{row}"
        else:
            pairs = "generate/" + ("ladder" if row == "trades_ladder" else row)
        out.append(Unit(f"finetune/{row}", STAGE, {**finetune_settings, "row": row},
                        functools.partial(finetune_row, row=row, steps=steps),
                        inputs=("classifier", pairs), outputs=(f"models/{row}",)))
    return out


def finetune_eps(ctx, row: str) -> float | None:
    """The ε whose pairs ``row`` fine-tunes on: ``finetune.eps``, 0 resolved (None: baselines)."""
    if row in BASELINE_ROWS:
        return None
    eps = ctx.config.finetune.eps
    if eps == 0:
        variant = "ladder" if row == "trades_ladder" else row
        _, info = generate.load_generated_set(ctx.wd.path("generated", variant), mmap=True)
        if info.get("calibrated_eps") is None:
            raise ValueError(f"finetune.eps=0 (calibrated) needs 0 in generate.eps_list; "
                             f"generated/{variant} was made with eps_list "
                             f"{info.get('eps_list')}")
        return float(info["calibrated_eps"])
    return float(eps)


def training_pairs(ctx, row: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, x_adv, y) uint8 / int32 arrays that ``row`` fine-tunes on."""
    if row in BASELINE_ROWS:
        return attack_sets.load_pairs_from_attack_set(ctx.wd, row, ctx.train_set().images)
    variant = "ladder" if row == "trades_ladder" else row
    arrays, _ = generate.load_generated_set(ctx.wd.path("generated", variant))
    eps = finetune_eps(ctx, row)
    keep = np.ones(len(arrays["label"]), bool) if eps == -1 else np.isclose(arrays["eps"], eps)
    if not keep.any():
        raise ValueError(f"finetune.eps={ctx.config.finetune.eps} (ε = {eps}) matches no "
                         f"image of generated/{variant}; "
                         f"available eps: {sorted(set(np.asarray(arrays['eps']).tolist()))}")
    return arrays["x"][keep], arrays["x_adv"][keep], arrays["label"][keep].astype(np.int32)


def craft_train_set(ctx, identity: dict, *, row: str) -> dict:
    del identity  # no checkpoints: the set is written whole
    idx, sources, _ = ctx.selected_train_images()
    return attack_sets.craft_attack_set(ctx, row, ctx.train_set().images[idx], sources, idx,
                                        "train", streams.jax_key(ctx.config.seed,
                                                                 f"trainset/{row}"))


def finetune_row(ctx, identity: dict, *, row: str, steps: _Steps) -> dict:
    c, ft = ctx.config, ctx.config.finetune
    x, x_adv, y = training_pairs(ctx, row)
    clf = ctx.classifier
    mode = ft.trades_mode if row == "trades_ladder" else "eq6"
    state = create_state(ctx.vanilla, steps.tx, streams.jax_key(c.seed, f"finetune/{row}"))
    unit_dir = f"models/{row}"
    ckpt = training.open_checkpointer(ctx.wd, unit_dir, identity, ctx.run_spec(row))
    test = ctx.test_set()

    def make_batch(rows):
        return {"image": data.to_float(x[rows]), "image_adv": data.to_float(x_adv[rows]),
                "label": y[rows]}

    def eval_fn(st):
        return {"test_accuracy": clf.accuracy(st.model, test.images, test.labels,
                                              ft.eval_batch_size, ctx.mesh)}

    writer = MetricWriter(ctx.model_dir(row))
    try:
        state, trained = training.fit(
            state=state, step_fn=steps.get(mode), num_examples=len(y),
            batch_size=training.effective_batch(ft.batch_size, len(y), ctx.mesh.devices.size),
            make_batch=make_batch, epochs=ft.epochs,
            seed=streams.data_seed(c.seed, f"finetune/{row}"), checkpointer=ckpt,
            checkpoint_every_epochs=ft.checkpoint_every_epochs, writer=writer, mesh=ctx.mesh,
            eval_fn=eval_fn, eval_every_epochs=ft.checkpoint_every_epochs,
            progress=ctx.progress, desc=f"finetune/{row}")
        digest = training.checkpoint_digest(ckpt)
    finally:
        ckpt.close()
    final = eval_fn(state)
    if trained:
        writer.write(int(state.step), {f"eval/{k}": v for k, v in final.items()})
    eps = finetune_eps(ctx, row)
    report = {"row": row, "pairs": int(len(y)), "mode": mode,
              "test_accuracy": final["test_accuracy"], "eps": eps,
              "eps_unit": None if eps is None else c.generate.eps_unit,
              "eps_calibrated": eps is not None and ft.eps == 0,
              "fooling_rate_of_pairs_on_vanilla": None}
    if row in VARIANTS:
        arrays, _ = generate.load_generated_set(ctx.wd.path("generated", row), mmap=True)
        keep = (np.ones(len(arrays["fools"]), bool) if eps == -1
                else np.isclose(arrays["eps"], eps))
        report["fooling_rate_of_pairs_on_vanilla"] = float(np.mean(arrays["fools"][keep]))
    files.write_json(ctx.wd.path(unit_dir, "report.json"), report)
    return {**{k: v for k, v in report.items() if isinstance(v, (int, float))},
            "output_digest": digest}
