"""Stage 7: black-box evaluation on stored attack sets and the paper's tables.

Every test-time attack set is crafted **once** on the first
``evaluate.num_images`` test images (FGSM / PGD at ε = 0.3, targeted CW-L2
and JSMA with random targets, optionally AutoAttack; units
``testset/<attack>``) against the model ``evaluate.attack_source`` names:

* ``'substitute'`` (default, the paper's protocol): the independently trained
  substitute of the classifier stage (``models/substitute``), so every row,
  the vanilla model included, is attacked black-box;
* ``'vanilla'``: the vanilla model itself. Then the vanilla row is a
  white-box result and the fine-tuned rows (which start from it) are scored
  on transfer sets from their parent; the tables say so.

With ``evaluate.ladder_attack`` the LADDER attack of the same test images is
added (``testset/ladder``, Tables 8/9), always generated against the vanilla
model at the fine-tuning ε (it is the white-box LADDER attack by
definition). Every model (vanilla and each fine-tuned row) is then scored on
every set (units ``score/<row>``, cached in ``evaluate/scores/<row>.json``).
A row gets "−" in the column of the attack it was trained on.

``finish`` writes, in ``evaluate/``:

* ``table.md/json``: Tables 1-4 (Clean + attacks, Avg. Rank via
  ``advcore.tables.avg_rank``: every column ranks all rows incl. vanilla,
  1 = best, "−" cells omitted). TRADES+LADDER is left out, as in the paper.
* ``table5.md/json``: LADDER vs TRADES+LADDER (Table 5's rows that exist here).
* ``table8.md/json``: accuracy on the LADDER attack set (Tables 8/9).

Every title says which model crafted the sets and at which ε the LADDER rows
were fine-tuned; the JSON files also carry ``attack_source`` and
``finetune_eps``.
"""

from __future__ import annotations

import functools
import logging
import os

import numpy as np

from advcore import attacks, files, tables
from ladder_jax import attack_sets, generate, streams
from ladder_jax.units import Unit, config_values

log = logging.getLogger("ladder_jax")

STAGE = "evaluate"
COLUMNS = {"fgsm": "FGSM", "jsma": "JSMA", "pgd": "PGD", "cw": "CW", "aa": "AA"}
PAPER_ORDER = ("fgsm", "jsma", "pgd", "cw", "aa")  # Tables 1-4 (Song et al. not implemented)
DISPLAY_NAMES = {
    "vanilla": "Vanilla", "fgsm": "FGSM Adv", "jsma": "JSMA Adv", "pgd": "PGD Adv",
    "cw": "CW Adv", "cavRandom": "cavRandom", "random": "Random", "ladder_gan": "LADDER-GAN",
    "ladder": "LADDER", "trades_ladder": "TRADES+LADDER",
}


def _set_keys(config) -> list[str]:
    keys = list(config.evaluate.attacks)
    return keys + ["ladder"] if config.evaluate.ladder_attack else keys


def _rows(config) -> list[str]:
    return ["vanilla"] + list(config.finetune.rows)


def _source_unit(config) -> str:
    return "substitute" if config.evaluate.attack_source == "substitute" else "classifier"


def units(ctx) -> list[Unit]:
    c = ctx.config
    out = [Unit(f"testset/{key}", STAGE,
                config_values(c, f"attacks.{key}", "evaluate.num_images",
                              "evaluate.attack_batch_size", "evaluate.attack_source"),
                functools.partial(craft_test_set, key=key), inputs=(_source_unit(c),),
                outputs=(f"attack_sets/test/{key}",))
           for key in c.evaluate.attacks]
    if c.evaluate.ladder_attack:
        out.append(Unit("testset/ladder", STAGE,
                        config_values(c, "generate", "finetune.eps", "evaluate.num_images",
                                      "latents.batch_size", "seed"),
                        craft_ladder_test_set, inputs=("classifier", "generator/ae", "svm"),
                        outputs=("attack_sets/test/ladder",)))
    set_units = tuple(f"testset/{k}" for k in _set_keys(c))
    for row in _rows(c):
        model_unit = "classifier" if row == "vanilla" else f"finetune/{row}"
        out.append(Unit(f"score/{row}", STAGE,
                        {**config_values(c, "evaluate.batch_size"), "sets": _set_keys(c)},
                        functools.partial(score_row, row=row),
                        inputs=(model_unit,) + set_units,
                        outputs=(f"evaluate/scores/{row}.json",)))
    return out


