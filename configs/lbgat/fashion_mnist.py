"""Fashion-MNIST: the MNIST recipe at ε = 0.1 (a harder second real dataset)."""

from lbgat_jax import config_presets as common


def get_config(arg=None):
    c = common.mnist_base("fashion_mnist", eps=0.1)
    c.attack.step_size = 0.01
    c.attack.num_steps = 20
    c.eval.step_size = 0.005
    tokens = [t for t in (arg or "").split(",") if t]
    if "demo" in tokens:
        tokens.remove("demo")
        common.apply_demo(c)
        c.attack.step_size = 0.015
        c.eval.step_size = 0.01
    return common.apply_variant(c, ",".join(tokens))
