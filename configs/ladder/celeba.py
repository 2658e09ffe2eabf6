"""LADDER on CelebA smile vs not-smile with VGG11-BN "CelebANet" (Table 3).

One logit trained with BCE-with-logits: SGD lr 0.01, momentum 0.9,
batch 64, 100 epochs. The authors start from ImageNet weights; none are
available offline, so the conv stack trains from scratch here [A].
Predictions use logit >= 0 (``model.legacy_celeba_threshold`` = the code's
>= 0.5). Generator ``celebA_generator`` (z 4096 -> 128x128, tanh), L1 [A];
LADDER-GAN also trained (``kinds``). Generation: 1,000 per class (the paper's
2,000). Fine-tuning: SGD lr 0.01, momentum 0.5, wd 5e-4, batch 64, 100 epochs.
tfds-only (``celeb_a``, attribute 'Smiling'). Variants: ``common.py``
(``legacy`` fits the SVMs on [0, 1]-image latents, the authors' CelebA code).
"""

from ladder_jax import config_presets as common


def get_config(arg=None):
    c = common.base_config()
    c.dataset.name = "celeb_a"
    c.model.name = "vgg11bn_celeba"
    c.model.head = "binary"
    c.classifier.epochs = 100
    c.classifier.batch_size = 64
    c.classifier.lr = 0.01
    c.classifier.momentum = 0.9
    c.classifier.weight_decay = 0.0
    c.generator.arch = "celeba"
    c.generator.loss = "l1"
    c.generator.epochs = 100
    c.generator.batch_size = 64
    c.generator.kinds = ("ae", "gan")
    c.attacks.jsma.overrides.num_steps = 24576  # floor(H * W * C / 2)
    c.generate.per_class_cap = 1000
    c.generate.variants = ("ladder", "cavRandom", "random", "ladder_gan")
    c.generate.batch_size = 64
    c.finetune.rows = ("ladder", "ladder_gan", "cavRandom", "random", "trades_ladder",
                       "fgsm", "jsma", "pgd", "cw")
    c.finetune.lr = 0.01
    c.finetune.momentum = 0.5
    c.finetune.weight_decay = 5e-4
    c.finetune.batch_size = 64
    c.finetune.eval_batch_size = 200
    c.finetune.trades_beta = 6.0
    c.latents.batch_size = 100
    c.classifier.eval_batch_size = 200
    c.evaluate.batch_size = 200
    c.evaluate.attack_batch_size = 100
    # Two classes: AutoAttack's DLR losses need >= 3 (targeted: >= 4) classes,
    # so only its CE, FAB and Square stages apply [A].
    c.attacks.aa.overrides = {"eps": 0.3, "attacks_to_run": ("apgd-ce", "fab", "square")}
    c = common.apply_variants(c, arg)
    return c
