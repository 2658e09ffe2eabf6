"""Config presets of the LBGAT family: the defaults, the variant tokens, the MNIST family.

The files in ``configs/lbgat/`` are thin ``get_config(arg)`` wrappers around
these functions, so that they load by path from a checkout and from an
installed package alike (``advcore.config_files``).

Defaults reproduce the official LBGAT code (docs/lbgat.md, "Inner attack",
"Outer loss", "Optimisation"): CIFAR-100, WRN-34-10 robust model, LBGAT's
ResNet18 natural model, LBGAT+TRADES with α = 0, KL inner attack (ε = 0.031,
step 0.007, 10 steps, x + 0.001·N start), one SGD (lr 0.1, momentum 0.9,
coupled wd 2e-4) with the epoch-1 warm-up of 0.02 and ×0.1 drops after
epochs 75 and 90, 100 epochs, batch 128.

``get_config(arg)`` in each config file takes a comma-separated list of
variant tokens, e.g. ``lbgat/cifar10.py:trades,alpha6``:

* a method name (``natural``, ``vanilla_at``, ``alp``, ``trades``, ``bgat``,
  ``lbgat``, ``lbgat_trades``, ``lbgat_alp``, ``bgat_trades``, ``bgat_alp``);
* ``alpha<x>``: α (e.g. ``alpha6``); ``wrn34_10`` / ``wrn34_20``: robust model;
* ablations: ``with_ce`` (add CE(M_r(x), y)), ``with_ce_adv`` (add CE(M_r(x'), y)),
  ``kl_boundary`` (KL instead of MSE), ``shared_bn`` (shared conv, separate BN);
* ``trades_schedule``: the official TRADES schedule (76 epochs, ×0.1 from epoch 75);
* ``smoke``: a tiny model and data subset that runs in seconds on a CPU;
* MNIST / Fashion-MNIST files also take ``demo`` (README command 1).
"""

from __future__ import annotations

import ml_collections

from lbgat_jax.methods import METHODS


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.method = "lbgat_trades"
    c.seed = 1  # the official script's effective seed

    c.dataset = ml_collections.ConfigDict()
    c.dataset.name = "cifar100"
    c.dataset.source = "auto"
    c.dataset.data_dir = ""
    c.dataset.train_split = "train"
    c.dataset.test_split = "test"
    c.dataset.train_limit = 0  # 0 = the whole split
    c.dataset.augment = "default"  # 'default' = the dataset's paper augmentation

    c.model = ml_collections.ConfigDict()
    c.model.robust = ml_collections.ConfigDict(
        {"name": "wrn", "kwargs": {"depth": 34, "widen_factor": 10}}
    )
    c.model.natural = ml_collections.ConfigDict({"name": "resnet18_lbgat", "kwargs": {}})
    c.shared_conv_separate_bn = False

    # Frozen BGAT teachers: comma-separated workdirs of runs trained with
    # method='natural'; their logits are averaged (the paper's ensemble).
    c.teacher = ml_collections.ConfigDict({"workdirs": ""})

    # Inner maximisation, in [0, 1] pixel units. 0.031 is the official value
    # (8/255 = 0.03137 is *not* what LBGAT used).
    c.attack = ml_collections.ConfigDict()
    c.attack.eps = 0.031
    c.attack.step_size = 0.007
    c.attack.num_steps = 10
    c.attack.norm = "linf"
    c.attack.loss = "auto"  # 'auto' = the method's own (CE or TRADES-KL)
    c.attack.random_start = "normal"  # x + init_std·N(0, I), as the official code
    c.attack.init_std = 0.001
    c.attack.bn_mode = "eval"  # robust model in eval mode during the attack
    # fori_loop unroll factor. 1 on every backend: with advcore.backend's
    # canonical input-gradient convolutions (the CPU rewrite) the rolled loop
    # runs as fast as the unrolled one and compiles faster (bench/README.md).
    c.attack.unroll = 1

    c.loss = ml_collections.ConfigDict()
    c.loss.alpha = -1.0  # -1 = the method's default (TRADES 6, ALP 1, LBGAT+TRADES 0)
    c.loss.natural_ce_weight = 1.0  # the paper's β
    c.loss.boundary = "mse"  # 'kl' = Table 1 "(KL)" ablation
    c.loss.extra_robust_ce = "none"  # 'clean' / 'adv' = Table 1 "w/ CE" ablation
    # The official code always runs M_r(x) in train mode, even when no term
    # uses it (it updates BN statistics); True skips that pass.
    c.loss.skip_unused_clean_pass = False

    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 0.1
    c.optim.momentum = 0.9
    c.optim.weight_decay = 2e-4
    c.optim.nesterov = False
    c.optim.warmup_epochs = 1
    c.optim.warmup_lr = 0.02
    c.optim.decay_epochs = (75, 90)
    c.optim.decay_factor = 0.1

    c.num_epochs = 100
    c.batch_size = 128
    c.precision = "float32"  # or 'bfloat16' (fp32 params, bf16 compute)

    c.eval = ml_collections.ConfigDict()
    c.eval.attacks = "pgd20"
    c.eval.eps = 0.031
    # 0 = each attack preset's own step rule relative to eps (PGD-20: 0.003 at 0.031).
    c.eval.step_size = 0.0
    c.eval.num_examples = 0  # 0 = the whole test split
    c.eval.batch_size = 200
    c.eval_every_epochs = 0  # 0 = only at the end
    c.final_eval = True

    c.log_every_steps = 50
    c.checkpoint_every_steps = 0  # 0 = every epoch
    c.keep_checkpoints = 3
    c.progress_bar = True
    c.tensorboard = False
    c.stop_after_steps = 0  # >0: stop (checkpointed) after this many steps
    return c


