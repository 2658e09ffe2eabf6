"""Stage 6: adversarial fine-tuning of the vanilla model on stored pairs (SPEC 3.7, 3.8).

Rows (``finetune.rows``), each saved as an evaluable checkpoint in
``models/<row>/``:

* ``ladder``, ``ladder_gan``, ``cavRandom``, ``random``: Eq. 6 on the
  generated pairs (x, x_hat, y = source label) of ``generated/<variant>``
  at ε = ``finetune.eps`` (all pairs in adaptive mode);
* ``trades_ladder``: TRADES+LADDER on the ``ladder`` pairs
  (``finetune.trades_mode``, SPEC 3.8 [A]);
* ``fgsm``, ``jsma``, ``pgd``, ``cw``: the "X Adv." baselines: Eq. 6 on
  (x, attack(x), y) with the attack crafted once on the same selected
  training images against the vanilla model (``attack_sets/train/<row>``).

Every row starts from the vanilla checkpoint and uses the dataset's Table 6
recipe (SGD, constant LR, no augmentation); the training set is the pairs
only. The final model is kept (the paper's selection rule is unknown [A];
the code selects on test accuracy, which we do not do).
"""

from __future__ import annotations

import functools
import json

import jax
import numpy as np

from advcore import attacks
from advcore.metrics import MetricWriter
from advcore.optim import torch_sgd
from ladder_jax import attack_sets, generate
from ladder_jax.classifier import accuracy, create_state, make_pair_step
from ladder_jax.config_schema import BASELINE_ROWS, VARIANTS
from ladder_jax.context import Context
from ladder_jax.stages import run_unit, selected_train_images
from ladder_jax.train_loop import effective_batch, fit
from ladder_jax.train_utils import host, open_checkpointer
from ladder_jax.workdir import name_seed, stable_hash

DISPLAY_NAMES = {
    "vanilla": "Vanilla", "fgsm": "FGSM Adv", "jsma": "JSMA Adv", "pgd": "PGD Adv",
    "cw": "CW Adv", "cavRandom": "cavRandom", "random": "Random", "ladder_gan": "LADDER-GAN",
    "ladder": "LADDER", "trades_ladder": "TRADES+LADDER",
}


def training_pairs(ctx: Context, row: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, x_adv, y) uint8 / int32 arrays that ``row`` fine-tunes on."""
    if row in BASELINE_ROWS:
        return attack_sets.load_pairs_from_attack_set(ctx, row, ctx.train_set().images)
    variant = "ladder" if row == "trades_ladder" else row
    arrays, _ = generate.load_generated_set(ctx.wd.path("generated", variant))
    eps = ctx.config.finetune.eps
    keep = np.ones(len(arrays["label"]), bool) if eps == -1 else np.isclose(arrays["eps"], eps)
    if not keep.any():
        raise ValueError(f"finetune.eps={eps} matches no image of generated/{variant}; "
                         f"available eps: {sorted(set(np.asarray(arrays['eps']).tolist()))}")
    return arrays["x"][keep], arrays["x_adv"][keep], arrays["label"][keep].astype(np.int32)


def stage_finetune(ctx: Context, force: bool = False) -> None:
    ft = ctx.config.finetune
    wd = ctx.wd
    for row in ft.rows:
        if row in BASELINE_ROWS:
            # The "X Adv." data depend on the vanilla model, the attack and the
            # selected images only, not on the generator or the SVMs.
            fp_set = stable_hash({
                "classifier": wd.stage_fingerprint("classifier"),
                "attack": wd.section_hash(f"attacks.{row}", "generate.per_class_cap",
                                          "evaluate.attack_batch_size")})
            run_unit(ctx, f"trainset/{row}", fp_set,
                     functools.partial(_craft_train_set, ctx, row,
                                       name_seed("trainset/" + row)), force)
            fp = stable_hash({"trainset": fp_set, "finetune": wd.section_hash("finetune"),
                              "row": row})
        else:
            fp = wd.unit_fingerprint("finetune", {"row": row})
        run_unit(ctx, f"finetune/{row}", fp,
                 functools.partial(_finetune_row, ctx, row, fp,
                                   name_seed("finetune/" + row)), force)


def _craft_train_set(ctx: Context, row: str, seed_offset: int) -> dict:
    idx, sources, _ = selected_train_images(ctx)
    images = ctx.train_set().images[idx]
    return attack_sets.craft_attack_set(ctx, row, images, sources, idx, "train", seed_offset)


def _trades_attack(eps: float, step_size: float, num_steps: int):
    """TRADES' inner maximisation: PGD on KL from x + 0.001 N(0, 1) (SPEC 1.2)."""
    return functools.partial(attacks.pgd, eps=eps, step_size=step_size, num_steps=num_steps,
                             norm="linf", loss="kl", random_start="normal", init_std=0.001)


