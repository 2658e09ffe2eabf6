"""Stage 1: the vanilla classifier f, trained on clean images, saved as an evaluable model.

CE (BCE for CelebA's single logit), SGD with a constant LR, no augmentation,
the last partial batch dropped, the final model kept; SVHN trains on a random
``classifier.train_fraction`` of the training split. The test accuracy is
logged every ``classifier.checkpoint_every_epochs`` epochs.
"""

from __future__ import annotations

import jax
import numpy as np

from advcore import data
from advcore.metrics import MetricWriter
from advcore.optim import torch_sgd
from ladder_jax import streams, training
from ladder_jax.classifier import create_state, init_classifier_vars, make_clean_step
from ladder_jax.units import Unit, config_values

STAGE = "classifier"
OUTPUT = "models/vanilla"


def units(ctx) -> list[Unit]:
    return [Unit("classifier", STAGE,
                 config_values(ctx.config, "seed", "dataset", "model", "classifier"),
                 train_vanilla, inputs=(), outputs=(OUTPUT,))]


def train_vanilla(ctx, identity: dict) -> dict:
    c = ctx.config
    train, test = ctx.train_set(), ctx.test_set()
    images, labels = train.images, train.labels
    if c.classifier.train_fraction < 1.0:
        rng = streams.numpy_rng(c.seed, "classifier_subset")
        keep = np.sort(rng.permutation(len(labels))[: int(c.classifier.train_fraction
                                                          * len(labels))])
        images, labels = images[keep], labels[keep]
    clf = ctx.classifier
    k_init, k_state = jax.random.split(streams.jax_key(c.seed, "classifier_init"))
    tx = torch_sgd(c.classifier.lr, c.classifier.momentum, c.classifier.weight_decay)
    state = create_state(init_classifier_vars(clf, k_init, ctx.image_shape), tx, k_state)
    ckpt = training.open_checkpointer(ctx.wd, OUTPUT, identity, ctx.run_spec("vanilla"))

    def make_batch(rows):
        return {"image": data.to_float(images[rows]), "label": labels[rows]}

    def eval_fn(st):
        return {"test_accuracy": clf.accuracy(st.model, test.images, test.labels,
                                              c.classifier.eval_batch_size, ctx.mesh)}

    writer = MetricWriter(ctx.model_dir("vanilla"))
    try:
        state, trained = training.fit(
            state=state, step_fn=training.jit_step(make_clean_step(clf, tx), ctx.mesh),
            num_examples=len(labels),
            batch_size=training.effective_batch(c.classifier.batch_size, len(labels),
                                                ctx.mesh.devices.size),
            make_batch=make_batch, epochs=c.classifier.epochs,
            seed=streams.data_seed(c.seed, "classifier_batches"), checkpointer=ckpt,
            checkpoint_every_epochs=c.classifier.checkpoint_every_epochs, writer=writer,
            mesh=ctx.mesh, eval_fn=eval_fn,
            eval_every_epochs=c.classifier.checkpoint_every_epochs,
            progress=ctx.progress, desc="vanilla")
        digest = training.checkpoint_digest(ckpt)
    finally:
        ckpt.close()
    final = eval_fn(state)
    if trained:
        writer.write(int(state.step), {f"eval/{k}": v for k, v in final.items()})
    return {"test_accuracy": final["test_accuracy"], "train_examples": int(len(labels)),
            "output_digest": digest}