def apply_variant(c: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
    """Applies the comma-separated variant tokens in ``arg`` to ``c``."""
    tokens = [t.strip() for t in (arg or "").split(",") if t.strip()]
    for token in tokens:
        if token in METHODS:
            c.method = token
            if token == "natural":
                c.final_eval = True
        elif token.startswith("alpha"):
            try:
                c.loss.alpha = float(token[len("alpha"):])
            except ValueError as err:
                raise ValueError(f"variant token {token!r}: alpha<float>, e.g. alpha6") from err
        elif token in ("wrn34_10", "wrn34_20"):
            c.model.robust.kwargs.depth = 34
            c.model.robust.kwargs.widen_factor = int(token.split("_")[1])
        elif token == "with_ce":
            c.loss.extra_robust_ce = "clean"
        elif token == "with_ce_adv":
            c.loss.extra_robust_ce = "adv"
        elif token == "kl_boundary":
            c.loss.boundary = "kl"
        elif token == "shared_bn":
            c.shared_conv_separate_bn = True
        elif token == "trades_schedule":
            c.num_epochs = 76
            c.optim.warmup_epochs = 0
            c.optim.decay_epochs = (74, 89, 99)
        elif token == "smoke":
            _make_smoke(c)
        elif token in ("default", ""):
            pass
        else:
            raise ValueError(
                f"unknown config variant token {token!r}; valid: method names "
                f"{sorted(METHODS)}, alpha<x>, wrn34_10, wrn34_20, with_ce, "
                "with_ce_adv, kl_boundary, shared_bn, trades_schedule, smoke"
            )
    return c


def _make_smoke(c: ml_collections.ConfigDict) -> None:
    """Tiny models, a few examples, one epoch: every stage in seconds on CPU."""
    if c.model.robust.name == "wrn":
        c.model.robust.kwargs.depth = 10
        c.model.robust.kwargs.widen_factor = 1
    tiny_cnn = {"name": "small_cnn", "kwargs": {"channels": (4, 4, 8, 8), "hidden_dim": 16}}
    if c.model.robust.name == "small_cnn":
        c.model.robust = ml_collections.ConfigDict(tiny_cnn)
    if c.model.natural.name == "small_cnn":
        c.model.natural = ml_collections.ConfigDict(tiny_cnn)
    if c.model.natural.name in ("resnet18_lbgat", "resnet18", "wrn"):
        c.model.natural = ml_collections.ConfigDict(
            {"name": "wrn", "kwargs": {"depth": 10, "widen_factor": 1}}
        )
    c.dataset.train_limit = 64
    c.batch_size = 16
    c.num_epochs = 1
    c.attack.num_steps = 2
    c.eval.num_examples = 32
    c.eval.batch_size = 16
    c.eval.attacks = "pgd2"
    c.log_every_steps = 1
    c.progress_bar = False


# -- MNIST family ------------------------------------------------------------

def mnist_base(name: str = "mnist", eps: float = 0.3) -> ml_collections.ConfigDict:
    c = base_config()
    c.dataset.name = name
    c.model.robust = ml_collections.ConfigDict({"name": "small_cnn", "kwargs": {}})
    c.model.natural = ml_collections.ConfigDict({"name": "small_cnn", "kwargs": {}})
    c.attack.eps = eps
    c.attack.step_size = 0.01
    c.attack.num_steps = 40
    # SmallCNN's PGD loop is far slower rolled on XLA:CPU (not profiled yet):
    # one TRADES step took 15.9 s with unroll=1 and 2.1 s with unroll=5 in the
    # CPU-scale study, on a shared machine (experiments/RESULTS.md).
    c.attack.unroll = 5
    c.optim.lr = 0.01
    c.optim.weight_decay = 0.0
    c.optim.warmup_epochs = 0
    # TRADES' MNIST script multiplies the LR by 0.1 from (1-based) epochs 55,
    # 75 and 90 on, i.e. after epochs 54, 74 and 89.
    c.optim.decay_epochs = (54, 74, 89)
    c.eval.attacks = "pgd40"
    c.eval.eps = eps
    c.eval.step_size = 0.0  # the preset's rule: PGD-40 at 0.01 for eps 0.3
    return c


def apply_demo(c: ml_collections.ConfigDict) -> None:
    """A few minutes per method on 2 CPU cores; the numbers are indicative only.

    4,096 real training images, 5 epochs (160 steps), a 5-step PGD of step
    0.08 for the inner loop (the study's CPU-scale attack), PGD-20 evaluation
    on 500 test images. LBGAT's robust model has no label signal of its own
    and only starts to learn once its natural model is a useful target, so
    it needs more steps than TRADES: at 72 steps it was still at chance.
    """
    c.dataset.train_limit = 4096
    c.num_epochs = 5
    c.optim.lr = 0.05
    c.optim.decay_epochs = (4,)
    c.attack.num_steps = 5
    c.attack.step_size = 0.08
    c.attack.unroll = 5
    c.eval.num_examples = 500
    c.eval.attacks = "pgd20"
    c.eval.step_size = 0.02
    c.log_every_steps = 8
