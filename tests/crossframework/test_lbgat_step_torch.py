"""The LBGAT-family outer step, teacher-forced, against the PyTorch reference.

Both frameworks get the same weights (the library's init, copied into torch),
the same batch and the **same** x' (teacher forcing), and run one step of
each method: ``lbgat_jax.step.make_loss_fn`` / ``make_update_fn`` on the JAX
side, ``torch_reference.sgd_step`` on the other (the official forward order,
one ``torch.optim.SGD`` over both networks, momentum 0.9, coupled weight decay
2e-4, the config's LR at step 0). Compared: every loss term, the logits of
each pass, the gradients of both models, the parameter updates and SGD
momentum buffers, and the BatchNorm running statistics after the step. The
statistics pin the number and the order of the train-mode passes: the
official LBGAT code runs M_r(x'), M_r(x), M_n(x) (also for ``lbgat``, whose
M_r(x) output no term reads); TRADES runs M_r(x), M_r(x'), M_r(x).

Precision: float32 on both sides, deterministic torch kernels, tolerance
``RTOL`` = 1e-5 relative, with absolute floors only where an entry is the
near-cancelling sum of much larger terms (each floor is explained where it
is defined). Where a ReLU input is within rounding of 0 the two
implementations can gate it differently, which changes one gradient term by
O(1) (errors of 1-4 % in the last ResNet stage, measured when it happened); the
weights and the batch are chosen so that no ReLU input of the compared passes
lies within ``RELU_MARGIN`` of 0 (``conftest.shift_batch_norm``; checked by
``test_no_relu_input_near_zero``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from advcore.variables import ModelVars
from lbgat_jax import state as state_lib
from lbgat_jax import step as step_lib
from lbgat_jax.methods import get_method

from conftest import NUM_CLASSES, method_config, import_torch_reference

tr = import_torch_reference()  # skips this module when PyTorch is absent
import torch  # noqa: E402  (only after the skip)

RTOL = 1e-5
# Near 0 the frameworks' fp32 pre-activations differ by up to 4e-6 (measured
# on BatchNorm outputs of both models); 1e-5 leaves a factor 2.5.
RELU_MARGIN = 1e-5
# Loss terms: α·KL between nearly equal distributions (1e-4 here) is computed
# from differences of log-probabilities of order 1 whose fp32 rounding
# (~1e-7 each) gives it an absolute error of order α·1e-7, not a relative one
# (measured 1.8e-7 at α = 6).
LOSS_ATOL = 2e-6
# A logit near 0 keeps the absolute error of the head's sum that produced it,
# which scales with the largest logits.
LOGIT_ATOL_SCALE = 1e-5
# Gradients (and SGD momentum buffers, parameter updates): an entry is a sum
# over up to B·H·W = 8192 positions, and an entry that cancels to near 0 keeps
# the rounding of its terms, whose size is that of the module's largest
# gradients. So the floor is relative to max|grad| over the module's
# parameters (a kernel; or a BatchNorm's scale and bias together: a BN bias
# between two BNs with mostly-open ReLUs (conftest.shift_batch_norm) has a
# gradient that is nearly 0 by construction, its scale's is not). Measured
# worst case on these cases: JAX vs the float32 reference 4.9e-5 of that
# scale, the reference's own float32-vs-float64 error 1.9e-5.
GRAD_ATOL_SCALE = 1.5e-4
# BatchNorm running means: a batch mean of O(1) activations that cancels to
# near 0 keeps an absolute error of order 1e-8 (measured worst: 1.8e-7 of the
# leaf's largest entry).
STATS_ATOL_SCALE = 1e-6

# (method, α): every loss structure of the family once.
CASES = [
    ("lbgat_trades", 0.0),
    ("lbgat_trades", 6.0),
    ("trades", 6.0),
    ("vanilla_at", 0.0),
    ("lbgat", 0.0),
    ("alp", 1.0),
    ("bgat", 0.0),
]


def jax_step(pair, batch, run_optimizer, method: str, alpha: float) -> dict:
    """One teacher-forced JAX step: loss, parts, logits, grads, the state after it."""
    config = method_config(method, alpha)
    spec = get_method(method)
    tx, schedule = run_optimizer
    teachers = (pair.natural_module,) if spec.teacher == "frozen" else ()
    models = state_lib.build_models(config, spec, NUM_CLASSES, teacher_modules=teachers)
    assert models.robust == pair.robust_module
    assert models.natural in (None, pair.natural_module)
    natural = ModelVars.from_variables(pair.natural_vars)
    state = state_lib.TrainState(
        step=jnp.zeros((), jnp.int32),
        robust=ModelVars.from_variables(pair.robust_vars),
        natural=natural if models.natural is not None else {},
        teacher={"0": natural} if spec.teacher == "frozen" else {},
        opt_state=None,
        key=jax.random.PRNGKey(0),
    )
    state = state.replace(opt_state=tx.init(state.trainable_params()))
    x, y, x_adv = (jnp.asarray(batch[k]) for k in ("image", "label", "x_adv"))

    # Un-jitted on purpose: see conftest's module docstring.
    loss_fn = step_lib.make_loss_fn(config, spec, models)
    (total, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.trainable_params(), state, x, x_adv, y, step_lib.step_keys(state)["dropout"])
    update = step_lib.make_update_fn(config, spec, models, tx, schedule)
    new_state, metrics = update(state, {"image": x, "label": y}, x_adv)
    traces = [s.trace for s in jax.tree.leaves(
        new_state.opt_state, is_leaf=lambda n: isinstance(n, optax.TraceState))
        if isinstance(s, optax.TraceState)]
    assert len(traces) == 1, "expected one momentum trace in the optimizer state"
    return jax.device_get({
        "total": total, "parts": aux["parts"], "logits": aux["logits"], "grads": grads,
        "new_state": new_state, "metrics": metrics, "momentum": traces[0],
        "lr": schedule(0), "order": step_lib.forward_order(config, spec, models),
    })


def torch_step(pair, batch, method: str, alpha: float, lr: float) -> dict:
    official = tr.OFFICIAL_METHODS[method]
    robust = pair.torch_robust()
    natural = pair.torch_natural() if official.teacher != "none" else None
    x, x_adv = torch.from_numpy(batch["image"]), torch.from_numpy(batch["x_adv"])
    y = torch.from_numpy(batch["label"]).long()
    out = tr.sgd_step(official, robust, natural, x, x_adv, y, alpha=alpha, lr=lr)
    out["params"] = {"robust": tr.flax_tree(robust, "params")}
    out["batch_stats"] = {"robust": tr.flax_tree(robust, "batch_stats")}
    if official.teacher == "learnable":
        out["params"]["natural"] = tr.flax_tree(natural, "params")
        out["batch_stats"]["natural"] = tr.flax_tree(natural, "batch_stats")
    return out


def _leaves(tree) -> dict:
    return {jax.tree_util.keystr(path): np.asarray(leaf, np.float64)
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def assert_close(actual, expected, what: str, *, atol_scale: float = 0.0, extra_atol=0.0):
    """``|a - e| <= RTOL·|e| + atol_scale·max|e| + extra_atol`` elementwise
    (``extra_atol`` may be an array), with a message naming the worst entry."""
    a, e = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert a.shape == e.shape, f"{what}: shape {a.shape} vs {e.shape}"
    allowed = RTOL * np.abs(e) + atol_scale * np.max(np.abs(e)) + extra_atol
    excess = np.abs(a - e) - allowed
    if np.any(excess > 0):
        i = np.unravel_index(np.argmax(excess), e.shape)
        raise AssertionError(
            f"{what}: {int(np.sum(excess > 0))}/{e.size} entries differ; worst at {i}: "
            f"ours {a[i]:.9g}, reference {e[i]:.9g}, |diff| {abs(a[i] - e[i]):.3g} > "
            f"allowed {allowed[i]:.3g} (max|reference| {np.max(np.abs(e)):.3g})")


def assert_trees_close(actual, expected, what: str, *, atol_scale: float = 0.0,
                       per_module: bool = False, extra_atol=None):
    """``assert_close`` leaf by leaf, with exactly the same leaves on both sides.

    ``atol_scale`` multiplies max|expected| over the leaf, or with
    ``per_module`` over all leaves of the leaf's module (its parent node).
    """
    a, e = _leaves(actual), _leaves(expected)
    assert sorted(a) == sorted(e), f"{what}: leaves differ: {sorted(set(a) ^ set(e))}"
    extra = {} if extra_atol is None else _leaves(extra_atol)
    module_of = lambda path: path.rsplit("[", 1)[0]  # noqa: E731
    scale = {}
    for path, leaf in e.items():
        key = module_of(path) if per_module else path
        scale[key] = max(scale.get(key, 0.0), float(np.max(np.abs(leaf))))
    for path in e:
        floor = atol_scale * scale[module_of(path) if per_module else path]
        assert_close(a[path], e[path], f"{what}{path}", extra_atol=floor + extra.get(path, 0.0))


@pytest.fixture(scope="module", params=CASES, ids=[f"{m}-alpha{a:g}" for m, a in CASES])
def step_pair(request, pair, batch, run_optimizer):
    method, alpha = request.param
    ours = jax_step(pair, batch, run_optimizer, method, alpha)
    ref = torch_step(pair, batch, method, alpha, float(ours["lr"]))
    return method, ours, ref


def test_no_relu_input_near_zero(pair, batch):
    """Precondition of the 1e-5 comparisons: every train-mode pass of the step
    (M_r on x' and x, M_n on x) and the frozen teacher's eval-mode pass keep
    their ReLU inputs at least ``RELU_MARGIN`` away from 0."""
    x, x_adv = torch.from_numpy(batch["image"]), torch.from_numpy(batch["x_adv"])
    robust, natural = pair.torch_robust(), pair.torch_natural()
    passes = {"M_r(x') train": (robust, x_adv, True), "M_r(x) train": (robust, x, True),
              "M_n(x) train": (natural, x, True), "M_n(x) eval": (natural, x, False)}
    for name, (model, inputs, train) in passes.items():
        model.train(train)
        with torch.no_grad(), tr.track_relu_margin() as margins:
            model(inputs)
        assert min(margins) > RELU_MARGIN, (
            f"{name}: a ReLU input is {min(margins):.2e} from 0; pick another "
            "conftest.BATCH_SEED")


def test_loss_terms(step_pair):
    method, ours, ref = step_pair
    assert sorted(ours["parts"]) == sorted(ref["parts"]), method
    for name, value in ref["parts"].items():
        np.testing.assert_allclose(ours["parts"][name], value, rtol=RTOL, atol=LOSS_ATOL,
                                   err_msg=f"{method}: {name}")
        np.testing.assert_allclose(ours["metrics"][f"loss/{name}"], value, rtol=RTOL,
                                   atol=LOSS_ATOL, err_msg=f"{method}: metrics loss/{name}")
    np.testing.assert_allclose(ours["total"], ref["total"], rtol=RTOL, atol=LOSS_ATOL)
    np.testing.assert_allclose(ours["metrics"]["loss"], ref["total"], rtol=RTOL,
                               atol=LOSS_ATOL)


def test_logits(step_pair):
    method, ours, ref = step_pair
    ran = {name for name, value in ref["logits"].items() if value is not None}
    assert set(ours["logits"]) == ran, (method, ours["order"])
    for name in ran:
        assert_close(ours["logits"][name], ref["logits"][name], f"{method}: logits[{name}]",
                     atol_scale=LOGIT_ATOL_SCALE)


def test_gradients(step_pair):
    method, ours, ref = step_pair
    assert_trees_close(ours["grads"], ref["grads"], f"{method} grads",
                       atol_scale=GRAD_ATOL_SCALE, per_module=True)


def test_parameters_after_step(step_pair, pair):
    """The update θ_new − θ (LR, coupled weight decay, momentum) and θ_new itself.

    θ_new = θ − lr·(g + wd·θ) is rounded to the precision of θ, so each side's
    update carries up to half an ulp of θ on top of lr times the gradient's
    error: the floor is ``2^-23·|θ|`` per entry plus the gradient floor.
    """
    method, ours, ref = step_pair
    state = ours["new_state"]
    new = {"robust": state.robust.params}
    old = {"robust": pair.robust_vars["params"]}
    if "natural" in ref["params"]:
        new["natural"] = state.natural.params
        old["natural"] = pair.natural_vars["params"]
    to64 = lambda t: jax.tree.map(lambda a: np.asarray(a, np.float64), t)  # noqa: E731
    ours_update = jax.tree.map(np.subtract, to64(new), to64(old))
    ref_update = jax.tree.map(np.subtract, ref["params"], to64(old))
    ulp = jax.tree.map(lambda a: 2.0 ** -23 * np.abs(a), to64(old))
    assert_trees_close(ours_update, ref_update, f"{method} update",
                       atol_scale=GRAD_ATOL_SCALE, per_module=True, extra_atol=ulp)
    # The momentum buffer after one step is g + wd·θ (coupled decay).
    assert_trees_close(ours["momentum"], ref["momentum"], f"{method} momentum",
                       atol_scale=GRAD_ATOL_SCALE, per_module=True)


def test_batch_norm_statistics_after_step(step_pair):
    method, ours, ref = step_pair
    state = ours["new_state"]
    stats = {"robust": state.robust.batch_stats}
    if "natural" in ref["batch_stats"]:
        stats["natural"] = state.natural.batch_stats
    assert_trees_close(stats, ref["batch_stats"], f"{method} BN statistics "
                       f"(JAX forward order {ours['order']})", atol_scale=STATS_ATOL_SCALE)
