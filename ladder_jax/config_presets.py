"""Shared defaults for every LADDER config (docs/ladder.md has every field's source).

Each dataset file (``mnist.py``, ``fashion_mnist.py``, ``svhn.py``,
``celeba.py``, ``cifar10.py``) calls ``base_config()``, sets what differs and
accepts a comma-separated variant argument, e.g.
``configs/ladder/mnist.py:smoke``.

The defaults are the faithful method (docs/ladder.md, "The input-scale
problem", "ε", "Which model crafts the black-box sets"):

* the attention SVMs are fitted on standardized latents
  (``svm.latent_scaling='standardize'``: centred, rescaled to mean norm
  ``svm.fit_norm`` = 10^4), where the code's c, lr and epochs make the normal
  a boundary normal on every dataset; the ``svm`` stage fails with one line
  when the normals stay at their random init
  (``svm.allow_untrained_normals`` lets a legacy reproduction go on);
* ε is in units of the mean training-latent norm (``generate.eps_unit=
  'latent_norm'``: ||z' - z|| = ε·r), and the LADDER rows fine-tune at the
  calibrated ε (``finetune.eps = 0`` and ``generate.eps_list = (0,)``): the
  smallest ε of ``svm.check_eps`` at which LADDER's push changes the vanilla
  prediction of at least ``svm.flip_target`` (50 %) of the perturbed training
  latents, measured by the ``svm`` stage on training data only;
* the black-box test sets are crafted on an independently trained substitute
  (``evaluate.attack_source='substitute'``; same architecture and recipe,
  its own random streams; ``evaluate.substitute_model`` for another).

Variant tokens:

* ``smoke``: tiny subsets, few steps, small widths; every stage in < 1 min on
  2 CPU cores (numbers are meaningless, it checks the plumbing);
* ``paper_eps``: the paper's raw ε (``generate.eps_unit='raw'``, z + ε·β⊙d):
  generate at the job script's list {0.5, 2, 5, 10, 12, 15, 18, 20, 25},
  fine-tune at its 0.5, check and sweep in raw units, the job script's
  adaptive search (ε from 0.5 by 0.1 up to 26);
* ``adaptive``: the code's adaptive-ε mode (``-1`` in ``eps_list``), in the
  config's ε unit;
* ``legacy``: every ``legacy_*`` flag on (the authors' code bugs), the
  authors' SVM inputs for the dataset (x·255 latents on MNIST, Fashion-MNIST
  and SVHN, [0, 1] latents on CelebA and CIFAR-10) and
  ``svm.allow_untrained_normals`` (their [0, 1] fits stay at the init);
* ``svm255``: only ``svm.latent_scaling='pixels255'``: the SVMs are fitted on
  latents of x·255 as in the authors' MNIST/SVHN code;
* ``previous_defaults``: the library's defaults before they were made
  faithful (SVMs on the latents as they are, which stay at their init, raw
  ε = 0.5, test sets crafted on the vanilla model): the committed
  ``*_previous_defaults`` study results.

Every field is validated by ``ladder_jax.config_schema.validate_config``.
"""

from __future__ import annotations

import ml_collections

# Fig. 10: 15 raw values from 0.5 to 30.
SWEEP_EPS = (0.5, 1.0, 2.0, 3.0, 5.0, 7.0, 9.0, 10.0, 12.0, 15.0, 18.0, 20.0,
             22.0, 25.0, 30.0)
PAPER_EPS_LIST = (0.5, 2.0, 5.0, 10.0, 12.0, 15.0, 18.0, 20.0, 25.0)
# The direction check's grid and the calibration candidates, in units of the
# mean training-latent norm: from a 5 % to a 100 % step.
CHECK_EPS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0)
# The ε-sweep figure in latent-norm units.
LATENT_NORM_SWEEP_EPS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.75, 1.0)
BASELINE_ROWS = ("fgsm", "jsma", "pgd", "cw")
# The authors' SVM inputs (svm.latent_scaling) for the ``legacy`` token: their
# MNIST and SVHN code reads raw [0, 255] tensors, their CIFAR-10 and CelebA
# code divides by 255.
AUTHORS_SVM_INPUTS = {"mnist": "pixels255", "fashion_mnist": "pixels255",
                      "svhn_cropped": "pixels255", "celeb_a": "none", "cifar10": "none"}


def _attack(name: str, **overrides) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({"name": name, "overrides": dict(overrides)})


