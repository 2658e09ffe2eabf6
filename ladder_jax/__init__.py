"""LADDER (Zhou, Tsang, Yin): latent boundary-guided adversarial training in JAX/Flax.

Seven stages, one module each in ``ladder_jax/stages/``, reading and writing
one workdir (``python -m ladder_jax.main --config=configs/ladder/<dataset>.py
--stage=...``):

1. ``classifier``  vanilla classifier f and the substitute that crafts the black-box sets
2. ``latents``     z = features(x) of the train/test sets
3. ``generator``   G inverting the features, L1/L2 (+ LADDER-GAN) (``generator_train``)
4. ``svm``         attention SVMs for all ordered class pairs, vmapped (``attention_svm``),
                   and the check that d is a boundary normal (``direction_check``)
5. ``generate``    x_hat = G(z + eps * beta(z) * d), batched (``perturb``, ``generate``)
6. ``finetune``    Eq. 6 / TRADES+LADDER / "X Adv." fine-tuning (``classifier``, ``losses``)
7. ``evaluate``    black-box tables with Avg. Rank on stored attack sets (``attack_sets``)

The runtime around them:

* ``runner``: the unit graph, fingerprints, stale-input refusal, ``--force``;
* ``units``: what a unit declares (settings, inputs, outputs);
* ``workdir``: the workdir layout and the markers;
* ``context``: data, stored outputs and the compiled programs the stages share;
* ``training``: the training units on ``advcore.train_loop``;
* ``streams``: every random stream of a run, by name.
"""
