"""Shared defaults for every LADDER config (SPEC 2.3-2.4, 3, 4.6).

Each dataset file (``mnist.py``, ``fashion_mnist.py``, ``svhn.py``,
``celeba.py``, ``cifar10.py``) calls ``dataset_config(name)`` and accepts a
comma-separated variant argument, e.g. ``configs/ladder/mnist.py:smoke``:

* ``smoke``: tiny subsets, few steps, small widths; every stage in < 1 min on
  2 CPU cores (numbers are meaningless, it checks the plumbing);
* ``paper_eps``: generate at the job script's ε list {0.5, 2, 5, 10, 12, 15,
  18, 20, 25} instead of the single fine-tuning ε;
* ``adaptive``: the code's adaptive-ε mode (``-1`` in ``eps_list``, SPEC 3.5);
* ``legacy``: every ``legacy_*`` flag on (the authors' code bugs);
* ``svm255``: only ``svm.legacy_pixel_scale``: the SVMs are fitted on
  latents of x·255 as in the authors' MNIST/SVHN code. With [0, 1] inputs and
  the code's c = 0.01 the fitted normals stay close to their random init
  (README, LADDER), so this is what gives the paper's ε values their meaning.

Every field is validated by ``ladder_jax.config_schema.validate_config``.
"""

from __future__ import annotations

import ml_collections

# Fig. 10: 15 values from 0.5 to 30.
SWEEP_EPS = (0.5, 1.0, 2.0, 3.0, 5.0, 7.0, 9.0, 10.0, 12.0, 15.0, 18.0, 20.0,
             22.0, 25.0, 30.0)
PAPER_EPS_LIST = (0.5, 2.0, 5.0, 10.0, 12.0, 15.0, 18.0, 20.0, 25.0)
BASELINE_ROWS = ("fgsm", "jsma", "pgd", "cw")


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
    # CelebA code quirk (SPEC 2.3, bug 14): predict "smiling" iff logit >= 0.5
    # instead of >= 0. Applies to every CelebA accuracy and prediction.
    c.model.legacy_celeba_threshold = False

    # Stage 1: vanilla training (SPEC 2.3; LeNet = PyTorch MNIST example).
    c.classifier = ml_collections.ConfigDict()
    c.classifier.epochs = 10
    c.classifier.batch_size = 64
    c.classifier.lr = 0.01
    c.classifier.momentum = 0.5
    c.classifier.weight_decay = 0.0
    c.classifier.train_fraction = 1.0  # SVHN: a random 30 % (SPEC 2.3)
    c.classifier.eval_batch_size = 500
    c.classifier.checkpoint_every_epochs = 1

    # Stage 2: latents z = features(x) of the train (and test) set, eval mode.
    c.latents = ml_collections.ConfigDict()
    c.latents.batch_size = 500

    # Stage 3: generator G (SPEC 2.4, 3.6).
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

    # Stage 4: attention SVMs for all ordered pairs (SPEC 3.3-3.4).
    c.svm = ml_collections.ConfigDict()
    c.svm.samples_per_class = 200
    c.svm.test_size = 0.33
    c.svm.c = 0.01
    c.svm.lr = 0.01
    c.svm.batch_size = 1
    c.svm.epochs = 10
    c.svm.attention_exp = True  # the code's beta = exp(softmax); False = paper
    c.svm.legacy_pixel_scale = False  # fit on latents of x*255 (MNIST/SVHN code)
    c.svm.legacy_unordered_svm_cache = False  # attention keyed by {y, t}
    c.svm.pair_chunk_size = 0  # pairs per vmapped program; 0 = all at once

    # Stage 5: generation (SPEC 3.3, 3.5).
    c.generate = ml_collections.ConfigDict()
    c.generate.variants = ("ladder", "cavRandom", "random")
    c.generate.per_class_cap = 450  # MNIST: 10 x 450 = 4,500; -1 = all images
    c.generate.eps_list = (0.5,)  # -1 anywhere = adaptive mode
    c.generate.eps_init = 0.5
    c.generate.eps_step = 0.1
    c.generate.eps_max = 26.0
    c.generate.ite_max_eps = 100
    c.generate.cav_random_std = 0.01
    c.generate.random_std = 0.1
    c.generate.batch_size = 250
    c.generate.quantize = "truncate"  # the code's uint8 cast; or 'round'
    c.generate.legacy_uint8_wrap = False  # wrap negatives instead of clipping
    c.generate.sweep_eps = SWEEP_EPS
    c.generate.sweep_num_images = 8

    # Stage 6: Eq. 6 fine-tuning from the vanilla model (SPEC 3.7, Table 6).
    c.finetune = ml_collections.ConfigDict()
    c.finetune.rows = ("ladder", "cavRandom", "random", "trades_ladder") + BASELINE_ROWS
    c.finetune.eps = 0.5  # which generated ε set to train on
    c.finetune.alpha = 0.5
    c.finetune.epochs = 100
    c.finetune.batch_size = 64
    c.finetune.lr = 0.01
    c.finetune.momentum = 0.5
    c.finetune.weight_decay = 0.0
    c.finetune.eval_batch_size = 500
    c.finetune.checkpoint_every_epochs = 5
    # TRADES+LADDER (SPEC 3.8 [A]): 'kl_pairs' = CE(f(x), y) + beta KL(f(x) || f(x_hat))
    # on the LADDER pairs; 'pgd_kl_plus_ladder' = TRADES with its PGD-KL
    # attack plus the LADDER CE term.
    c.finetune.trades_mode = "kl_pairs"
    c.finetune.trades_beta = 1.0  # MNIST convention; 6 for CIFAR-10
    c.finetune.trades_eps = 0.3
    c.finetune.trades_step_size = 0.01
    c.finetune.trades_num_steps = 40

    # Attacks, all crafted once against the vanilla model (SPEC 4.6). The
    # train-set copies feed the "X Adv." rows; the test-set copies are the
    # black-box evaluation sets. ``name`` is an ``advcore.attacks.make_attack``
    # name, ``overrides`` its keyword overrides.
    # The overrides spell out LADDER's settings (eps 0.3; PGD step 0.05, 10
    # iterations, uniform start, CE; targeted CW-L2 and JSMA with random
    # targets, cleverhans v3 defaults of SPEC 4.6) so that each one can be
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
    c.generate.sweep_eps = (0.5, 5.0, 15.0, 30.0)
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


def apply_variants(c: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
    """Applies the comma-separated variant tokens of ``arg``."""
    tokens = [t.strip() for t in (arg or "").split(",") if t.strip()]
    valid = ("smoke", "paper_eps", "adaptive", "legacy", "svm255")
    for token in tokens:
        if token not in valid:
            raise ValueError(f"config variant must be one of {valid}, got {token!r}")
    if "paper_eps" in tokens:
        c.generate.eps_list = PAPER_EPS_LIST
    if "adaptive" in tokens:
        c.generate.eps_list = (-1.0,)
        c.finetune.eps = -1.0
    if "legacy" in tokens:
        c.model.legacy_celeba_threshold = c.model.head == "binary"
        c.generator.legacy_convt_init = True
        c.svm.legacy_pixel_scale = True
        c.svm.legacy_unordered_svm_cache = True
        c.generate.legacy_uint8_wrap = True
    if "svm255" in tokens:
        c.svm.legacy_pixel_scale = True
    if "smoke" in tokens:
        apply_smoke(c)
    return c