def base_config() -> ml_collections.ConfigDict:
    """MNIST / LeNet defaults; the other datasets override what differs."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.progress_bar = True
    c.stages = ("classifier", "latents", "generator", "svm", "generate",
                "finetune", "evaluate")

    c.dataset = ml_collections.ConfigDict()
    c.dataset.name = "mnist"
    c.dataset.source = "auto"
    c.dataset.data_dir = ""
    c.dataset.train_limit = 0  # 0 = the whole split
    c.dataset.test_limit = 0

    # The vanilla classifier f; normalisation is folded into the model.
    c.model = ml_collections.ConfigDict()
    c.model.name = "lenet"
    c.model.kwargs = ml_collections.ConfigDict()
    # 'softmax' (CE over num_classes logits) or 'binary' (one logit + BCE,
    # CelebA smile vs not-smile).
    c.model.head = "softmax"
    # CelebA code quirk: predict "smiling" iff logit >= 0.5
    # instead of >= 0. Applies to every CelebA accuracy and prediction.
    c.model.legacy_celeba_threshold = False

    # Stage 1: vanilla training (LeNet = PyTorch MNIST example).
    c.classifier = ml_collections.ConfigDict()
    c.classifier.epochs = 10
    c.classifier.batch_size = 64
    c.classifier.lr = 0.01
    c.classifier.momentum = 0.5
    c.classifier.weight_decay = 0.0
    c.classifier.train_fraction = 1.0  # SVHN: a random 30 % (the code's --percent)
    c.classifier.eval_batch_size = 500
    c.classifier.checkpoint_every_epochs = 1

    # Stage 2: latents z = features(x) of the train (and test) set, eval mode.
    c.latents = ml_collections.ConfigDict()
    c.latents.batch_size = 500

    # Stage 3: generator G.
    c.generator = ml_collections.ConfigDict()
    c.generator.arch = "mnist"
    c.generator.width_scale = 1.0
    c.generator.kinds = ("ae",)  # 'ae': reconstruction only; 'gan': LADDER-GAN
    c.generator.loss = "l2"  # element-mean MSE ('l2') or L1 ('l1')
    c.generator.epochs = 1000
    c.generator.batch_size = 256
    c.generator.lr = 1e-3
    c.generator.b1 = 0.9
    c.generator.b2 = 0.999
    c.generator.train_fraction = 1.0  # the code's --percent
    c.generator.gan_lambda = 0.01  # the code's --lam (default 0 disables GAN)
    c.generator.d_lr_scale = 0.1  # D uses Adam lr 0.1 * lr, betas (0.5, 0.999)
    c.generator.d_width_scale = 1.0
    c.generator.legacy_convt_init = False  # ConvT weights N(1, 0.02) as in the code
    c.generator.grid_images = 16
    c.generator.mse_eval_limit = 10000  # images per split for the MSE report
    c.generator.checkpoint_every_epochs = 10
    # > 0: gradient as the mean over microbatches of this size (BN-free
    # generators only, i.e. MNIST): same update, much faster on small CPUs.
    c.generator.microbatch = 0

    # Stage 4: attention SVMs for all ordered pairs: the code's model, loss
    # and SGD settings, fitted in a space where they find the boundary.
    c.svm = ml_collections.ConfigDict()
    c.svm.samples_per_class = 200
    c.svm.test_size = 0.33
    c.svm.c = 0.01
    c.svm.lr = 0.01
    c.svm.batch_size = 1
    c.svm.epochs = 10
    c.svm.attention_exp = True  # the code's beta = exp(softmax); False = paper
    # 'standardize': centre each pair's fitted latents and rescale them to
    # mean norm fit_norm (then d = w / sigma); 'none': the latents as they are
    # (the library's former default; the normals stay at their init);
    # 'pixels255': latents of x*255 (the authors' MNIST/SVHN code).
    c.svm.latent_scaling = "standardize"
    c.svm.fit_norm = 1e4  # ~ the norm of the authors' MNIST x*255 SVM inputs
    # The stage fails when mean cos(w, w_init) > 0.9 unless this is True.
    c.svm.allow_untrained_normals = False
    # The direction check's ε grid (in generate.eps_unit units) and the
    # calibrated ε: the smallest of them whose LADDER push changes the vanilla
    # prediction of >= flip_target of the perturbed training latents.
    c.svm.check_eps = CHECK_EPS
    c.svm.flip_target = 0.5
    c.svm.legacy_unordered_svm_cache = False  # attention keyed by {y, t}
    c.svm.pair_chunk_size = 0  # pairs per vmapped program; 0 = all at once

    # Stage 5: generation.
    c.generate = ml_collections.ConfigDict()
    c.generate.variants = ("ladder", "cavRandom", "random")
    c.generate.per_class_cap = 450  # MNIST: 10 x 450 = 4,500; -1 = all images
    # 'latent_norm': z' = z + eps * r * unit(beta * d), r = mean training-latent
    # norm (eps = 0.2 moves a latent by 20 % of a typical latent's norm);
    # 'raw': the paper's z + eps * beta * d.
    c.generate.eps_unit = "latent_norm"
    c.generate.eps_list = (0.0,)  # 0 = the calibrated eps (svm stage); (-1,) = adaptive
    # The adaptive search (-1), in eps_unit units: from eps_init by eps_step
    # (10 * eps_step at eps >= 1, as the code) up to eps_max.
    c.generate.eps_init = 0.05
    c.generate.eps_step = 0.05
    c.generate.eps_max = 2.0
    c.generate.ite_max_eps = 100
    c.generate.cav_random_std = 0.01
    c.generate.random_std = 0.1
    c.generate.batch_size = 250
    c.generate.quantize = "truncate"  # the code's uint8 cast; or 'round'
    c.generate.legacy_uint8_wrap = False  # wrap negatives instead of clipping
    c.generate.sweep_eps = LATENT_NORM_SWEEP_EPS  # the Figs. 7/10 grid, eps_unit units
    c.generate.sweep_num_images = 8

    # Stage 6: Eq. 6 fine-tuning from the vanilla model (Table 6).
    c.finetune = ml_collections.ConfigDict()
    c.finetune.rows = ("ladder", "cavRandom", "random", "trades_ladder") + BASELINE_ROWS
    c.finetune.eps = 0.0  # which generated eps to train on; 0 = calibrated
    c.finetune.alpha = 0.5
    c.finetune.epochs = 100
    c.finetune.batch_size = 64
    c.finetune.lr = 0.01
    c.finetune.momentum = 0.5
    c.finetune.weight_decay = 0.0
    c.finetune.eval_batch_size = 500
    c.finetune.checkpoint_every_epochs = 5
    # TRADES+LADDER: 'kl_pairs' = CE(f(x), y) + beta KL(f(x) || f(x_hat))
    # on the LADDER pairs; 'pgd_kl_plus_ladder' = TRADES with its PGD-KL
    # attack plus the LADDER CE term.
    c.finetune.trades_mode = "kl_pairs"
    c.finetune.trades_beta = 1.0  # MNIST convention; 6 for CIFAR-10
    c.finetune.trades_eps = 0.3
    c.finetune.trades_step_size = 0.01
    c.finetune.trades_num_steps = 40

    # Attacks, each crafted once. The train-set copies feed the "X Adv." rows
    # (crafted against the vanilla model); the test-set copies are the
    # black-box evaluation sets (crafted against evaluate.attack_source).
    # ``name`` is an ``advcore.attacks.make_attack`` name, ``overrides`` its
    # keyword overrides. The overrides spell out LADDER's settings (eps 0.3;
    # PGD step 0.05, 10 iterations, uniform start, CE; targeted CW-L2 and JSMA
    # with random targets, cleverhans v3 defaults) so that each one can be
    # changed from the command line
    # (``--config.attacks.cw.overrides.num_steps=100``; ``num_steps`` is CW's
    # ``max_iterations`` and JSMA's ``max_iters``).
    c.attacks = ml_collections.ConfigDict()
    c.attacks.fgsm = _attack("fgsm", eps=0.3, loss="ce")
    c.attacks.pgd = _attack("pgd10", eps=0.3, step_size=0.05, num_steps=10, norm="linf",
                            random_start="uniform", loss="ce")
    c.attacks.cw = _attack("cw_l2", targeted=True, num_steps=1000, binary_search_steps=5,
                           learning_rate=5e-3, initial_const=1e-2, confidence=0.0)
    # max_iters = floor(gamma * num_features / 2), the JSMA default (28*28*1 / 2).
    c.attacks.jsma = _attack("jsma", theta=1.0, gamma=1.0, num_steps=392)
    c.attacks.aa = _attack("aa_standard", eps=0.3)

    # Stage 7: black-box evaluation (Tables 1-5, 8).
    c.evaluate = ml_collections.ConfigDict()
    c.evaluate.attacks = ("fgsm", "jsma", "pgd", "cw", "aa")
    # Which model crafts the test sets: 'substitute' (trained by the
    # classifier stage like the vanilla model, with its own seed streams: the
    # paper's black-box protocol) or 'vanilla' (white box for the vanilla row,
    # transfer from the parent for the fine-tuned rows).
    c.evaluate.attack_source = "substitute"
    # The substitute's architecture: name '' = the vanilla model's (with
    # model.kwargs; kwargs must then be empty), else a registry name + kwargs.
    c.evaluate.substitute_model = ml_collections.ConfigDict(
        {"name": "", "kwargs": ml_collections.ConfigDict()})
    c.evaluate.ladder_attack = True  # Table 8 column: LADDER on test images
    c.evaluate.num_images = 0  # test images per attack set; 0 = all
    c.evaluate.batch_size = 500
    c.evaluate.attack_batch_size = 500
    return c


def apply_smoke(c: ml_collections.ConfigDict) -> None:
    """Tiny subsets and step counts: every stage in well under a minute."""
    c.progress_bar = False
    # Narrow classifiers (the latent shrinks with them; the generator's
    # Linear adapts). LeNet has no width knob and is small already.
    smoke_kwargs = {"vgg8_svhn": {"width_multiplier": 0.0625},
                    "vgg11bn_celeba": {"width_multiplier": 0.0625},
                    "cifar_resnet18": {"base_width": 8}}
    c.model.kwargs = ml_collections.ConfigDict(smoke_kwargs.get(c.model.name, {}))
    c.dataset.train_limit = 400
    c.dataset.test_limit = 80
    c.classifier.epochs = 1
    c.classifier.batch_size = 32
    c.classifier.eval_batch_size = 80
    c.latents.batch_size = 200
    c.generator.epochs = 1
    c.generator.batch_size = 40
    c.generator.width_scale = min(c.generator.width_scale, 0.25)
    c.generator.d_width_scale = 0.125
    c.generator.grid_images = 8
    c.generator.mse_eval_limit = 80
    c.svm.samples_per_class = 12
    c.svm.epochs = 2
    c.svm.batch_size = 4
    c.generate.per_class_cap = 6
    c.generate.batch_size = 32
    c.generate.sweep_eps = ((0.5, 5.0, 15.0, 30.0) if c.generate.eps_unit == "raw"
                            else (0.1, 0.3, 1.0))
    c.generate.sweep_num_images = 2
    c.generate.ite_max_eps = 3
    c.finetune.epochs = 1
    c.finetune.batch_size = 16
    c.finetune.eval_batch_size = 80
    c.finetune.trades_num_steps = 2
    c.finetune.checkpoint_every_epochs = 1
    c.evaluate.num_images = 40
    c.evaluate.batch_size = 40
    c.evaluate.attack_batch_size = 40
    c.evaluate.attacks = ("fgsm", "jsma", "pgd", "cw")
    # Cheap attack settings: the plumbing, not the numbers, is under test.
    c.attacks.pgd.overrides.num_steps = 2
    c.attacks.cw.overrides.num_steps = 3
    c.attacks.cw.overrides.binary_search_steps = 1
    c.attacks.jsma.overrides.num_steps = 3


def use_raw_eps(c: ml_collections.ConfigDict, eps_list, finetune_eps: float,
                check_eps=PAPER_EPS_LIST) -> None:
    """The paper's raw ε unit with the code's adaptive search and the Fig. 10 sweep."""
    c.generate.eps_unit = "raw"
    c.generate.eps_list = tuple(eps_list)
    c.finetune.eps = finetune_eps
    c.svm.check_eps = tuple(check_eps)
    c.generate.sweep_eps = SWEEP_EPS
    c.generate.eps_init = 0.5  # jobgeneration.sh
    c.generate.eps_step = 0.1
    c.generate.eps_max = 26.0


def apply_previous_defaults(c: ml_collections.ConfigDict) -> None:
    """The library's defaults before the faithful ones (the committed previous studies)."""
    c.svm.latent_scaling = "none"
    c.svm.allow_untrained_normals = True
    # The former direction check's raw grid.
    use_raw_eps(c, (0.5,), 0.5, check_eps=(0.5, 2.0, 5.0, 10.0, 20.0, 30.0))
    c.evaluate.attack_source = "vanilla"


