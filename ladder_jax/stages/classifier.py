"""Stage 1: the vanilla classifier f and the substitute, trained on clean images.

Both are saved as evaluable models.

CE (BCE for CelebA's single logit), SGD with a constant LR, no augmentation,
the last partial batch dropped, the final model kept; SVHN trains on a random
``classifier.train_fraction`` of the training split. The test accuracy is
logged every ``classifier.checkpoint_every_epochs`` epochs.

Units:

* ``classifier``: the vanilla model f (``models/vanilla``), the model LADDER
  attacks and every row fine-tunes;
* ``substitute`` (when ``evaluate.attack_source='substitute'`` and there are
  black-box attacks): an independently trained model of the same recipe
  (``models/substitute``), with its own random streams (initialisation,
  batch order, training subset) and, when ``evaluate.substitute_model.name``
  is set, another architecture. The black-box test sets are crafted on it,
  so no model in the tables is attacked white-box (LADDER paper, §4.3).
"""

from __future__ import annotations

import functools

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
SUBSTITUTE_OUTPUT = "models/substitute"
# Each model's random streams (ladder_jax.streams): subset, initialisation, batch order.
ROW_STREAMS = {
    "vanilla": ("classifier_subset", "classifier_init", "classifier_batches"),
    "substitute": ("substitute_subset", "substitute_init", "substitute_batches"),
}


def needs_substitute(config) -> bool:
    """True when the black-box test sets are crafted on the substitute."""
    return config.evaluate.attack_source == "substitute" and bool(config.evaluate.attacks)


def units(ctx) -> list[Unit]:
    c = ctx.config
    recipe = ("seed", "dataset", "model", "classifier")
    out = [Unit("classifier", STAGE, config_values(c, *recipe),
                functools.partial(train_classifier, row="vanilla"), inputs=(),
                outputs=(OUTPUT,))]
    if needs_substitute(c):
        out.append(Unit("substitute", STAGE,
                        config_values(c, *recipe, "evaluate.substitute_model"),
                        functools.partial(train_classifier, row="substitute"), inputs=(),
                        outputs=(SUBSTITUTE_OUTPUT,)))
    return out


def train_classifier(ctx, identity: dict, *, row: str) -> dict:
    """Trains ``models/<row>`` (``vanilla`` or ``substitute``) with the vanilla recipe."""
    c = ctx.config
    subset_stream, init_stream, batch_stream = ROW_STREAMS[row]
    train, test = ctx.train_set(), ctx.test_set()
    images, labels = train.images, train.labels
    if c.classifier.train_fraction < 1.0:
        rng = streams.numpy_rng(c.seed, subset_stream)
        keep = np.sort(rng.permutation(len(labels))[: int(c.classifier.train_fraction
                                                          * len(labels))])
        images, labels = images[keep], labels[keep]
    clf = ctx.source_classifier(row)
    k_init, k_state = jax.random.split(streams.jax_key(c.seed, init_stream))
    tx = torch_sgd(c.classifier.lr, c.classifier.momentum, c.classifier.weight_decay)
    state = create_state(init_classifier_vars(clf, k_init, ctx.image_shape), tx, k_state)
    unit_dir = f"models/{row}"
    ckpt = training.open_checkpointer(ctx.wd, unit_dir, identity, ctx.run_spec(row))

    def make_batch(rows):
        return {"image": data.to_float(images[rows]), "label": labels[rows]}

    def eval_fn(st):
        return {"test_accuracy": clf.accuracy(st.model, test.images, test.labels,
                                              c.classifier.eval_batch_size, ctx.mesh)}

    writer = MetricWriter(ctx.model_dir(row))
    try:
        state, trained = training.fit(
            state=state, step_fn=training.jit_step(make_clean_step(clf, tx), ctx.mesh),
            num_examples=len(labels),
            batch_size=training.effective_batch(c.classifier.batch_size, len(labels),
                                                ctx.mesh.devices.size),
            make_batch=make_batch, epochs=c.classifier.epochs,
            seed=streams.data_seed(c.seed, batch_stream), checkpointer=ckpt,
            checkpoint_every_epochs=c.classifier.checkpoint_every_epochs, writer=writer,
            mesh=ctx.mesh, eval_fn=eval_fn,
            eval_every_epochs=c.classifier.checkpoint_every_epochs,
            progress=ctx.progress, desc=row)
        digest = training.checkpoint_digest(ckpt)
    finally:
        ckpt.close()
    final = eval_fn(state)
    if trained:
        writer.write(int(state.step), {f"eval/{k}": v for k, v in final.items()})
    return {"test_accuracy": final["test_accuracy"], "train_examples": int(len(labels)),
            "output_digest": digest}
