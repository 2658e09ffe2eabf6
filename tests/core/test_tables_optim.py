"""Avg. Rank against the LADDER paper's printed values; the PyTorch-style SGD and LR schedule."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from advcore import optim, tables

# LADDER Table 1 (SVHN), columns Clean, FGSM, JSMA, PGD, CW, Song, AA.
SVHN = {
    "Vanilla": [93.85, 25, 34.04, 17.16, 86.78, 99.42, 54.62],
    "FGSM Adv": [88.66, None, 37.49, 20.62, 83.07, 97.51, 66.36],
    "JSMA Adv": [91.04, 28.4, None, 19.6, 86.22, 98.69, 61.8],
    "PGD Adv": [87.75, 34.2, 42.18, None, 85.96, 96.69, 73.18],
    "CW Adv": [91.11, 23.6, 37.64, 18.11, None, 98.16, 63.42],
    "Song Adv": [93.53, 28, 33.91, 17.18, 87.29, None, 56.27],
    "cavRandom": [91.55, 24.8, 36.96, 14.78, 84.93, 98.72, 50.78],
    "Random": [90.12, 21, 35.69, 16.42, 83.96, 98.33, 53.87],
    "LADDER": [91.71, 26.8, 37.29, 16.82, 86.42, 98.96, 62],
}
SVHN_AVG_RANK = {"Vanilla": 4.00, "FGSM Adv": 4.83, "JSMA Adv": 3.83, "PGD Adv": 4.17,
                 "CW Adv": 4.33, "Song Adv": 4.00, "cavRandom": 5.86, "Random": 6.86,
                 "LADDER": 3.71}
COLUMNS = ["Clean", "FGSM", "JSMA", "PGD", "CW", "Song", "AA"]


# LADDER Table 2 (MNIST): it has ties (Song: LADDER = Vanilla = 99.82; AA: LADDER =
# CW Adv = 99.36; CW: JSMA Adv = cavRandom = 98.56), so it fixes the tie rule.
MNIST = {
    "Vanilla": [99.13, 46.6, 93.91, 29.93, 99.09, 99.82, 99.56],
    "FGSM Adv": [92.31, None, 83.67, 80.91, 90.58, 95.53, 92.22],
    "JSMA Adv": [98.56, 57.8, None, 51.04, 98.56, 99.87, 98.69],
    "PGD Adv": [90.79, 76.2, 83.31, None, 90.67, 94.44, 90.36],
    "CW Adv": [98.87, 59.2, 94.67, 44.62, None, 99.91, 99.36],
    "Song Adv": [97.23, 55.6, 89.16, 49.91, 96.87, None, 96.69],
    "cavRandom": [99.01, 54.8, 92.76, 48.2, 98.56, 99.78, 98.89],
    "Random": [98.99, 64.4, 92.93, 56.87, 98.33, 99.89, 99.04],
    "LADDER": [99.12, 55.8, 93.13, 49.2, 98.9, 99.82, 99.36],
}
MNIST_AVG_RANK = {"Vanilla": 3.57, "FGSM Adv": 6.50, "JSMA Adv": 4.17, "PGD Adv": 7.00,
                  "CW Adv": 3.17, "Song Adv": 6.00, "cavRandom": 5.00, "Random": 3.29,
                  "LADDER": 3.29}


@pytest.mark.parametrize("printed, expected_ranks", [(SVHN, SVHN_AVG_RANK),
                                                     (MNIST, MNIST_AVG_RANK)],
                         ids=["table1_svhn", "table2_mnist_with_ties"])
def test_avg_rank_reproduces_the_ladder_papers_printed_ranks(printed, expected_ranks):
    table = {row: dict(zip(COLUMNS, vals)) for row, vals in printed.items()}
    ranks = tables.avg_rank(table, COLUMNS)
    for row, expected in expected_ranks.items():
        assert round(ranks[row], 2) == expected, row


def test_ties_share_the_best_rank_and_dashes_are_skipped():
    table = {"a": {"x": 1.0, "y": None}, "b": {"x": 1.0, "y": 5.0}, "c": {"x": 0.5, "y": 6.0}}
    assert tables.column_ranks(table, "x") == {"a": 1.0, "b": 1.0, "c": 3.0}
    assert tables.avg_rank(table) == {"a": 1.0, "b": (1.0 + 2) / 2, "c": 2.0}
    md = tables.markdown_table(table, with_avg_rank=True)
    assert "| a | 1.00 | − | 1.00 |" in md


def test_lbgat_schedule_matches_the_official_code():
    # steps_per_epoch=10: epoch 1 warm-up 0.02, 2-75 0.1, 76-90 0.01, 91-100 0.001.
    s = optim.epoch_piecewise_schedule(0.1, 10, (75, 90), 0.1, 1, 0.02)
    for epoch, lr in [(1, 0.02), (2, 0.1), (75, 0.1), (76, 0.01), (90, 0.01),
                      (91, 0.001), (100, 0.001)]:
        for step in ((epoch - 1) * 10, epoch * 10 - 1):
            np.testing.assert_allclose(float(s(step)), lr, rtol=1e-6, err_msg=f"epoch {epoch}")


def test_torch_sgd_equals_the_pytorch_update_rule():
    # PyTorch: g <- g + wd*p; buf <- m*buf + g; p <- p - lr*buf.
    lr, m, wd = 0.1, 0.9, 2e-4
    tx = optim.torch_sgd(lr, m, wd)
    p = jnp.array([1.0, -2.0, 3.0])
    state = tx.init(p)
    ref_p, buf = np.array([1.0, -2.0, 3.0]), np.zeros(3)
    for g in (jnp.array([0.5, 0.1, -0.3]), jnp.array([-0.2, 0.4, 0.0])):
        updates, state = tx.update(g, state, p)
        p = optax.apply_updates(p, updates)
        gg = np.asarray(g) + wd * ref_p
        buf = m * buf + gg
        ref_p = ref_p - lr * buf
    np.testing.assert_allclose(np.asarray(p), ref_p, rtol=1e-6)


def test_bad_optimizer_arguments_name_the_field():
    with pytest.raises(ValueError, match="momentum"):
        optim.torch_sgd(0.1, momentum=1.5)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        optim.epoch_piecewise_schedule(0.1, 0)
