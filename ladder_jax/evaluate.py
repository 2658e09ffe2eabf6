"""Stage 7: black-box evaluation on stored attack sets and the paper's tables (SPEC 4.6).

Every test-time attack set is crafted **once against the vanilla model** on
the first ``evaluate.num_images`` test images (FGSM / PGD at ε = 0.3,
targeted CW-L2 and JSMA with random targets, optionally AutoAttack) and
stored; every model (vanilla and each fine-tuned row) is then scored on
every set. A row gets "−" in the column of the attack it was trained on.

Outputs in ``evaluate/``:

* ``table.md/json``: Tables 1-4 (Clean + attacks, Avg. Rank via
  ``advcore.tables.avg_rank``: every column ranks all rows incl. vanilla,
  1 = best, "−" cells omitted). TRADES+LADDER is left out, as in the paper.
* ``table5.md/json``: LADDER vs TRADES+LADDER (Table 5's rows that exist here).
* ``table8.md/json``: accuracy on LADDER examples generated from test images
  against the vanilla model (the "LADDER attack", Tables 8/9).
* ``scores/<row>.json``: the raw accuracies, cached per row and set
  fingerprints so adding a row does not re-score the others.
"""

from __future__ import annotations

import functools
import json
import os

import numpy as np

from advcore import attacks, tables
from ladder_jax import attack_sets
from ladder_jax.classifier import accuracy
from ladder_jax.context import Context
from ladder_jax.finetune import DISPLAY_NAMES
from ladder_jax.stages import run_generation, run_unit
from ladder_jax.workdir import name_seed, stable_hash

COLUMNS = {"fgsm": "FGSM", "jsma": "JSMA", "pgd": "PGD", "cw": "CW", "aa": "AA"}
PAPER_ORDER = ("fgsm", "jsma", "pgd", "cw", "aa")  # Tables 1-4 (Song et al. not implemented)


def _test_subset(ctx: Context) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    test = ctx.test_set()
    n = ctx.config.evaluate.num_images or len(test.labels)
    n = min(n, len(test.labels))
    return test.images[:n], test.labels[:n], np.arange(n)


def _craft_ladder_test_set(ctx: Context) -> dict:
    """The LADDER attack on test images (Table 8), ε = finetune.eps (or adaptive)."""
    from ladder_jax import generate
    from ladder_jax.stages import compute_latents

    images, labels, idx = _test_subset(ctx)
    z, pred = compute_latents(ctx, images)
    targets = generate.choose_targets(labels, ctx.num_classes, ctx.config.seed + 1)
    eps = ctx.config.finetune.eps
    res = run_generation(ctx, "ladder", images, z, labels.astype(np.int32), targets, pred,
                         key_offset=77, eps_values=(eps,))
    x_adv = res["x_adv"][0]
    fools = res["pred"][0] != labels
    directory = attack_sets.attack_set_dir(ctx, "test", "ladder")
    os.makedirs(os.path.dirname(directory), exist_ok=True)
    attacks.save_attack_set(
        directory, x_adv, labels, indices=idx, attack="ladder",
        attack_params={"eps": eps, "variant": "ladder",
                       "attention_exp": ctx.config.svm.attention_exp},
        dataset=ctx.config.dataset.name, split="test",
        source_model={"row": "vanilla", "name": ctx.config.model.name}, targets=targets,
        extra={"eps": res["eps"][0].tolist(), "fools": fools.tolist()}, overwrite=True)
    return {"count": int(len(labels)), "vanilla_accuracy": 100.0 * float(1 - fools.mean())}


def _row_fingerprint(ctx: Context, row: str) -> str | None:
    unit = "classifier" if row == "vanilla" else f"finetune/{row}"
    marker = ctx.wd.read_marker(unit)
    return None if marker is None else marker["fingerprint"]