def _test_subset(ctx) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    test = ctx.test_set()
    n = ctx.config.evaluate.num_images or len(test.labels)
    n = min(n, len(test.labels))
    return test.images[:n], np.asarray(test.labels[:n], np.int32), np.arange(n)


def craft_test_set(ctx, identity: dict, *, key: str) -> dict:
    del identity  # no checkpoints: the set is written whole
    images, labels, idx = _test_subset(ctx)
    # The set depends on its source model only (the vanilla model's accuracy on
    # it is score/vanilla's, which reads both).
    return attack_sets.craft_attack_set(ctx, key, images, labels, idx, "test",
                                        streams.jax_key(ctx.config.seed, f"testset/{key}"),
                                        source=ctx.config.evaluate.attack_source)


def craft_ladder_test_set(ctx, identity: dict) -> dict:
    """The LADDER attack on test images (Table 8), ε = finetune.eps (calibrated or adaptive)."""
    del identity
    seed = ctx.config.seed
    images, labels, idx = _test_subset(ctx)
    z, pred = ctx.compute_latents(images)
    targets = generate.choose_targets(labels, ctx.num_classes,
                                      streams.numpy_rng(seed, "testset_ladder_targets"))
    (eps,) = ctx.resolve_eps((ctx.config.finetune.eps,))
    res = ctx.generate_examples("ladder", z, labels, targets, pred,
                                streams.jax_key(seed, "testset_ladder"), eps_values=(eps,))
    x_adv = res["x_adv"][0]
    fools = res["pred"][0] != labels
    directory = attack_sets.attack_set_dir(ctx.wd, "test", "ladder")
    os.makedirs(os.path.dirname(directory), exist_ok=True)
    attacks.save_attack_set(
        directory, x_adv, labels, indices=idx, attack="ladder",
        attack_params={"eps": eps, "eps_unit": ctx.config.generate.eps_unit,
                       "calibrated": ctx.config.finetune.eps == 0, "variant": "ladder",
                       "attention_exp": ctx.config.svm.attention_exp},
        dataset=ctx.config.dataset.name, split="test",
        source_model={"row": "vanilla", "name": ctx.config.model.name}, targets=targets,
        extra={"eps": res["eps"][0].tolist(), "fools": fools.tolist()}, overwrite=True)
    return {"count": int(len(labels)), "eps": eps,
            "vanilla_accuracy": 100.0 * float(1 - fools.mean())}


def score_row(ctx, identity: dict, *, row: str) -> dict:
    del identity
    clf = ctx.classifier
    mv = ctx.load_model_vars(row)
    bs = ctx.config.evaluate.batch_size
    test = ctx.test_set()
    scores = {"clean": clf.accuracy(mv, test.images, test.labels, bs, ctx.mesh)}
    for key in _set_keys(ctx.config):
        s = attack_sets.load_test_set(ctx.wd, key)
        scores[key] = clf.accuracy(mv, s.images, s.labels, bs, ctx.mesh)
    files.write_json(ctx.wd.path("evaluate", "scores", f"{row}.json"), scores)
    return scores


def finish(ctx) -> dict:
    """Renders the tables from every row's scores."""
    scores = {row: files.read_json(ctx.wd.path("evaluate", "scores", f"{row}.json"))
              for row in _rows(ctx.config)}
    attack_keys = [k for k in PAPER_ORDER if k in ctx.config.evaluate.attacks]
    return write_tables(ctx, scores, attack_keys)