VARIANT_TOKENS = ("smoke", "paper_eps", "adaptive", "legacy", "svm255", "previous_defaults")


def apply_variants(c: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
    """Applies the comma-separated variant tokens of ``arg`` (in a fixed order)."""
    tokens = [t.strip() for t in (arg or "").split(",") if t.strip()]
    for token in tokens:
        if token not in VARIANT_TOKENS:
            raise ValueError(f"config variant must be one of {VARIANT_TOKENS}, got {token!r}")
    if "previous_defaults" in tokens:
        apply_previous_defaults(c)
    if "paper_eps" in tokens:
        use_raw_eps(c, PAPER_EPS_LIST, 0.5)
    if "adaptive" in tokens:
        c.generate.eps_list = (-1.0,)
        c.finetune.eps = -1.0
    if "legacy" in tokens:
        c.model.legacy_celeba_threshold = c.model.head == "binary"
        c.generator.legacy_convt_init = True
        c.svm.latent_scaling = AUTHORS_SVM_INPUTS[c.dataset.name]
        c.svm.allow_untrained_normals = True
        c.svm.legacy_unordered_svm_cache = True
        c.generate.legacy_uint8_wrap = True
    if "svm255" in tokens:
        c.svm.latent_scaling = "pixels255"
    if "smoke" in tokens:
        apply_smoke(c)
    return c
