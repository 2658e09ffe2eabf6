"""LADDER on SVHN with VGG8 "SVHNNet" (Table 1; Table 6 row 2).

Vanilla VGG8: SGD lr 0.1, momentum 0.9, wd 5e-4, batch 1280, 150 epochs on a
random 30 % of the train split (the code's ``--percent 0.3``). Generator:
``svhn_generator`` (z 4096 -> 32x32, tanh), L1 [A], Adam 1e-3; the epoch count
is not given [A]. Generation: 450 per class (4,500). Fine-tuning: SGD lr 0.001,
momentum 0.9, wd 5e-4, batch 128, 100 epochs. tfds-only (``svhn_cropped``).
Variants: ``common.py`` (``legacy`` fits the SVMs on latents of x·255, the
authors' SVHN code).
"""

from ladder_jax import config_presets as common


def get_config(arg=None):
    c = common.base_config()
    c.dataset.name = "svhn_cropped"
    c.model.name = "vgg8_svhn"
    c.classifier.epochs = 150
    c.classifier.batch_size = 1280
    c.classifier.lr = 0.1
    c.classifier.momentum = 0.9
    c.classifier.weight_decay = 5e-4
    c.classifier.train_fraction = 0.3
    c.generator.arch = "svhn"
    c.generator.loss = "l1"
    c.generator.epochs = 200
    c.generator.batch_size = 200
    c.attacks.jsma.overrides.num_steps = 1536  # floor(H * W * C / 2)
    c.finetune.lr = 0.001
    c.finetune.momentum = 0.9
    c.finetune.weight_decay = 5e-4
    c.finetune.batch_size = 128
    c.finetune.trades_beta = 6.0
    c.latents.batch_size = 250
    # 90 pairs x 4096^2 attention weights = 6 GB: train 10 pairs per program.
    c.svm.pair_chunk_size = 10
    return common.apply_variants(c, arg)
