"""The LADDER study on MNIST (LeNet) / Fashion-MNIST: stages, tables, ε study, plots.

    python -m experiments.ladder_study --dataset=mnist --scale=smoke
    python -m experiments.ladder_study --dataset=mnist --scale=cpu --parts=main
    python -m experiments.ladder_study --dataset=mnist --scale=cpu --parts=eps,whitebox
    python -m experiments.ladder_study --dataset=mnist --scale=cpu_previous_defaults \
        --parts=variants
    python -m experiments.ladder_study --dataset=mnist --scale=cpu --report_only

Drives the ``ladder_jax`` CLI, one subprocess per stage, so the command
behind every number is literally ``python -m ladder_jax.main ...`` (recorded
in ``ladder_study.json`` with its wall time):

* ``main``: stages 1-7 in order on ``<runs>/<dataset>/<scale>/ladder``:
  the vanilla LeNet (paper: 99.13 % on MNIST) and the substitute that crafts
  the black-box sets, the generator (reconstruction MSE next to the paper's
  0.0076), the attention SVMs with their direction check and calibrated ε,
  4,500 generated pairs (450 per class) per variant, fine-tuning of LADDER,
  cavRandom, Random, TRADES+LADDER and the "X Adv." baselines (FGSM, JSMA,
  PGD, CW), and the black-box evaluation (Table 2 with Avg. Rank, Table 5's
  TRADES+LADDER rows, Tables 8/9: accuracy on LADDER examples of test
  images).
* ``eps``: the ε study of Fig. 9: for each ε of the scale's grid 4,500 LADDER
  pairs at that ε fine-tune their own LeNet, scored on the clean test set
  and on the black-box FGSM / PGD sets (the paper's red curve uses Song et
  al.'s attack, which is not implemented). Each ε has its own workdir whose
  upstream stages (vanilla model, substitute, latents, generator, SVMs) are
  symlinks to the main run's, so they are never recomputed.
* ``variants`` (not in the default ``--parts``): Table 2's direction
  ablation (LADDER vs cavRandom vs Random) at ``--variants_eps``. The
  previous-defaults scales fine-tuned at raw ε = 0.5, where no direction
  crosses the boundary, so their ablation ran at raw ε = 10; the current
  defaults fine-tune every variant at the calibrated ε in ``main`` already.
* ``whitebox``: Table 7 analogue: FGSM and PGD (ε = 0.3) crafted on each
  fine-tuned LeNet itself (white box). CW-L2 and JSMA white-box are left out
  (cost); so is Song et al. (not implemented).

Scales (``SCALE_TOKENS``, ``scale_overrides``):

* ``smoke``: the configs' ``smoke`` variant (seconds per stage, numbers
  meaningless);
* ``cpu``: the configs' defaults (the faithful method: standardized SVM
  inputs, ε in latent-norm units at the calibrated ε, test sets crafted on a
  substitute) at a reduced budget;
* ``cpu_svm255``: ``cpu`` with the authors' x·255 SVM inputs (``:svm255``);
* ``cpu_previous_defaults``: ``cpu`` with the library's defaults before they
  were made faithful (``:previous_defaults``: SVMs on the latents as they
  are, which stay at their random init, raw ε = 0.5, test sets crafted on the
  vanilla model): the committed tables of the former ``cpu`` scale;
* ``cpu_svm255_previous_defaults``: the same with x·255 SVM inputs: the
  committed tables of the former ``cpu_svm255`` scale;
* ``full``: the configs unchanged (the paper's recipe, 1000 generator epochs
  and 100 fine-tuning epochs per row).

Every ``cpu_*`` scale shares ``cpu``'s vanilla model, substitute, latents and
generator (``UPSTREAM_SCALE``), so the old and new defaults are compared on
one vanilla model and one generator.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from typing import Any

import numpy as np

from experiments.jsonio import read_json, write_json

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_RUNS = os.path.join(REPO, "experiments", "runs")
DEFAULT_RESULTS = os.path.join(REPO, "experiments", "results")
SCALES = ("smoke", "cpu", "cpu_svm255", "cpu_previous_defaults",
          "cpu_svm255_previous_defaults", "full")
# The config variant tokens of a scale (ladder_jax/config_presets.py).
SCALE_TOKENS = {"smoke": "smoke", "cpu_svm255": "svm255",
                "cpu_previous_defaults": "previous_defaults",
                "cpu_svm255_previous_defaults": "previous_defaults,svm255"}
# Scales that keep the library's defaults from before they were made faithful.
PREVIOUS_DEFAULTS_SCALES = ("cpu_previous_defaults", "cpu_svm255_previous_defaults")
# A scale whose upstream stages (vanilla model, substitute, latents, generator)
# are the named scale's: run there (skipped when done) and linked, so that both
# scales perturb the latents of one vanilla model and decode with one generator.
UPSTREAM_SCALE = {"cpu_svm255": "cpu", "cpu_previous_defaults": "cpu",
                  "cpu_svm255_previous_defaults": "cpu"}
UPSTREAM_STAGES = ("classifier", "latents", "generator")
UPSTREAM_DIRS = ("models/vanilla", "models/substitute", "latents", "generator")
UPSTREAM_MARKERS = ("classifier", "substitute", "latents", "generator__ae", "generator__gan")
DATASETS = ("mnist", "fashion_mnist")
STAGES = ("classifier", "latents", "generator", "svm", "generate", "finetune", "evaluate")
# Fig. 9's ε values (raw, the previous defaults) and seven values of the same
# span in latent-norm units (5 % to 100 % of a typical latent's norm).
FIG9_EPS = (0.1, 2.0, 5.0, 7.0, 10.0, 15.0, 20.0)
FIG9_EPS_LATENT_NORM = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)
# The previous-defaults scales' ``variants`` ε (raw): fixed from the direction
# check on training images only (MNIST, x·255 SVMs: 80 % of latents cross the
# boundary at ε = 10, beside the paper's Fig. 7 range of 7-9), not from any
# test result.
VARIANTS_EPS = 10.0
VARIANT_ROWS = ("ladder", "cavRandom", "random")
SMOKE_EPS = (0.1, 0.5)
# Upstream of generation: shared by every ε workdir.
SHARED_DIRS = ("models/vanilla", "models/substitute", "latents", "generator", "svm")
SHARED_MARKERS = ("classifier", "substitute", "latents", "generator__ae", "generator__gan",
                  "svm")


def defaults_of(scale: str) -> str:
    """'previous' for the scales that keep the former defaults, else 'faithful'."""
    return "previous" if scale in PREVIOUS_DEFAULTS_SCALES else "faithful"


def fig9_eps(scale: str) -> tuple[float, ...]:
    """The ε study's grid, in the scale's ε unit."""
    if scale == "smoke":
        return SMOKE_EPS
    return FIG9_EPS if scale in PREVIOUS_DEFAULTS_SCALES else FIG9_EPS_LATENT_NORM


def scale_overrides(scale: str) -> dict[str, Any]:
    """Dotted config overrides of a scale (on top of the config file and ``SCALE_TOKENS``)."""
    if scale in ("smoke", "full"):
        return {}
    if scale in UPSTREAM_SCALE:
        return scale_overrides(UPSTREAM_SCALE[scale])
    if scale == "cpu":
        # Fixed from cost alone (2 shared CPU cores), not from test results:
        # full train split for the vanilla LeNet (10 epochs as the paper), a
        # generator trained 20 epochs instead of 1000, 4,500 pairs as the
        # paper, 20 fine-tuning epochs instead of 100, cheaper CW/JSMA and
        # 1,000 test images per attack set.
        return {
            "progress_bar": False,
            "generator.epochs": 20,
            # The same update as one batch of 256 (BN-free MNIST generator),
            # computed as the mean over microbatches: much faster on 2 cores.
            "generator.microbatch": 16,
            "generator.checkpoint_every_epochs": 2,
            "finetune.epochs": 20,
            "finetune.checkpoint_every_epochs": 2,
            "evaluate.num_images": 1000,
            "attacks.cw.overrides": {"num_steps": 100, "binary_search_steps": 3},
            "attacks.jsma.overrides": {"num_steps": 50},
        }
    raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")


def _flag(key: str, value: Any) -> str:
    if isinstance(value, dict):
        # ml_collections parses dict-valued flags poorly; set each entry.
        return " ".join(f"--config.{key}.{k}={_scalar(v)}" for k, v in value.items())
    return f"--config.{key}={_scalar(value)}"


def _scalar(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return "(" + ",".join(_scalar(v) if not isinstance(v, str) else repr(v)
                              for v in value) + ",)"
    return str(value)


def stage_command(dataset: str, scale: str, stage: str, workdir: str,
                  overrides: dict[str, Any]) -> list[str]:
    tokens = SCALE_TOKENS.get(scale, "")
    cfg = f"configs/ladder/{dataset}.py" + (f":{tokens}" if tokens else "")
    cmd = [sys.executable, "-m", "ladder_jax.main", f"--config={cfg}", f"--stage={stage}",
           f"--workdir={os.path.relpath(workdir, REPO)}"]
    for k, v in overrides.items():
        cmd.extend(_flag(k, v).split(" "))
    return cmd


def _pretty(cmd: list[str]) -> str:
    parts = ["python"] + cmd[1:]
    return " ".join(f"'{p}'" if any(c in p for c in "()[]{}'\" ") else p for p in parts)


class Log:
    """``ladder_study.json`` in the study root: every stage command and its wall time."""

    def __init__(self, root: str):
        self.path = os.path.join(root, "ladder_study.json")
        self.data = read_json(self.path) or {"commands": []}

    def record(self, part: str, stage: str, cmd: list[str], seconds: float, rc: int,
               defaults: str = "faithful") -> None:
        # ``defaults`` tells the report which library defaults a command ran
        # under ('faithful' or 'previous'): a runs cache may hold commands
        # from before the change, which lack the field.
        self.data["commands"].append({"part": part, "stage": stage, "command": _pretty(cmd),
                                      "seconds": round(seconds, 1), "returncode": rc,
                                      "finished_at": time.time(), "defaults": defaults})
        write_json(self.path, self.data)


def run_stage(log: Log, part: str, dataset: str, scale: str, stage: str, workdir: str,
              overrides: dict[str, Any]) -> None:
    cmd = stage_command(dataset, scale, stage, workdir, overrides)
    os.makedirs(os.path.join(workdir, "logs"), exist_ok=True)
    print(f"[ladder/{part}] {_pretty(cmd)}", flush=True)
    t0 = time.time()
    with open(os.path.join(workdir, "logs", f"{stage}.log"), "a") as out:
        rc = subprocess.call(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    seconds = time.time() - t0
    log.record(part, stage, cmd, seconds, rc, defaults=defaults_of(scale))
    print(f"[ladder/{part}] {stage}: rc={rc}, {seconds:.0f}s", flush=True)
    if rc != 0:
        raise RuntimeError(f"stage {stage} failed (rc={rc}); see {workdir}/logs/{stage}.log")


# ---------------------------------------------------------------------------


def run_main(log: Log, dataset: str, scale: str, root: str) -> str:
    workdir = os.path.join(root, "ladder")
    over = scale_overrides(scale)
    stages = STAGES
    if scale in UPSTREAM_SCALE:
        up = UPSTREAM_SCALE[scale]
        up_wd = os.path.join(os.path.dirname(root), up, "ladder")
        for stage in UPSTREAM_STAGES:
            run_stage(log, f"main ({up})", dataset, up, stage, up_wd, scale_overrides(up))
        _link_upstream(up_wd, workdir, UPSTREAM_DIRS, UPSTREAM_MARKERS)
        stages = tuple(s for s in STAGES if s not in UPSTREAM_STAGES)
    for stage in stages:
        run_stage(log, "main", dataset, scale, stage, workdir, over)
    return workdir


def _link_upstream(main_wd: str, eps_wd: str, dirs=SHARED_DIRS, markers=SHARED_MARKERS) -> None:
    """Shares ``main_wd``'s vanilla model, latents, generator and (by default) SVMs.

    The markers are copied, so a linked stage is skipped only while its
    fingerprint still matches. A stage re-run in the linking workdir writes
    through the symlink into ``main_wd``'s files, so the scales that share
    stages must not run at the same time.
    """
    for rel in dirs:
        src, dst = os.path.join(main_wd, rel), os.path.join(eps_wd, rel)
        if os.path.exists(src) and not os.path.lexists(dst):
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            os.symlink(os.path.relpath(src, os.path.dirname(dst)), dst)
    for m in markers:
        src = os.path.join(main_wd, "markers", m + ".json")
        dst = os.path.join(eps_wd, "markers", m + ".json")
        if os.path.exists(src):
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copyfile(src, dst)


def run_eps(log: Log, dataset: str, scale: str, root: str, eps_values) -> None:
    """Fig. 9: one LADDER row per ε, each in a workdir sharing the main run's upstream stages.

    The substitute (or vanilla) FGSM / PGD sets are crafted again in each
    workdir; they are the main run's sets (same model, attack and key).
    """
    main_wd = os.path.join(root, "ladder")
    if not os.path.exists(os.path.join(main_wd, "markers", "svm.json")):
        raise RuntimeError("the ε study needs the main run's svm stage first (--parts=main)")
    for eps in eps_values:
        wd = os.path.join(root, "eps", f"eps{eps:g}")
        _link_upstream(main_wd, wd)
        over = dict(scale_overrides(scale))
        over.update({
            "generate.variants": ("ladder",), "generate.eps_list": (float(eps),),
            "finetune.eps": float(eps), "finetune.rows": ("ladder",),
            "evaluate.attacks": ("fgsm", "pgd"), "evaluate.ladder_attack": False,
        })
        for stage in ("generate", "finetune", "evaluate"):
            run_stage(log, f"eps{eps:g}", dataset, scale, stage, wd, over)


def run_variants(log: Log, dataset: str, scale: str, root: str, eps: float) -> None:
    """Table 2's direction ablation (LADDER vs cavRandom vs Random) at one ε.

    The previous defaults generated at raw ε = 0.5 (the job script's), where
    even a boundary-crossing normal moves a latent by a few % of its norm, so
    the three variants fine-tuned on nearly the same pairs. This part repeats
    generation, fine-tuning and the full black-box evaluation of the three
    rows at ``eps`` in a workdir sharing the main run's upstream stages.
    """
    main_wd = os.path.join(root, "ladder")
    if not os.path.exists(os.path.join(main_wd, "markers", "svm.json")):
        raise RuntimeError("the variants part needs the main run's svm stage first "
                           "(--parts=main)")
    wd = os.path.join(root, "variants", f"eps{eps:g}")
    _link_upstream(main_wd, wd)
    over = dict(scale_overrides(scale))
    over.update({"generate.variants": VARIANT_ROWS, "generate.eps_list": (float(eps),),
                 "finetune.eps": float(eps), "finetune.rows": VARIANT_ROWS})
    for stage in ("generate", "finetune", "evaluate"):
        run_stage(log, f"variants_eps{eps:g}", dataset, scale, stage, wd, over)


def run_whitebox(dataset: str, scale: str, root: str) -> dict:
    """Table 7 analogue: FGSM / PGD at ε = 0.3 crafted on each fine-tuned model."""
    import jax

    from advcore import evaluation as ev
    from advcore.attacks import make_attack
    from ladder_jax.context import make_context

    main_wd = os.path.join(root, "ladder")
    config = _load_config(dataset, scale)
    ctx = make_context(config, main_wd)
    clf = ctx.classifier
    test = ctx.test_set()
    n = config.evaluate.num_images or len(test.labels)
    out_path = os.path.join(main_wd, "whitebox.json")
    result = read_json(out_path) or {}
    attacks = {"FGSM": make_attack(config.attacks.fgsm.name,
                                   **dict(config.attacks.fgsm.overrides)),
               "PGD": make_attack(config.attacks.pgd.name, **dict(config.attacks.pgd.overrides))}

    def apply_fn(mv, x):
        return clf.decision_logits(clf.logits(mv, x))

    for row in ("vanilla",) + tuple(config.finetune.rows):
        marker = ctx.wd.read_marker("classifier" if row == "vanilla" else f"finetune/{row}")
        if marker is None:
            continue
        # A row is redone when its model was retrained since (e.g. under new defaults).
        if (result.get(row) or {}).get("model") == marker["output"]:
            continue
        mv = ctx.load_model_vars(row)
        t0 = time.time()
        res = ev.evaluate_classifier(apply_fn, mv, test.images[:n], test.labels[:n], attacks,
                                     batch_size=min(500, n), key=jax.random.PRNGKey(0))
        result[row] = {k: res[k] for k in ("clean", "FGSM", "PGD")}
        result[row]["n"] = n
        result[row]["model"] = marker["output"]
        result[row]["seconds"] = time.time() - t0
        write_json(out_path, result)
        print(f"[ladder/whitebox] {row}: {result[row]}", flush=True)
    return result


def _load_config(dataset: str, scale: str):
    from configs.ladder import fashion_mnist, mnist

    module = mnist if dataset == "mnist" else fashion_mnist
    c = module.get_config(SCALE_TOKENS.get(scale, ""))
    for key, value in scale_overrides(scale).items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        if isinstance(value, dict):
            node[leaf].update(value)
        else:
            node[leaf] = value
    return c


# ---------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------


def write_results(dataset: str, scale: str, root: str, results_dir: str) -> dict:
    from advcore import plots, tables
    from ladder_jax.stages.evaluate import DISPLAY_NAMES

    out = os.path.join(results_dir, dataset, scale)
    os.makedirs(out, exist_ok=True)
    summary_path = os.path.join(out, "ladder_summary.json")
    # The runs cache is not in git; what it lacks comes from the committed
    # summary (merge_committed), so a fresh clone never loses measured numbers.
    committed = read_json(summary_path) or {}
    main_wd = os.path.join(root, "ladder")
    summary: dict[str, Any] = {"dataset": dataset, "scale": scale}
    log = read_json(os.path.join(root, "ladder_study.json")) or {"commands": []}
    # A runs cache may hold commands from before the faithful defaults.
    summary["commands"] = [{**c, "defaults": c.get("defaults", "previous")}
                           for c in log["commands"]]

    cfg = read_json(os.path.join(main_wd, "config.json")) or {}
    if cfg.get("evaluate", {}).get("num_images"):  # test images per black-box set
        summary["eval_n"] = cfg["evaluate"]["num_images"]
    marker = read_json(os.path.join(main_wd, "markers", "classifier.json"))
    if marker:
        summary["vanilla"] = marker["info"]
    marker = read_json(os.path.join(main_wd, "markers", "substitute.json"))
    if marker:
        summary["substitute"] = marker["info"]
    gen = read_json(os.path.join(main_wd, "generator", "ae", "report.json"))
    if gen:
        summary["generator"] = gen
    svm = read_json(os.path.join(main_wd, "markers", "svm.json"))
    if svm:
        summary["svm"] = svm["info"]
    report = read_json(os.path.join(main_wd, "svm", "report.json")) or {}
    if "direction_check" in report:
        summary["svm_check"] = {k: report[k] for k in (
            "latent_scaling", "fit_norm", "mean_init_cos", "mean_normal_gap_cos",
            "mean_latent_norm", "calibration", "direction_check")}
    if cfg.get("svm", {}).get("latent_scaling"):  # configs from before lack the fields
        summary["protocol"] = {"defaults": defaults_of(scale),
                               "tokens": SCALE_TOKENS.get(scale, ""),
                               "latent_scaling": cfg["svm"]["latent_scaling"],
                               "eps_unit": cfg["generate"]["eps_unit"],
                               "finetune_eps": cfg["finetune"]["eps"],
                               "attack_source": cfg["evaluate"]["attack_source"]}
        if "svm_check" in summary and cfg["finetune"]["eps"] == 0:
            summary["protocol"]["finetune_eps"] = summary["svm_check"]["calibration"]["eps"]
            summary["protocol"]["finetune_eps_calibrated"] = True
    for variant in ("ladder", "cavRandom", "random"):
        m = read_json(os.path.join(main_wd, "markers", f"generate__{variant}.json"))
        if m:
            summary.setdefault("generate", dict(committed.get("generate") or {}))[variant] = \
                m["info"]
    for name in ("table", "table5", "table8"):
        src = os.path.join(main_wd, "evaluate", name + ".md")
        if os.path.exists(src):
            shutil.copyfile(src, os.path.join(out, f"ladder_{name}.md"))
            summary[name] = read_json(os.path.join(main_wd, "evaluate", name + ".json"))
    for src, dst in ((os.path.join(main_wd, "generator", "ae", "reconstruction.png"),
                      "ladder_reconstruction.png"),
                     (os.path.join(main_wd, "generated", "eps_sweep.png"),
                      "ladder_eps_sweep.png")):
        if os.path.exists(src):
            shutil.copyfile(src, os.path.join(out, dst))
    # A compact view of the pairs LADDER trains on (advcore.plots.image_grid).
    gen_dir = os.path.join(main_wd, "generated", "ladder")
    if os.path.exists(os.path.join(gen_dir, "info.json")):
        from ladder_jax.generate import load_generated_set

        arrays, _ = load_generated_set(gen_dir, mmap=True)
        k = min(8, len(arrays["label"]))
        imgs = np.concatenate([np.asarray(arrays["x"][:k]), np.asarray(arrays["x_adv"][:k])])
        titles = [f"x, y={int(y)}" for y in arrays["label"][:k]] + [
            f"x̂ ε={float(e):g}, f={int(p)}" for e, p in zip(arrays["eps"][:k],
                                                           arrays["pred"][:k])]
        plots.image_grid(imgs, os.path.join(out, "ladder_pairs.png"), nrow=2, titles=titles,
                         suptitle=f"{dataset} ({scale}): clean x (top) and LADDER x̂ (bottom)")
    # Per model row: a white-box run that reached only some models keeps the rest.
    wb = {**(committed.get("whitebox") or {}),
          **(read_json(os.path.join(main_wd, "whitebox.json")) or {})}
    if wb:
        rows = {DISPLAY_NAMES.get(r, r): {"Clean": v["clean"],
                                          "FGSM": None if r == "fgsm" else v["FGSM"],
                                          "PGD": None if r == "pgd" else v["PGD"]}
                for r, v in wb.items()}
        tables.write_table(os.path.join(out, "ladder_table7_whitebox"), rows,
                           ["Clean", "FGSM", "PGD"],
                           title=f"White-box FGSM/PGD (ε=0.3) on each model, {dataset}, "
                                 f"first n={next(iter(wb.values()))['n']} test images")
        summary["whitebox"] = wb
    eps_rows = dict((committed.get("fig9") or {}).get("rows") or {})
    van = (committed.get("fig9") or {}).get("vanilla")
    eps_root = os.path.join(root, "eps")
    if os.path.isdir(eps_root):
        for name in sorted(os.listdir(eps_root), key=lambda s: float(s[3:])):
            t = read_json(os.path.join(eps_root, name, "evaluate", "table.json"))
            if not t or not _shares_main_svms(main_wd, os.path.join(eps_root, name)):
                continue
            lad = t["rows"].get("LADDER")
            if lad:
                eps_rows[f"ε={float(name[3:]):g}"] = lad
                van = t["rows"].get("Vanilla")
    eps_rows = dict(sorted(eps_rows.items(), key=lambda kv: float(kv[0].split("=")[1])))
    if eps_rows:
        tables.write_table(os.path.join(out, "ladder_fig9_eps"), eps_rows,
                           ["Clean", "FGSM", "PGD"],
                           title=f"Fig. 9 analogue: LADDER fine-tuned at each ε, {dataset} "
                                 f"(vanilla: " + ", ".join(f"{k} {v:.2f}" for k, v in
                                                           (van or {}).items()) + ")",
                           row_header="ε")
        summary["fig9"] = {"rows": eps_rows, "vanilla": van}
        _plot_eps(eps_rows, van, os.path.join(out, "ladder_fig9_eps.png"),
                  f"{dataset} ({scale}): LADDER vs ε")
    variants = dict(committed.get("variants") or {})
    var_root = os.path.join(root, "variants")
    if os.path.isdir(var_root):
        for name in os.listdir(var_root):
            t = read_json(os.path.join(var_root, name, "evaluate", "table.json"))
            if t and _shares_main_svms(main_wd, os.path.join(var_root, name)):
                variants[f"ε={float(name[3:]):g}"] = t
                for src, dst in (("table", ""), ("table8", "_table8")):
                    path = os.path.join(var_root, name, "evaluate", f"{src}.md")
                    if os.path.exists(path):
                        shutil.copyfile(path, os.path.join(out, f"ladder_variants_{name}{dst}.md"))
    if variants:
        summary["variants"] = variants
    summary = merge_committed(summary, committed)
    write_json(summary_path, summary)
    return summary


def _shares_main_svms(main_wd: str, wd: str) -> bool:
    """True when ``wd`` (an ε or variants workdir) ran on the main run's current SVMs.

    A runs cache can keep ε workdirs of an earlier protocol (other SVMs,
    another ε unit); their tables must not join the current ones.
    """
    main = read_json(os.path.join(main_wd, "markers", "svm.json"))
    linked = read_json(os.path.join(wd, "markers", "svm.json"))
    return bool(main and linked and main.get("output") == linked.get("output")
                and main.get("fingerprint") == linked.get("fingerprint"))


# Summary keys that identify the models every table was computed from.
UPSTREAM_KEYS = ("vanilla", "generator", "svm")


def merge_committed(fresh: dict, committed: dict) -> dict:
    """The summary built from the runs cache, completed from the committed one.

    The runs cache is not in git, so on a fresh clone every stage result it
    lacks (vanilla model, generator, SVMs, tables, ...) is kept from the
    committed summary, and the cache's results replace the committed ones
    where it has them. Stage commands are kept per (part, stage, command): the
    committed ones the cache's log does not list, then the cache's own (its log
    already holds every invocation it ran, so nothing is counted twice).

    Completing is only sound if both hold the same upstream models: a cache
    whose vanilla model, generator or SVMs differ from the committed ones
    (retrained on other code, say) would mix new upstream figures with tables
    of the old models. Such a cache must then hold every result the committed
    summary has (it replaces it whole); otherwise this raises.
    """
    differs = [k for k in UPSTREAM_KEYS
               if fresh.get(k) is not None and committed.get(k) is not None
               and _upstream_identity(fresh[k]) != _upstream_identity(committed[k])]
    if differs:
        lacking = [k for k in committed if k not in fresh and k != "commands"]
        if lacking:
            raise ValueError(
                f"the runs cache's {', '.join(differs)} differ from the committed summary's, "
                f"and the cache lacks {', '.join(lacking)}: merging would mix results of "
                f"different models. Re-run the missing parts on this cache, or write to "
                f"another --results_dir.")
        return fresh
    def key(c):
        return c["part"], c["stage"], c["command"]

    fresh_cmds = fresh.get("commands") or []
    seen = {key(c) for c in fresh_cmds}
    commands = [c for c in committed.get("commands") or [] if key(c) not in seen] + fresh_cmds
    # The committed key order first, so a re-run that adds nothing rewrites the
    # same file.
    order = list(committed) + [k for k in fresh if k not in committed]
    return {k: commands if k == "commands" else fresh.get(k, committed.get(k))
            for k in order}


def _upstream_identity(info: dict) -> dict:
    """An upstream stage's result without its wall time (which varies run to run)."""
    return {k: v for k, v in info.items() if k != "seconds"}


def _plot_eps(rows: dict, vanilla: dict, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    eps = [float(k.split("=")[1]) for k in rows]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for col, color in (("Clean", "tab:blue"), ("FGSM", "tab:red"), ("PGD", "tab:orange")):
        ys = [r.get(col) for r in rows.values()]
        if all(y is None for y in ys):
            continue
        ax.plot(eps, ys, "o-", color=color, label=f"LADDER, {col}")
        if vanilla and vanilla.get(col) is not None:
            ax.axhline(vanilla[col], color=color, ls="--", lw=0.8, label=f"vanilla, {col}")
    ax.set_xlabel("ε (latent perturbation)")
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="mnist", choices=DATASETS)
    parser.add_argument("--scale", default="cpu", choices=SCALES)
    parser.add_argument("--parts", default="main,eps,whitebox",
                        help="comma-separated: main (stages 1-7), eps (Fig. 9), whitebox "
                             "(Table 7), variants (LADDER vs cavRandom vs Random at "
                             "--variants_eps)")
    parser.add_argument("--variants_eps", type=float, default=None,
                        help="ε of the variants part (default: 10 on the previous-defaults "
                             "scales; the current defaults need it given)")
    parser.add_argument("--eps", default="",
                        help="comma-separated ε values of the ε study (default: Fig. 9's "
                             "span in the scale's ε unit)")
    parser.add_argument("--runs_dir", default=DEFAULT_RUNS)
    parser.add_argument("--results_dir", default=DEFAULT_RESULTS)
    parser.add_argument("--report_only", action="store_true")
    args = parser.parse_args(argv)
    if REPO not in sys.path:
        sys.path.insert(0, REPO)
    parts = [p for p in args.parts.split(",") if p]
    for p in parts:
        if p not in ("main", "eps", "whitebox", "variants"):
            parser.error(f"--parts entries must be main, eps, whitebox or variants, got {p!r}")
    if args.variants_eps is None and "variants" in parts:
        if args.scale not in PREVIOUS_DEFAULTS_SCALES:
            parser.error("--parts=variants needs --variants_eps on this scale: its main run "
                         "already fine-tunes LADDER, cavRandom and Random at the calibrated ε")
        args.variants_eps = VARIANTS_EPS
    if args.variants_eps is not None and args.variants_eps <= 0:
        parser.error(f"--variants_eps must be > 0, got {args.variants_eps}")
    root = os.path.join(args.runs_dir, args.dataset, args.scale)
    os.makedirs(root, exist_ok=True)
    eps_values = [float(e) for e in args.eps.split(",") if e] or fig9_eps(args.scale)
    if not args.report_only:
        log = Log(root)
        t0 = time.time()
        if "main" in parts:
            run_main(log, args.dataset, args.scale, root)
        if "eps" in parts:
            run_eps(log, args.dataset, args.scale, root, eps_values)
        if "whitebox" in parts:
            run_whitebox(args.dataset, args.scale, root)
        if "variants" in parts:
            run_variants(log, args.dataset, args.scale, root, args.variants_eps)
        print(f"[ladder] wall time {time.time() - t0:.0f}s")
    summary = write_results(args.dataset, args.scale, root, args.results_dir)
    for name in ("table", "table5", "table8"):
        p = os.path.join(args.results_dir, args.dataset, args.scale, f"ladder_{name}.md")
        if os.path.exists(p):
            print(open(p).read())
    print("generator:", summary.get("generator"))


if __name__ == "__main__":
    main()