@functools.lru_cache(maxsize=None)
def _row_step(clf, lr: float, momentum: float, weight_decay: float, mode: str, alpha: float,
              beta: float, trades: tuple | None):
    """(optimizer, step) shared by rows with equal settings, so they share one compile."""
    tx = torch_sgd(lr, momentum, weight_decay)
    attack = _trades_attack(*trades) if trades is not None else None
    return tx, make_pair_step(clf, tx, mode=mode, alpha=alpha, beta=beta, trades_attack=attack)


def _finetune_row(ctx: Context, row: str, fp: str, seed_offset: int) -> dict:
    c, ft = ctx.config, ctx.config.finetune
    x, x_adv, y = training_pairs(ctx, row)
    clf = ctx.classifier
    mode = ft.trades_mode if row == "trades_ladder" else "eq6"
    trades = (ft.trades_eps, ft.trades_step_size, ft.trades_num_steps) \
        if mode == "pgd_kl_plus_ladder" else None
    tx, step = _row_step(clf, ft.lr, ft.momentum, ft.weight_decay, mode, ft.alpha,
                         ft.trades_beta, trades)
    state = create_state(ctx.vanilla, tx, jax.random.key(c.seed + seed_offset))
    ckpt = open_checkpointer(ctx.wd.path("models", row, "checkpoints"),
                             ctx.checkpoint_config(row, fp))
    test = ctx.test_set()

    def make_batch(rows):
        return {"image": x[rows].astype(np.float32) / 255.0,
                "image_adv": x_adv[rows].astype(np.float32) / 255.0, "label": y[rows]}

    def eval_fn(st):
        return {"test_accuracy": accuracy(clf, host(st.robust), test.images, test.labels,
                                          ft.eval_batch_size)}

    batch = effective_batch(ft.batch_size, len(y))
    state = fit(state=state, step_fn=step, num_examples=len(y), global_batch=batch,
                make_batch=make_batch, epochs=ft.epochs, seed=c.seed + seed_offset,
                checkpointer=ckpt, checkpoint_every_epochs=ft.checkpoint_every_epochs,
                eval_fn=eval_fn, eval_every_epochs=ft.checkpoint_every_epochs,
                writer=MetricWriter(ctx.model_dir(row)),
                progress=ctx.progress, desc=f"finetune/{row}")
    if ckpt.latest_step() is None:
        ckpt.save(0, state)
    ckpt.close()
    report = {"row": row, "pairs": int(len(y)),
              "fooling_rate_of_pairs_on_vanilla": None,
              "test_accuracy": eval_fn(state)["test_accuracy"],
              "mode": mode}
    if row in VARIANTS:
        arrays, _ = generate.load_generated_set(ctx.wd.path(
            "generated", row), mmap=True)
        report["fooling_rate_of_pairs_on_vanilla"] = float(np.mean(arrays["fools"]))
    with open(ctx.wd.path("models", row, "report.json"), "w") as f:
        json.dump(report, f, indent=2)
    return {k: v for k, v in report.items() if isinstance(v, (int, float))}
