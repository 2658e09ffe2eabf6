"""Named random streams: distinct, stable, the only source of randomness in ladder_jax."""

from __future__ import annotations

import os
import re

import jax
import numpy as np
import pytest

from ladder_jax import streams
from ladder_jax.config_schema import ATTACK_KEYS, FINETUNE_ROWS, VARIANTS

UNIT_NAMES = {"generate": VARIANTS, "trainset": ATTACK_KEYS, "testset": ATTACK_KEYS,
              "finetune": FINETUNE_ROWS}


def _every_stream_name() -> list[str]:
    names = list(streams.STREAMS)
    for kind, units in UNIT_NAMES.items():
        names += [f"{kind}/{u}" for u in units]
    return names


def test_every_stream_is_distinct():
    names = _every_stream_name()
    ids = [streams.stream_id(n) for n in names]
    assert len(set(ids)) == len(ids)
    assert set(UNIT_NAMES) == set(streams.UNIT_STREAMS)
    # Different ids give different draws, for every kind of draw.
    keys = {tuple(np.asarray(jax.random.key_data(streams.jax_key(0, n))).tolist())
            for n in names}
    assert len(keys) == len(names)
    assert len({streams.data_seed(0, n) for n in names}) == len(names)
    assert len({streams.numpy_rng(0, n).integers(2**62) for n in names}) == len(names)


def test_streams_are_stable():
    # The selection streams keep the ids of the first pipeline versions, so
    # the same images, targets and subsets are drawn as before.
    assert {n: streams.stream_id(n) for n in ("generate_images", "generate_targets",
                                              "classifier_subset", "generator_subset")} == \
        {"generate_images": 101, "generate_targets": 202, "classifier_subset": 303,
         "generator_subset": 404}
    np.testing.assert_array_equal(
        streams.numpy_rng(3, "generate_images").permutation(20),
        np.random.default_rng(np.random.SeedSequence([3, 101])).permutation(20))
    # Hashed unit streams: pinned values (a change of the hash would change
    # every run's draws).
    assert streams.stream_id("generate/ladder") == 26764336
    assert streams.stream_id("finetune/ladder") == 18406997
    assert streams.stream_id("trainset/fgsm") == 17673503
    assert streams.stream_id("testset/jsma") == 26575803
    assert streams.data_seed(0, "classifier_batches") == 677523187
    a, b = streams.jax_key(5, "svm_pairs"), streams.jax_key(5, "svm_pairs")
    np.testing.assert_array_equal(jax.random.key_data(a), jax.random.key_data(b))
    assert not np.array_equal(jax.random.key_data(a),
                              jax.random.key_data(streams.jax_key(6, "svm_pairs")))


def test_unknown_stream_names_are_refused():
    with pytest.raises(ValueError, match="stream name must be one of"):
        streams.stream_id("classifier_subsett")
    with pytest.raises(ValueError, match="stream name must be one of"):
        streams.stream_id("bogus/ladder")


def test_ladder_jax_draws_only_from_named_streams():
    """No seed arithmetic or hand-made generator outside ``streams.py``; every
    fixed stream is used somewhere."""
    root = os.path.join(os.path.dirname(__file__), "..", "..", "ladder_jax")
    sources = {}
    for folder, _, names in os.walk(root):
        for name in names:
            if name.endswith(".py"):
                with open(os.path.join(folder, name)) as f:
                    sources[os.path.relpath(os.path.join(folder, name), root)] = f.read()
    forbidden = re.compile(r"default_rng\(|SeedSequence\(|random\.key\(|PRNGKey\(|seed \+")
    offenders = [path for path, text in sources.items()
                 if path != "streams.py" and forbidden.search(text)]
    assert offenders == []
    code = "\n".join(text for path, text in sources.items() if path != "streams.py")
    unused = [n for n in streams.STREAMS if f'"{n}"' not in code]
    assert unused == []
