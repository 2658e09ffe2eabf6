"""LADDER (Zhou, Tsang, Yin): latent boundary-guided adversarial training in JAX/Flax.

Seven stages, each a separate jitted module reading and writing one workdir
(``python -m ladder_jax.main --config=configs/ladder/<dataset>.py --stage=...``):

1. ``classifier``  vanilla classifier f (``stages.stage_classifier``)
2. ``latents``     z = features(x) of the train/test sets
3. ``generator``   G inverting the features, L1/L2 (+ LADDER-GAN) (``generator_train``)
4. ``svm``         attention SVMs for all ordered class pairs, one vmapped program
                   (``attention_svm``)
5. ``generate``    x_hat = G(z + eps * beta(z) * d), batched (``perturb``, ``generate``)
6. ``finetune``    Eq. 6 / TRADES+LADDER / "X Adv." fine-tuning (``finetune``, ``classifier``)
7. ``evaluate``    black-box tables with Avg. Rank on stored attack sets (``evaluate``)

See ``context.py`` for the workdir layout and ``workdir.py`` for how finished
work is detected and skipped.
"""