def _score_row(ctx: Context, row: str, set_keys: list[str]) -> dict:
    clf = ctx.classifier
    mv = ctx.load_model_vars(row)
    bs = ctx.config.evaluate.batch_size
    test = ctx.test_set()
    scores = {"clean": accuracy(clf, mv, test.images, test.labels, bs)}
    for key in set_keys:
        s = attack_sets.load_test_set(ctx, key)
        scores[key] = accuracy(clf, mv, s.images, s.labels, bs)
    out = ctx.wd.ensure_dir("evaluate", "scores")
    with open(os.path.join(out, f"{row}.json"), "w") as f:
        json.dump(scores, f, indent=2)
    return scores


def stage_evaluate(ctx: Context, force: bool = False) -> dict:
    ev = ctx.config.evaluate
    images, labels, idx = _test_subset(ctx)
    set_keys: list[str] = []
    wd = ctx.wd
    for key in ev.attacks:
        # Crafted against the vanilla model: independent of every later stage.
        fp = stable_hash({"classifier": wd.stage_fingerprint("classifier"),
                          "attack": wd.section_hash(f"attacks.{key}", "evaluate.num_images",
                                                    "evaluate.attack_batch_size")})
        run_unit(ctx, f"testset/{key}", fp,
                 functools.partial(attack_sets.craft_attack_set, ctx, key, images, labels, idx,
                                   "test", name_seed("testset/" + key)), force)
        set_keys.append(key)
    if ev.ladder_attack:
        fp = stable_hash({"generate": wd.stage_fingerprint("generate"),
                          "settings": wd.section_hash("finetune.eps", "evaluate.num_images")})
        run_unit(ctx, "testset/ladder", fp, functools.partial(_craft_ladder_test_set, ctx),
                 force)
        set_keys.append("ladder")

    rows = ["vanilla"] + [r for r in ctx.config.finetune.rows
                          if _row_fingerprint(ctx, r) is not None]
    scores: dict[str, dict] = {}
    for row in rows:
        set_fps = [ctx.wd.read_marker(f"testset/{k}")["fingerprint"] for k in set_keys]
        fp = stable_hash({"row": _row_fingerprint(ctx, row), "sets": set_fps,
                             "keys": set_keys, "bs": ctx.config.evaluate.batch_size})
        path = ctx.wd.path("evaluate", "scores", f"{row}.json")
        run_unit(ctx, f"score/{row}", fp, functools.partial(_score_row, ctx, row, set_keys),
                 force)
        with open(path) as f:
            scores[row] = json.load(f)
    return write_tables(ctx, scores, [k for k in PAPER_ORDER if k in ev.attacks])


def write_tables(ctx: Context, scores: dict[str, dict], attack_keys: list[str]) -> dict:
    """Renders the Tables 1-4, 5 and 8 analogues from per-row scores."""
    out = ctx.wd.ensure_dir("evaluate")
    dataset = ctx.config.dataset.name
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
                       title=f"LADDER black-box accuracy (%), {dataset}", with_avg_rank=True)
    result = {"table": main, "avg_rank": tables.avg_rank(main, columns)}

    t5 = {DISPLAY_NAMES[r]: {"Clean": scores[r]["clean"],
                             **{COLUMNS[k]: scores[r].get(k) for k in attack_keys}}
          for r in ("vanilla", "ladder", "trades_ladder") if r in scores}
    if "trades_ladder" in scores:
        tables.write_table(os.path.join(out, "table5"), t5, columns,
                           title=f"LADDER vs TRADES+LADDER (%), {dataset}")
        result["table5"] = t5
    if all("ladder" in s for s in scores.values()):
        t8 = {DISPLAY_NAMES[r]: {"LADDER attack": s["ladder"]} for r, s in scores.items()}
        tables.write_table(os.path.join(out, "table8"), t8, ["LADDER attack"],
                           title=f"Accuracy on LADDER examples of test images (%), {dataset}")
        result["table8"] = t8
    with open(os.path.join(out, "table.md")) as f:
        print(f.read())
    return result
