"""LBGAT ablations: Table 1 (CIFAR-10, PGD-20) and Table 2 (CIFAR-100, AA).

``get_config(arg)`` takes ``<dataset>,<tokens...>``, e.g.
``configs/lbgat/ablations.py:cifar10,with_ce``. ``get_sweep()`` lists the
Table 1 columns as override dicts for ``python -m lbgat_jax.main --sweep``.
"""

from lbgat_jax import config_presets as common


def get_config(arg=None):
    tokens = [t for t in (arg or "cifar10").split(",") if t]
    dataset = "cifar10"
    if tokens and tokens[0] in ("cifar10", "cifar100"):
        dataset = tokens.pop(0)
    c = common.base_config()
    c.dataset.name = dataset
    if dataset == "cifar100":
        c.eval.attacks = "pgd20,aa_standard"
    return common.apply_variant(c, ",".join(tokens))


def get_sweep():
    """Table 1: vanilla AT, TRADES α=6, LBGAT α=0 with KL, with CE, without CE."""
    return [
        {"method": "vanilla_at"},
        {"method": "trades", "loss.alpha": 6.0},
        {"method": "lbgat_trades", "loss.alpha": 0.0, "loss.boundary": "kl"},
        {"method": "lbgat_trades", "loss.alpha": 0.0, "loss.extra_robust_ce": "clean"},
        {"method": "lbgat_trades", "loss.alpha": 0.0},
    ]
