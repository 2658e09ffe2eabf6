"""Tests for ``advcore.models``: registry, parameter counts, shapes, inits, BN, dropout.

The paper-size models are only traced (``jax.eval_shape``: no allocation, no
compilation); everything that runs for real uses tiny widths, because XLA:CPU
compiles each random init separately and this machine has two cores.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advcore.models import (
    MODEL_NAMES,
    NATIVE_INPUT_SHAPES,
    build_model,
    count_params,
    init_variables,
)

KEY = jax.random.key(0)


def shapes_of(model, input_shape):
    """Variables of ``model`` as ShapeDtypeStructs (traced, never allocated)."""
    return jax.eval_shape(lambda k: init_variables(model, k, input_shape), KEY)


def num_classes_for(name: str) -> int:
    return 1 if name == "vgg11bn_celeba" else 10


# --------------------------------------------------------------------------
# Hand formulas, written from the papers' layer lists (independent of the code).


def conv_count(cin: int, cout: int, k: int, bias: bool = False) -> int:
    return cin * cout * k * k + (cout if bias else 0)


def linear_count(cin: int, cout: int) -> int:
    return cin * cout + cout


def wrn_count(depth: int, k: int, classes: int, sub_block: bool = False) -> int:
    n = (depth - 4) // 6
    widths = [16, 16 * k, 32 * k, 64 * k]

    def group(cin: int, cout: int) -> int:
        total = 0
        for i in range(n):
            c = cin if i == 0 else cout
            total += 2 * c + conv_count(c, cout, 3) + 2 * cout + conv_count(cout, cout, 3)
            if c != cout:
                total += conv_count(c, cout, 1)
        return total

    total = conv_count(3, 16, 3)
    total += group(widths[0], widths[1]) * (2 if sub_block else 1)
    total += group(widths[1], widths[2]) + group(widths[2], widths[3])
    return total + 2 * widths[3] + linear_count(widths[3], classes)


def resnet18_count(classes: int) -> int:
    total = conv_count(3, 64, 3) + 2 * 64
    cin = 64
    for width, stride in zip((64, 128, 256, 512), (1, 2, 2, 2)):
        for i in range(2):
            s = stride if i == 0 else 1
            total += conv_count(cin, width, 3) + 2 * width + conv_count(width, width, 3) + 2 * width
            if s != 1 or cin != width:
                total += conv_count(cin, width, 1) + 2 * width
            cin = width
    return total + linear_count(512, classes)


def vgg_bn_convs_count(cfg) -> tuple[int, int]:
    total, cin = 0, 3
    for item in cfg:
        if item != "M":
            total += conv_count(cin, item, 3, bias=True) + 2 * item
            cin = item
    return total, cin


SMALL_CNN_COUNT = (
    conv_count(1, 32, 3, True) + conv_count(32, 32, 3, True) + conv_count(32, 64, 3, True)
    + conv_count(64, 64, 3, True) + linear_count(1024, 200) + linear_count(200, 200)
    + linear_count(200, 10)
)
VGG8_COUNT = (
    vgg_bn_convs_count([64, "M", 128, "M", 256, "M", 512, "M", 512])[0]
    + linear_count(2048, 4096) + linear_count(4096, 2048) + linear_count(2048, 512)
    + linear_count(512, 10)
)
VGG11_COUNT = (
    vgg_bn_convs_count([64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"])[0]
    + linear_count(8192, 4096) + linear_count(4096, 2048) + linear_count(2048, 1)
)


def test_hand_formulas_reproduce_spec_numbers():
    # Cross-checks the formulas themselves against docs/lbgat.md#wrn / known figures.
    assert wrn_count(34, 10, 10) == 46_160_474
    assert wrn_count(34, 10, 100) == 46_218_164
    assert wrn_count(34, 20, 10) == 184_531_674
    assert wrn_count(34, 20, 100) == 184_646_964
    assert round(wrn_count(34, 10, 10, sub_block=True) / 1e6, 2) == 48.26
    assert round(wrn_count(34, 20, 10, sub_block=True) / 1e6, 2) == 192.88
    assert resnet18_count(10) == 11_173_962
    # torchvision's vgg11_bn conv stack has 9,225,984 parameters.
    assert vgg_bn_convs_count([64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]
                              )[0] == 9_225_984


@pytest.mark.parametrize(
    "name,classes,kwargs,expected",
    [
        ("wrn", 10, {}, 46_160_474),
        ("wrn", 100, {}, 46_218_164),
        ("wrn", 10, {"widen_factor": 20}, 184_531_674),
        ("wrn", 100, {"widen_factor": 20}, 184_646_964),
        ("wrn", 10, {"include_unused_sub_block": True}, wrn_count(34, 10, 10, sub_block=True)),
        ("wrn", 10, {"depth": 16, "widen_factor": 4}, wrn_count(16, 4, 10)),
        ("resnet18_lbgat", 10, {}, 11_173_962),
        ("resnet18_lbgat", 100, {}, 11_220_132),
        ("resnet18", 10, {}, 11_173_962),
        ("cifar_resnet18", 10, {}, 11_173_962),
        ("small_cnn", 10, {}, SMALL_CNN_COUNT),
        ("lenet", 10, {}, 431_080),
        ("vgg8_svhn", 10, {}, VGG8_COUNT),
        ("vgg11bn_celeba", 1, {}, VGG11_COUNT),
    ],
)
def test_param_counts(name, classes, kwargs, expected):
    model = build_model(name, classes, **kwargs)
    variables = shapes_of(model, (1, *NATIVE_INPUT_SHAPES[name]))
    assert count_params(variables["params"]) == expected
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))


def test_small_counts_are_the_hand_numbers():
    # The derived constants, spelled out so a formula slip cannot hide.
    assert SMALL_CNN_COUNT == 312_202
    assert resnet18_count(100) == 11_220_132
    assert VGG8_COUNT == 21_751_306
    assert VGG11_COUNT == 51_177_217


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_native_output_and_feature_shapes(name):
    classes = num_classes_for(name)
    model = build_model(name, classes)
    shape = (3, *NATIVE_INPUT_SHAPES[name])
    variables = shapes_of(model, shape)
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    logits = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
    assert logits.shape == (3, classes) and logits.dtype == jnp.float32
    z = jax.eval_shape(
        lambda v, x: model.apply(v, x, train=False, method="features"), variables, x
    )
    latent = {"wrn": 640, "small_cnn": 1024, "lenet": 500, "vgg8_svhn": 4096,
              "vgg11bn_celeba": 4096}.get(name, 512)
    assert z.shape == (3, latent)
    back = jax.eval_shape(
        lambda v, z: model.apply(v, z, train=False, method="classify"), variables, z
    )
    assert back.shape == (3, classes)
    has_bn = name not in ("small_cnn", "lenet")
    assert set(variables) == ({"params", "batch_stats"} if has_bn else {"params"})


def test_bf16_model_keeps_float32_variables_and_logits():
    model = build_model("wrn", 10, dtype="bfloat16")
    variables = shapes_of(model, (2, 32, 32, 3))
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
    logits = jax.eval_shape(
        lambda v: model.apply(v, jnp.zeros((2, 32, 32, 3)), train=False), variables
    )
    assert logits.dtype == jnp.float32


# --------------------------------------------------------------------------
# Registry validation.


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="valid names:.*wrn.*resnet18_lbgat"):
        build_model("wrn28", 10)


@pytest.mark.parametrize(
    "name,classes,kwargs,field",
    [
        ("wrn", 10, {"depth": 33}, "depth"),
        ("wrn", 10, {"depth": 4}, "depth"),
        ("wrn", 10, {"widen_factor": 0}, "widen_factor"),
        ("wrn", 10, {"num_bn_sets": 0}, "num_bn_sets"),
        ("wrn", 1, {}, "num_classes"),
        ("wrn", 10, {"dtype": "int8"}, "dtype"),
        ("wrn", 10, {"dpeth": 34}, "dpeth"),
        ("resnet18_lbgat", 10, {"strides": (1, 2, 2, 2)}, "strides"),
        ("resnet18", 10, {"base_width": 0}, "base_width"),
        ("small_cnn", 10, {"dropout_rate": 1.0}, "dropout_rate"),
        ("small_cnn", 10, {"channels": (32, 32, 64)}, "channels"),
        ("lenet", 0, {}, "num_classes"),
        ("vgg8_svhn", 10, {"width_multiplier": 0.0}, "width_multiplier"),
        ("vgg11bn_celeba", 3, {}, "num_classes"),
        ("vgg11bn_celeba", 0, {}, "num_classes"),
    ],
)
def test_bad_kwargs_raise_value_error_naming_the_field(name, classes, kwargs, field):
    with pytest.raises(ValueError, match=field):
        build_model(name, classes, **kwargs)


def test_json_style_kwargs_are_accepted():
    # Configs round-trip through JSON: lists for tuples, strings for dtypes.
    model = build_model("small_cnn", 10, channels=[2, 2, 4, 4], dtype="bfloat16")
    assert model.channels == (2, 2, 4, 4) and model.dtype == jnp.bfloat16


def test_init_variables_rejects_bad_input_shape():
    with pytest.raises(ValueError, match="input_shape"):
        init_variables(build_model("lenet", 10), KEY, (28, 28, 1))


# --------------------------------------------------------------------------
# Real initialisation of tiny variants.


@functools.lru_cache(maxsize=None)
def tiny_wrn():
    """WRN-10-1 with two BN sets (widths 16/16/32/64): block1 has an identity
    shortcut, block2/3 a projection, so both block kinds run."""
    model = build_model("wrn", 10, depth=10, widen_factor=1, num_bn_sets=2)
    return model, init_variables(model, KEY, (1, 32, 32, 3))


@functools.lru_cache(maxsize=None)
def tiny_small_cnn():
    model = build_model("small_cnn", 10, channels=(4, 4, 8, 8), hidden_dim=32)
    return model, init_variables(model, KEY, (1, 28, 28, 1))


@functools.lru_cache(maxsize=None)
def lenet():
    model = build_model("lenet", 10)
    return model, init_variables(model, KEY, (1, 28, 28, 1))


def images(shape, seed=1):
    return jax.random.uniform(jax.random.key(seed), shape)


def test_wrn_conv_init_is_fan_out_he_normal():
    _, variables = tiny_wrn()
    params = variables["params"]
    for path in (("block3", "layer_0", "conv2"), ("block3", "layer_0", "conv1"),
                 ("block2", "layer_0", "conv2")):
        kernel = np.asarray(functools.reduce(dict.__getitem__, path, params)["kernel"])
        kh, kw, _, out = kernel.shape
        expected = np.sqrt(2.0 / (kh * kw * out))
        assert kernel.std() == pytest.approx(expected, rel=0.05), path
        assert abs(kernel.mean()) < 0.05 * expected
    # FC: PyTorch default weight U(+-1/sqrt(fan_in)), bias exactly 0.
    fc = params["fc"]
    bound = 1.0 / np.sqrt(fc["kernel"].shape[0])
    assert np.abs(fc["kernel"]).max() <= bound
    assert np.abs(fc["kernel"]).max() > 0.8 * bound
    assert not np.any(fc["bias"])


def test_bn_init_scale_one_bias_zero_stats_zero_one():
    for _, variables in (tiny_wrn(),):
        for path, leaf in jax.tree_util.tree_leaves_with_path(variables["params"]):
            name = path[-1].key
            if name == "scale":
                assert np.all(np.asarray(leaf) == 1.0)
            elif name == "bias" and "bn" in jax.tree_util.keystr(path):
                assert not np.any(leaf)
        for path, leaf in jax.tree_util.tree_leaves_with_path(variables["batch_stats"]):
            assert np.all(np.asarray(leaf) == (0.0 if path[-1].key == "mean" else 1.0))


def test_lenet_init_is_pytorch_default():
    _, variables = lenet()
    params = variables["params"]
    for name in ("conv2", "fc1"):
        kernel, bias = np.asarray(params[name]["kernel"]), np.asarray(params[name]["bias"])
        fan_in = np.prod(kernel.shape[:-1])
        bound = 1.0 / np.sqrt(fan_in)  # kaiming-uniform(a=sqrt(5)) and the bias rule
        assert np.abs(kernel).max() <= bound and np.abs(bias).max() <= bound
        assert kernel.std() == pytest.approx(bound / np.sqrt(3.0), rel=0.05)
        assert np.abs(bias).max() > 0.5 * bound


def test_small_cnn_init_and_zero_logits():
    model, variables = tiny_small_cnn()
    assert set(variables) == {"params"}
    params = variables["params"]
    assert not np.any(params["fc3"]["kernel"]) and not np.any(params["fc3"]["bias"])
    kernel = np.asarray(params["conv4"]["kernel"])  # kaiming normal, fan_in
    assert kernel.std() == pytest.approx(np.sqrt(2.0 / np.prod(kernel.shape[:3])), rel=0.25)
    assert not np.any(params["conv1"]["bias"])
    logits = model.apply(variables, images((2, 28, 28, 1)), train=False)
    assert logits.shape == (2, 10) and not np.any(logits)


def test_small_cnn_dropout_only_in_train_mode():
    model, variables = tiny_small_cnn()
    # A non-zero last layer, otherwise the logits are 0 whatever dropout does.
    params = dict(variables["params"])
    params["fc3"] = {"kernel": jnp.ones_like(params["fc3"]["kernel"]),
                     "bias": params["fc3"]["bias"]}
    v = {"params": params}
    x = images((4, 28, 28, 1))
    apply = jax.jit(model.apply, static_argnames="train")
    train_a = apply(v, x, train=True, rngs={"dropout": jax.random.key(1)})
    train_b = apply(v, x, train=True, rngs={"dropout": jax.random.key(2)})
    train_a2 = apply(v, x, train=True, rngs={"dropout": jax.random.key(1)})
    eval_a = apply(v, x, train=False, rngs={"dropout": jax.random.key(1)})
    eval_b = apply(v, x, train=False, rngs={"dropout": jax.random.key(2)})
    assert not np.allclose(train_a, train_b)
    np.testing.assert_array_equal(train_a, train_a2)
    np.testing.assert_array_equal(eval_a, eval_b)
    assert not np.allclose(train_a, eval_a)


def test_train_mode_updates_batch_stats_eval_mode_does_not():
    model, variables = tiny_wrn()
    x = images((8, 32, 32, 3))
    apply = jax.jit(model.apply, static_argnames=("train", "mutable", "bn_set"))
    _, updates = apply(variables, x, train=True, mutable=("batch_stats",), bn_set=0)
    before = variables["batch_stats"]
    after = updates["batch_stats"]
    changed = jax.tree.map(lambda a, b: not np.allclose(a, b), before, after)
    set0 = [c for p, c in jax.tree_util.tree_leaves_with_path(changed) if "set0" in str(p)]
    set1 = [c for p, c in jax.tree_util.tree_leaves_with_path(changed) if "set1" in str(p)]
    assert set0 and all(set0)  # every BN site of set 0 moved
    assert set1 and not any(set1)  # set 1 untouched
    _, eval_updates = apply(variables, x, train=False, mutable=("batch_stats",), bn_set=0)
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(eval_updates["batch_stats"])):
        np.testing.assert_array_equal(a, b)
    # Running statistics change the eval output.
    y0 = apply(variables, x, train=False, bn_set=0)
    y1 = apply({**variables, **updates}, x, train=False, bn_set=0)
    assert not np.allclose(y0, y1)


def test_bf16_compute_matches_float32_closely():
    model, variables = tiny_wrn()
    model_bf16 = build_model("wrn", 10, depth=10, widen_factor=1, num_bn_sets=2,
                             dtype="bfloat16")
    x = images((2, 32, 32, 3))
    y32 = model.apply(variables, x, train=False)
    y16 = jax.jit(functools.partial(model_bf16.apply, train=False))(variables, x)
    assert y16.dtype == jnp.float32
    np.testing.assert_allclose(y16, y32, atol=0.05 * float(np.abs(y32).max()) + 1e-3)


# --------------------------------------------------------------------------
# Shared conv, separate BN (LBGAT Table 2).


def test_two_bn_sets_share_convs_and_duplicate_bn():
    model, variables = tiny_wrn()
    params = variables["params"]
    block = params["block1"]["layer_0"]
    assert set(block["bn1"]) == {"set0", "set1"}
    assert set(block["conv1"]) == {"kernel"}  # one copy of each conv
    assert "convShortcut" not in block  # 16 -> 16: identity shortcut
    assert set(params["block2"]["layer_0"]["convShortcut"]) == {"kernel"}
    assert set(params["fc"]) == {"kernel", "bias"}
    single = shapes_of(build_model("wrn", 10, depth=10, widen_factor=1), (1, 32, 32, 3))
    bn_params = sum(
        leaf.size for path, leaf in jax.tree_util.tree_leaves_with_path(single["params"])
        if path[-1].key in ("scale", "bias") and "bn" in jax.tree_util.keystr(path)
    )
    assert count_params(params) == count_params(single["params"]) + bn_params
    assert count_params(variables["batch_stats"]) == 2 * count_params(single["batch_stats"])
    # With a single set the tree is the plain (PyTorch-like) layout.
    assert set(single["params"]["block1"]["layer_0"]["bn1"]) == {"scale", "bias"}


def test_two_bn_sets_diverge_only_where_updated():
    model, variables = tiny_wrn()
    x = images((4, 32, 32, 3))

    @functools.partial(jax.jit, static_argnames="bn_set")
    def logits(v, bn_set):
        return model.apply(v, x, train=False, bn_set=bn_set)

    np.testing.assert_array_equal(logits(variables, 0), logits(variables, 1))

    def loss(params):
        out, upd = model.apply({"params": params, "batch_stats": variables["batch_stats"]},
                               x, train=True, bn_set=0, mutable=["batch_stats"])
        return jnp.sum(jnp.square(out - 1.0)), upd

    grads, updates = jax.jit(jax.grad(loss, has_aux=True))(variables["params"])
    bn = lambda tree, s: tree["block2"]["layer_0"]["bn2"][f"set{s}"]  # noqa: E731
    assert np.any(bn(grads, 0)["scale"]) and np.any(bn(grads, 0)["bias"])
    assert not np.any(bn(grads, 1)["scale"]) and not np.any(bn(grads, 1)["bias"])
    stats = updates["batch_stats"]
    assert not np.allclose(bn(stats, 0)["mean"], bn(variables["batch_stats"], 0)["mean"])
    np.testing.assert_array_equal(bn(stats, 1)["mean"], bn(variables["batch_stats"], 1)["mean"])
    np.testing.assert_array_equal(bn(stats, 1)["var"], bn(variables["batch_stats"], 1)["var"])

    new_params = jax.tree.map(lambda p, g: p - 0.1 * g, variables["params"], grads)
    assert not np.allclose(bn(new_params, 0)["scale"], bn(new_params, 1)["scale"])
    new_vars = {"params": new_params, "batch_stats": stats}
    assert not np.allclose(logits(new_vars, 0), logits(new_vars, 1))


def test_bn_set_out_of_range_raises():
    model, variables = tiny_wrn()
    with pytest.raises(ValueError, match="bn_set"):
        jax.eval_shape(lambda v: model.apply(v, jnp.zeros((1, 32, 32, 3)), train=False,
                                             bn_set=2), variables)


def test_unused_sub_block_exists_only_as_parameters():
    model = build_model("wrn", 10, depth=10, widen_factor=1, include_unused_sub_block=True)
    plain = build_model("wrn", 10, depth=10, widen_factor=1)
    v = shapes_of(model, (1, 32, 32, 3))
    assert "sub_block1" in v["params"] and "sub_block1" in v["batch_stats"]
    assert "sub_block1" not in shapes_of(plain, (1, 32, 32, 3))["params"]
    # apply never reads it: the forward works without those variables at all.
    pruned = {c: {k: t for k, t in v[c].items() if k != "sub_block1"} for c in v}
    out = jax.eval_shape(
        lambda p: model.apply(p, jnp.zeros((1, 32, 32, 3)), train=True,
                              mutable=["batch_stats"]), pruned)
    assert out[0].shape == (1, 10)


# --------------------------------------------------------------------------
# LADDER classifiers: features / classify.


def test_lenet_features_classify_roundtrip_and_pre_relu_latent():
    model, variables = lenet()
    x = images((8, 28, 28, 1))
    logits = model.apply(variables, x, train=False)
    z = model.apply(variables, x, train=False, method="features")
    assert z.shape == (8, 500)
    assert np.any(np.asarray(z) < 0)  # pre-ReLU latent
    again = model.apply(variables, z, train=False, method="classify")
    np.testing.assert_allclose(again, logits, rtol=1e-6, atol=1e-6)
    # The normalisation is inside the model and switchable.
    raw = build_model("lenet", 10, normalize=False)
    z_raw = raw.apply(variables, (x - 0.1307) / 0.3081, train=False, method="features")
    np.testing.assert_allclose(z_raw, z, rtol=1e-5, atol=1e-5)


def test_vgg11_celeba_single_logit_and_two_logit_view():
    one = build_model("vgg11bn_celeba", 1, width_multiplier=1 / 32)
    two = build_model("vgg11bn_celeba", 2, width_multiplier=1 / 32)
    variables = init_variables(one, KEY, (1, 128, 128, 3))
    x = images((2, 128, 128, 3))

    @jax.jit
    def run(v, x):  # one compilation for all the calls
        z = one.apply(v, x, train=False, method="features")
        return (z, one.apply(v, x, train=False), two.apply(v, x, train=False),
                one.apply(v, z, train=False, method="classify"))

    z, logit, pair, again = run(variables, x)
    assert z.shape == (2, 128) and np.any(np.asarray(z) < 0)  # pre-ReLU latent
    assert logit.shape == (2, 1) and pair.shape == (2, 2)
    np.testing.assert_array_equal(pair[:, 0], 0.0)
    np.testing.assert_allclose(pair[:, 1:], logit, rtol=1e-6)
    np.testing.assert_allclose(again, logit, rtol=1e-5, atol=1e-6)


def test_vgg8_latent_is_post_relu_and_dropout_acts_on_it():
    model = build_model("vgg8_svhn", 10, width_multiplier=1 / 16)
    variables = init_variables(model, KEY, (1, 32, 32, 3))
    x = images((4, 32, 32, 3))

    @jax.jit
    def run(v, k1, k2):
        feats = lambda k, train: model.apply(  # noqa: E731
            v, x, train=train, method="features", rngs={"dropout": k},
            mutable=["batch_stats"])[0]
        z = feats(k1, False)
        return (z, feats(k2, False), feats(k1, True), feats(k2, True),
                model.apply(v, x, train=False), model.apply(v, z, train=False, method="classify"))

    z, z_other_key, z_train1, z_train2, logits, again = run(
        variables, jax.random.key(1), jax.random.key(2))
    assert z.shape == (4, 256) and np.all(np.asarray(z) >= 0)  # post-ReLU latent
    np.testing.assert_array_equal(z, z_other_key)  # no dropout in eval mode
    assert not np.array_equal(np.asarray(z_train1) == 0, np.asarray(z_train2) == 0)
    np.testing.assert_allclose(again, logits, rtol=1e-5, atol=1e-6)
