"""LADDER on CIFAR-10 with kuangliu ResNet18 "CifarNet" (Table 4; Table 6 row 4).

Vanilla ResNet18: SGD lr 0.1, momentum 0.9, wd 5e-4, batch 128, 200 epochs,
constant LR, no augmentation, no normalisation. Generator ``cifar_generator``
(z 512 -> 32x32, tanh, targets in [-1, 1]), L1 [A], Adam 1e-3 with betas
(0.5, 0.999); LADDER-GAN also trained. Generation: every training image
(50,000). Fine-tuning: SGD lr 0.001, momentum 0.9, wd 5e-4, batch 128, 100
epochs; TRADES+LADDER with β = 6 and the CIFAR attack (ε 0.031, step 0.007,
10 steps). tfds-only (``cifar10``). Variants: ``common.py`` (``legacy`` fits
the SVMs on [0, 1]-image latents, the authors' CIFAR-10 code).
"""

from ladder_jax import config_presets as common


def get_config(arg=None):
    c = common.base_config()
    c.dataset.name = "cifar10"
    c.model.name = "cifar_resnet18"
    c.classifier.epochs = 200
    c.classifier.batch_size = 128
    c.classifier.lr = 0.1
    c.classifier.momentum = 0.9
    c.classifier.weight_decay = 5e-4
    c.generator.arch = "cifar10"
    c.generator.loss = "l1"
    c.generator.epochs = 200
    c.generator.batch_size = 200
    c.generator.b1 = 0.5
    c.generator.kinds = ("ae", "gan")
    c.generate.per_class_cap = -1
    c.generate.variants = ("ladder", "ladder_gan")
    c.finetune.rows = ("ladder", "ladder_gan", "trades_ladder", "fgsm", "jsma", "pgd", "cw")
    c.attacks.jsma.overrides.num_steps = 1536  # floor(H * W * C / 2)
    c.finetune.lr = 0.001
    c.finetune.momentum = 0.9
    c.finetune.weight_decay = 5e-4
    c.finetune.batch_size = 128
    c.finetune.trades_beta = 6.0
    c.finetune.trades_eps = 0.031
    c.finetune.trades_step_size = 0.007
    c.finetune.trades_num_steps = 10
    c.latents.batch_size = 250
    return common.apply_variants(c, arg)