def attack_source_description(config) -> str:
    """Which model crafted the black-box test sets, as the table titles say it."""
    if config.evaluate.attack_source == "vanilla":
        return ("test sets crafted on the vanilla model (white box for Vanilla, transfer from "
                "their parent for the fine-tuned rows)")
    arch = config.evaluate.substitute_model.name or config.model.name
    return (f"test sets crafted on an independently trained substitute ({arch}, own seed), "
            f"black box for every row")


def finetune_eps_description(ctx) -> str:
    """The ε the LADDER rows were fine-tuned at, as the table titles say it."""
    c = ctx.config
    if c.finetune.eps == -1:
        return "LADDER rows at adaptive ε"
    unit = c.generate.eps_unit
    if c.finetune.eps != 0:
        return f"LADDER rows at ε = {c.finetune.eps:g} ({unit})"
    try:
        cal = ctx.svm_report()["calibration"]
    except ValueError:
        return f"LADDER rows at the calibrated ε ({unit})"
    return (f"LADDER rows at ε = {cal['eps']:g} ({unit}, calibrated: "
            f"{100 * cal['ladder_flip']:.0f} % of training latents cross the boundary)")


def _resolved_finetune_eps(ctx):
    if ctx.config.finetune.eps == 0:
        try:
            return ctx.calibrated_eps()
        except ValueError:
            return None
    return ctx.config.finetune.eps


def _annotate(prefix: str, extra: dict) -> None:
    payload = files.read_json(prefix + ".json")
    files.write_json(prefix + ".json", {**payload, **extra})


def write_tables(ctx, scores: dict[str, dict], attack_keys: list[str]) -> dict:
    """Renders the Tables 1-4, 5 and 8 analogues from per-row scores."""
    out = ctx.wd.ensure_dir("evaluate")
    dataset = ctx.config.dataset.name
    source = attack_source_description(ctx.config)
    eps_text = finetune_eps_description(ctx)
    extra = {"attack_source": ctx.config.evaluate.attack_source,
             "finetune_eps": _resolved_finetune_eps(ctx),
             "eps_unit": ctx.config.generate.eps_unit}
    main: dict[str, dict] = {}
    for row, s in scores.items():
        if row == "trades_ladder":
            continue
        cells = {"Clean": s["clean"]}
        for key in attack_keys:
            # "−": a row is not scored on the attack it was trained on.
            cells[COLUMNS[key]] = None if row == key else s.get(key)
        main[DISPLAY_NAMES[row]] = cells
    columns = ["Clean"] + [COLUMNS[k] for k in attack_keys]
    tables.write_table(os.path.join(out, "table"), main, columns,
                       title=f"LADDER black-box accuracy (%), {dataset}; {source}; {eps_text}",
                       with_avg_rank=True)
    _annotate(os.path.join(out, "table"), extra)
    result = {"table": main, "avg_rank": tables.avg_rank(main, columns), **extra}

    t5 = {DISPLAY_NAMES[r]: {"Clean": scores[r]["clean"],
                             **{COLUMNS[k]: scores[r].get(k) for k in attack_keys}}
          for r in ("vanilla", "ladder", "trades_ladder") if r in scores}
    if "trades_ladder" in scores:
        tables.write_table(os.path.join(out, "table5"), t5, columns,
                           title=f"LADDER vs TRADES+LADDER (%), {dataset}; {source}; "
                                 f"{eps_text}")
        _annotate(os.path.join(out, "table5"), extra)
        result["table5"] = t5
    if all("ladder" in s for s in scores.values()):
        t8 = {DISPLAY_NAMES[r]: {"LADDER attack": s["ladder"]} for r, s in scores.items()}
        tables.write_table(os.path.join(out, "table8"), t8, ["LADDER attack"],
                           title=f"Accuracy on LADDER examples of test images (%), {dataset}; "
                                 f"generated against the vanilla model (white box); {eps_text}")
        _annotate(os.path.join(out, "table8"), {**extra, "attack_source": "vanilla"})
        result["table8"] = t8
    with open(os.path.join(out, "table.md")) as f:
        log.info("black-box table (%s):\n%s", os.path.join(out, "table.md"), f.read())
    return result
