"""``advcore.external``: PyTorch / safetensors / orbax checkpoints as attackable models.

The references are PyTorch itself: small modules with the official tensor
names (``torch_reference_models``), random weights and random BatchNorm
statistics, saved with ``torch.save`` in the layouts the LBGAT, TRADES and
RobustBench releases use; their eval-mode logits must equal ours to 1e-5.
Paper-size layouts (WRN-34-10/20, ...) are compared by names and shapes only,
against PyTorch modules built on the ``meta`` device (no memory, no forward).

Tests that need torch skip without it; the file-format, safety and layout-error
tests build their files by hand and run everywhere.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import pickle
import struct
import zipfile

import jax
import ml_dtypes
import numpy as np
import pytest

from advcore.external import (
    ExternalCheckpointError,
    ForbiddenGlobalError,
    layouts,
    load_external_model,
    parse_normalization,
    read_safetensors,
    read_torch_file,
)
from advcore.external.loader import _variable_shapes
from advcore.models import build_model, count_params

TORCH_REASON = "the PyTorch-reference tests need torch (CI installs torch 2.13.0)"


def import_torch():
    torch = pytest.importorskip("torch", reason=TORCH_REASON)
    import torch_reference_models as refs

    return torch, refs


# --------------------------------------------------------------------------
# A safetensors writer of our own (the safetensors package is not a dependency).

_ST_CODES = {np.dtype(np.float32): "F32", np.dtype(np.float64): "F64",
             np.dtype(np.float16): "F16", np.dtype(ml_dtypes.bfloat16): "BF16",
             np.dtype(np.int64): "I64", np.dtype(np.int32): "I32", np.dtype(np.uint8): "U8",
             np.dtype(np.bool_): "BOOL"}


def write_raw_safetensors(path, header: dict, buffer: bytes) -> None:
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)  # the format pads the header with spaces to 8 bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw + buffer)


def write_safetensors(path, tensors: dict, metadata=None) -> None:
    header, blobs, offset = {}, [], 0
    for name, array in tensors.items():
        array = np.ascontiguousarray(array)
        header[name] = {"dtype": _ST_CODES[array.dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + array.nbytes]}
        blobs.append(array.tobytes())  # this machine is little-endian, like the format
        offset += array.nbytes
    if metadata:
        header["__metadata__"] = metadata
    write_raw_safetensors(path, header, b"".join(blobs))


def test_safetensors_writer_matches_a_hand_built_file(tmp_path):
    # The writer above is itself checked against bytes spelled out by hand.
    write_safetensors(tmp_path / "a.safetensors", {"w": np.array([1.0, -2.0], np.float32)})
    header = b'{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}'
    header += b" " * (-len(header) % 8)
    expected = struct.pack("<Q", len(header)) + header + b"\x00\x00\x80\x3f\x00\x00\x00\xc0"
    assert (tmp_path / "a.safetensors").read_bytes() == expected


# --------------------------------------------------------------------------
# Tiny versions of every supported architecture, and their PyTorch twins.

CASES = {
    # WRN-10-2: block1 widens 16 -> 32, so it has a convShortcut; sub_block1 in the file.
    "wrn": ("wrn", {"depth": 10, "widen_factor": 2}, 10,
            lambda r: r.WideResNet(10, 2, 10)),
    "resnet18": ("resnet18", {"base_width": 8}, 10, lambda r: r.ResNet18(10, 8)),
    "resnet18_lbgat": ("resnet18_lbgat", {"base_width": 8}, 100,
                       lambda r: r.ResNet18(100, 8, strides=(1, 1, 2, 2), pool=8)),
    "preact_resnet18": ("preact_resnet18", {"base_width": 8}, 10,
                        lambda r: r.PreActResNet18(10, 8)),
    "preact_resnet18_plain": (
        "preact_resnet18", {"base_width": 8, "final_bn": False, "preact_shortcut": False}, 10,
        lambda r: r.PreActResNet18(10, 8, final_bn=False, preact_shortcut=False)),
    "small_cnn": ("small_cnn", {"channels": (4, 4, 8, 8), "hidden_dim": 16}, 10,
                  lambda r: r.SmallCNN(10, (4, 4, 8, 8), 16)),
}


def input_shape(arch):
    return (3, 28, 28, 1) if arch == "small_cnn" else (3, 32, 32, 3)


def images(shape, seed):
    return np.random.default_rng(seed).uniform(size=shape).astype(np.float32)


def torch_logits(torch, model, x_nhwc):
    with torch.no_grad():
        return model(torch.from_numpy(x_nhwc).permute(0, 3, 1, 2).contiguous()).numpy()


class Saved:
    """One randomised PyTorch model, its state_dict saved, and its logits on ``x``."""

    def __init__(self, case, directory):
        torch, refs = import_torch()
        self.arch, self.kwargs, self.num_classes, make = CASES[case]
        self.torch = torch
        self.model = refs.randomize(
            make(refs), torch.from_numpy(images(input_shape(self.arch), 1)).permute(0, 3, 1, 2)
            .repeat(3, 1, 1, 1).contiguous(), seed=list(CASES).index(case))
        self.state_dict = self.model.state_dict()
        self.x = images(input_shape(self.arch), 2)
        self.logits = torch_logits(torch, self.model, self.x)
        self.path = str(directory / f"{case}.pt")
        torch.save(self.state_dict, self.path)

    def load(self, path=None, **overrides):
        args = dict(kwargs=self.kwargs)
        args.update(overrides)
        return load_external_model(self.arch, path or self.path, self.num_classes, **args)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    directory = tmp_path_factory.mktemp("external")
    cache = {}

    def get(case):
        if case not in cache:
            cache[case] = Saved(case, directory)
        return cache[case]

    return get


@pytest.mark.parametrize("case", list(CASES))
def test_logits_match_pytorch(case, saved):
    s = saved(case)
    model = s.load()
    assert np.abs(s.logits).max() > 0.1  # a meaningful comparison, not ~0 vs ~0
    logits = jax.jit(model.apply_fn)(model.variables, s.x)
    np.testing.assert_allclose(np.asarray(logits), s.logits, rtol=1e-5, atol=1e-5)
    spec = model.spec
    assert json.loads(json.dumps(spec)) == spec
    assert spec["arch"] == s.arch and spec["num_classes"] == s.num_classes
    assert spec["normalization"] is None
    assert spec["source"]["format"] == "torch_zip"
    with open(s.path, "rb") as f:
        assert spec["source"]["sha256"] == hashlib.sha256(f.read()).hexdigest()
    # Exactly the PyTorch bookkeeping (and WRN's unused sub_block1) is left out.
    assert set(spec["source"]["ignored_tensors"]) == {
        k for k in s.state_dict
        if k.endswith("num_batches_tracked") or k.startswith("sub_block1.")}


def flat(variables):
    return {jax.tree_util.keystr(p): np.asarray(v)
            for p, v in jax.tree_util.tree_leaves_with_path(variables)}


def assert_same_variables(a, b):
    fa, fb = flat(a), flat(b)
    assert fa.keys() == fb.keys()
    for key in fa:
        np.testing.assert_array_equal(fa[key], fb[key], err_msg=key)


def strided_copy(torch, sd):
    """The same values through views: transposed, permuted, offset and shared storages."""
    out = collections.OrderedDict(sd)
    fc = sd["fc.weight"]
    out["fc.weight"] = fc.t().contiguous().t()  # stride (1, out)
    conv = sd["block2.layer.0.conv1.weight"]
    out["block2.layer.0.conv1.weight"] = conv.permute(2, 3, 1, 0).contiguous().permute(3, 2, 0, 1)
    w, b = sd["bn1.weight"], sd["bn1.bias"]
    shared = torch.cat([torch.zeros(5), w, b])  # one storage, two views at offsets 5 and 5 + C
    out["bn1.weight"], out["bn1.bias"] = shared[5:5 + len(w)], shared[5 + len(w):]
    mean = sd["block3.layer.0.bn2.running_mean"]
    out["block3.layer.0.bn2.running_mean"] = torch.stack([mean, -mean], 1)[:, 0]  # stride 2
    assert not out["fc.weight"].is_contiguous()
    assert out["block3.layer.0.bn2.running_mean"].stride() == (2,)
    return out


FILE_LAYOUTS = ["data_parallel", "wrapped_state_dict", "model_state_dict", "net", "legacy",
                "keep_vars", "strided", "safetensors", "legacy_strided"]


@pytest.mark.parametrize("layout", FILE_LAYOUTS)
def test_file_layouts_give_the_same_variables(layout, saved, tmp_path):
    s = saved("wrn")  # BN buffers, num_batches_tracked, sub_block1: the richest layout
    torch = s.torch
    reference = s.load().variables  # checked against PyTorch's logits above
    path = str(tmp_path / f"{layout}.bin")
    sd = s.state_dict
    if layout == "data_parallel":
        torch.save(torch.nn.DataParallel(s.model).state_dict(), path)
    elif layout == "wrapped_state_dict":
        # What training scripts save: weights plus epoch, a numpy metric, optimizer state.
        torch.save({"state_dict": sd, "epoch": 76, "best_acc": np.float64(0.5712),
                    "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]}},
                   path)
    elif layout == "model_state_dict":
        torch.save({"model_state_dict": collections.OrderedDict(
            ("module." + k, v) for k, v in sd.items()), "epoch": 3}, path)
    elif layout == "net":
        torch.save({"net": sd, "acc": 91.5}, path)
    elif layout == "legacy":
        torch.save(sd, path, _use_new_zipfile_serialization=False)
    elif layout == "keep_vars":  # Parameters rather than tensors
        torch.save(s.model.state_dict(keep_vars=True), path)
    elif layout == "strided":
        torch.save(strided_copy(torch, sd), path)
    elif layout == "legacy_strided":
        torch.save(strided_copy(torch, sd), path, _use_new_zipfile_serialization=False)
    elif layout == "safetensors":
        write_safetensors(path, {k: v.numpy() for k, v in sd.items()}, {"format": "pt"})
    model = s.load(path)
    assert_same_variables(model.variables, reference)
    expected_format = {"legacy": "torch_legacy", "legacy_strided": "torch_legacy",
                       "safetensors": "safetensors"}.get(layout, "torch_zip")
    assert model.spec["source"]["format"] == expected_format
    if layout in ("wrapped_state_dict", "model_state_dict", "net"):
        assert model.spec["source"]["wrapper_key"] == layout.replace("wrapped_", "")
    if layout in ("data_parallel", "model_state_dict"):
        assert model.spec["source"]["stripped_prefix"] == "module."


def test_unused_sub_block_can_be_loaded_into_the_model(saved):
    s = saved("wrn")
    model = s.load(kwargs={**s.kwargs, "include_unused_sub_block": True})
    sub = model.variables["params"]["sub_block1"]["layer_0"]
    np.testing.assert_array_equal(
        sub["conv1"]["kernel"],
        s.state_dict["sub_block1.layer.0.conv1.weight"].numpy().transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(
        model.variables["batch_stats"]["sub_block1"]["layer_0"]["bn2"]["var"],
        s.state_dict["sub_block1.layer.0.bn2.running_var"].numpy())
    assert not any(n.startswith("sub_block1.") and "num_batches" not in n
                   for n in model.spec["source"]["ignored_tensors"])


# --------------------------------------------------------------------------
# The reader on its own: dtypes, byte order, shapes.


@pytest.mark.parametrize("legacy", [False, True])
def test_reader_dtypes_and_shapes_match_torch(legacy, tmp_path):
    torch, _ = import_torch()
    gen = torch.Generator().manual_seed(0)
    values = collections.OrderedDict([
        ("f32", torch.randn(2, 3, generator=gen)),
        ("f64", torch.randn(4, generator=gen, dtype=torch.float64)),
        ("f16", torch.randn(3, generator=gen).half()),
        ("bf16", torch.randn(5, generator=gen).bfloat16()),
        ("i64", torch.tensor(123456789012, dtype=torch.int64)),  # 0-d
        ("i32", torch.tensor([-3, 4], dtype=torch.int32)),
        ("u8", torch.tensor([0, 255], dtype=torch.uint8)),
        ("u16", torch.tensor([1, 65535], dtype=torch.uint16)),  # an untyped storage (v3)
        ("bool", torch.tensor([True, False])),
        ("empty", torch.zeros(0, 3)),
        ("param", torch.nn.Parameter(torch.randn(2, generator=gen))),
    ])
    path = str(tmp_path / "dtypes.pt")
    torch.save(values, path, _use_new_zipfile_serialization=not legacy)
    obj, fmt = read_torch_file(path)
    assert fmt == ("torch_legacy" if legacy else "torch_zip")
    assert isinstance(obj, collections.OrderedDict) and list(obj) == list(values)
    for name, tensor in values.items():
        tensor = tensor.detach()
        expected = tensor.float().numpy() if tensor.dtype == torch.bfloat16 else tensor.numpy()
        assert obj[name].shape == tuple(tensor.shape), name
        np.testing.assert_array_equal(obj[name].astype(expected.dtype), expected, err_msg=name)
    assert obj["bf16"].dtype == ml_dtypes.bfloat16 and obj["u16"].dtype == np.uint16


def test_big_endian_archives_are_byte_swapped(tmp_path):
    torch, _ = import_torch()
    values = {"a": torch.tensor([1.5, -2.25, 3.0]), "b": torch.tensor([7, -8], dtype=torch.int64),
              "c": torch.tensor([0.5, 2.0]).bfloat16()}
    little = str(tmp_path / "little.pt")
    torch.save(values, little)
    itemsize = {"0": 4, "1": 8, "2": 2}  # storages are numbered in order of appearance
    big = str(tmp_path / "big.pt")
    with zipfile.ZipFile(little) as src, zipfile.ZipFile(big, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            root, _, rest = info.filename.partition("/")
            if rest == "byteorder":
                assert data == b"little"
                data = b"big"
            elif rest.startswith("data/"):
                k = itemsize[rest[5:]]
                data = b"".join(data[i:i + k][::-1] for i in range(0, len(data), k))
            dst.writestr(info, data)
    obj, _ = read_torch_file(big)
    np.testing.assert_array_equal(obj["a"], [1.5, -2.25, 3.0])
    np.testing.assert_array_equal(obj["b"], [7, -8])
    np.testing.assert_array_equal(obj["c"].astype(np.float32), [0.5, 2.0])


# --------------------------------------------------------------------------
# Safety: pickled code is refused, never run.


class RunsCode:
    """Unpickling this runs ``callable(*args)``: the classic malicious pickle."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def zip_checkpoint(path, payload: bytes) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", payload)
        archive.writestr("archive/byteorder", "little")
        archive.writestr("archive/version", "3\n")


def legacy_checkpoint(path, payload: bytes) -> None:
    with open(path, "wb") as f:
        for header in (0x1950A86A20F9469CFC6C, 1001,
                       {"protocol_version": 1001, "little_endian": True}):
            pickle.dump(header, f, protocol=2)
        f.write(payload)
        pickle.dump([], f, protocol=2)


@pytest.mark.parametrize("container", ["zip", "legacy"])
@pytest.mark.parametrize("attack", ["os.system", "eval"])
def test_malicious_pickles_are_refused_without_running(container, attack, tmp_path):
    marker = tmp_path / "pwned"
    if attack == "os.system":
        evil, name = RunsCode(os.system, f"touch {marker}"), rf"{os.system.__module__}\.system"
    else:
        # Protocol 2 spells builtins with their Python 2 module name.
        evil, name = RunsCode(eval, f"open({str(marker)!r}, 'w').close()"), r"__builtin__\.eval"
    payload = pickle.dumps(collections.OrderedDict(
        [("conv1.weight", 1.0), ("fc.bias", evil)]), protocol=2)
    path = tmp_path / "evil.pt"
    (zip_checkpoint if container == "zip" else legacy_checkpoint)(path, payload)
    with pytest.raises(ForbiddenGlobalError, match=f"refusing to unpickle the global {name}"):
        load_external_model("small_cnn", str(path), 10)
    assert not marker.exists()


def test_a_pickled_module_is_refused_by_its_class_name(tmp_path):
    torch, refs = import_torch()
    path = str(tmp_path / "whole_model.pt")
    torch.save(refs.SmallCNN(10, (2, 2, 2, 2), 4), path)  # torch.save(model), not state_dict
    with pytest.raises(ForbiddenGlobalError, match=r"torch_reference_models\.SmallCNN.*"
                                                   r"state_dict"):
        read_torch_file(path)


def test_torchscript_archives_are_refused(tmp_path):
    torch, refs = import_torch()
    path = str(tmp_path / "scripted.pt")
    torch.jit.save(torch.jit.script(refs.SmallCNN(10, (2, 2, 2, 2), 4)), path)
    with pytest.raises(ExternalCheckpointError, match="TorchScript"):
        read_torch_file(path)


# --------------------------------------------------------------------------
# Files that do not fit, or are damaged.


def random_state_dict(arch, kwargs, num_classes=10, seed=0):
    """A PyTorch-layout state_dict for ``arch`` built from the layout itself (no torch)."""
    shapes = _variable_shapes(build_model(arch, num_classes, **kwargs), arch)
    rng = np.random.default_rng(seed)
    tensors = {name: rng.uniform(0.5, 1.5, t.torch_shape).astype(np.float32)
               for name, t in layouts.torch_layout(arch, shapes).items()}
    for name in list(tensors):
        if name.endswith("running_var"):
            tensors[name.replace("running_var", "num_batches_tracked")] = np.array(3, np.int64)
    return tensors


SMALL = {"channels": (2, 2, 4, 4), "hidden_dim": 6}


@pytest.mark.parametrize("damage,pattern", [
    ("missing", r"missing tensors: classifier\.fc2\.bias \(6,\)"),
    ("unexpected", r"unexpected tensors: classifier\.fc4\.weight \(3, 6\)"),
    ("misshaped", r"misshaped tensors: feature_extractor\.conv3\.weight expected "
                  r"\(4, 2, 3, 3\), found \(4, 2, 5, 5\)"),
    ("num_classes", r"classifier\.fc3\.weight expected \(10, 6\), found \(7, 6\).*num_classes"),
    ("integer", r"classifier\.fc1\.bias has dtype int32"),
    ("nan", r"classifier\.fc1\.weight has non-finite values"),
])
def test_misfit_tensors_are_refused_by_name(damage, pattern, tmp_path):
    tensors = random_state_dict("small_cnn", SMALL)
    if damage == "missing":
        del tensors["classifier.fc2.bias"]
    elif damage == "unexpected":
        tensors["classifier.fc4.weight"] = np.zeros((3, 6), np.float32)
    elif damage == "misshaped":
        tensors["feature_extractor.conv3.weight"] = np.zeros((4, 2, 5, 5), np.float32)
    elif damage == "num_classes":
        tensors.update(random_state_dict("small_cnn", SMALL, num_classes=7))
    elif damage == "integer":
        tensors["classifier.fc1.bias"] = tensors["classifier.fc1.bias"].astype(np.int32)
    elif damage == "nan":
        tensors["classifier.fc1.weight"][0, 0] = np.nan
    path = str(tmp_path / "damaged.safetensors")
    write_safetensors(path, tensors)
    with pytest.raises(ExternalCheckpointError, match=pattern):
        load_external_model("small_cnn", path, 10, kwargs=SMALL)


def test_final_bn_mismatch_gets_a_hint(tmp_path):
    small = {"base_width": 2}
    path = str(tmp_path / "plain.safetensors")
    write_safetensors(path, random_state_dict("preact_resnet18", {**small, "final_bn": False}))
    with pytest.raises(ExternalCheckpointError,
                       match=r"missing tensors: bn\.bias \(16,\), bn\.weight.*final_bn=False"):
        load_external_model("preact_resnet18", path, 10, kwargs=small)
    model = load_external_model("preact_resnet18", path, 10,
                                kwargs={**small, "final_bn": False, "preact_shortcut": False})
    assert "bn" not in model.variables["params"]


def test_truncated_files_give_a_clear_error(saved, tmp_path):
    s = saved("small_cnn")
    legacy = str(tmp_path / "legacy.pt")
    s.torch.save(s.state_dict, legacy, _use_new_zipfile_serialization=False)
    tensors = {k: v.numpy() for k, v in s.state_dict.items()}
    safe = str(tmp_path / "model.safetensors")
    write_safetensors(safe, tensors)
    for source, pattern in ((s.path, "truncated"), (legacy, "truncated"), (safe, "truncated")):
        data = open(source, "rb").read()
        for cut in (len(data) // 2, len(data) - 3):
            path = str(tmp_path / f"cut_{cut}_{os.path.basename(source)}")
            with open(path, "wb") as f:
                f.write(data[:cut])
            with pytest.raises(ExternalCheckpointError, match=pattern):
                s.load(path)


@pytest.mark.parametrize("entry,buffer,pattern", [
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, 8, "overlaps"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, 8, "leaves a hole"),
    ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, 8, "needs 12 bytes"),
    ({"a": {"dtype": "Q7", "shape": [2], "data_offsets": [0, 8]}}, 8, "dtype must be one of"),
    ({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, 8, "shape must be"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, 12, "cover 8 bytes of a 12"),
    ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, 8, "truncated"),
    ({"a": {"dtype": "F32", "shape": [2]}}, 8, "exactly dtype, shape, data_offsets"),
])
def test_safetensors_headers_are_validated(entry, buffer, pattern, tmp_path):
    path = str(tmp_path / "bad.safetensors")
    write_raw_safetensors(path, entry, bytes(buffer))
    with pytest.raises(ExternalCheckpointError, match=pattern):
        read_safetensors(path)


def test_safetensors_header_length_beyond_the_file(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", 10**6) + b'{"a": 1}')
    with pytest.raises(ExternalCheckpointError, match="header length"):
        read_safetensors(str(path))


def test_safetensors_round_trip_of_dtypes(tmp_path):
    tensors = {"f": np.arange(6, dtype=np.float32).reshape(2, 3),
               "h": np.array([1.5, -2], np.float16),
               "bf": np.array([0.25, 8], ml_dtypes.bfloat16),
               "i": np.array([-(2**40)], np.int64), "z": np.zeros((0, 2), np.float32)}
    path = str(tmp_path / "t.safetensors")
    write_safetensors(path, tensors, {"who": "test"})
    out, metadata = read_safetensors(path)
    assert metadata == {"who": "test"} and out.keys() == tensors.keys()
    for k, v in tensors.items():
        assert out[k].dtype == v.dtype and out[k].shape == v.shape
        np.testing.assert_array_equal(out[k], v)


# --------------------------------------------------------------------------
# Normalisation: part of the model spec, applied inside apply_fn.

CIFAR_LIKE = {"mean": [0.4914], "std": [0.2471]}


def test_normalization_argument_matches_a_normalizing_torch_model(saved, tmp_path):
    torch, refs = import_torch()
    s = saved("small_cnn")
    wrapped = refs.with_normalization(refs.SmallCNN, CIFAR_LIKE["mean"], CIFAR_LIKE["std"],
                                      num_classes=10, channels=(4, 4, 8, 8), hidden=16)
    wrapped.load_state_dict({**s.state_dict, "mu": wrapped.mu, "sigma": wrapped.sigma})
    wrapped.eval()
    expected = torch_logits(torch, wrapped, s.x)
    assert not np.allclose(expected, s.logits, atol=1e-3)  # the normalisation matters
    model = s.load(normalization=CIFAR_LIKE)  # the file has no mu/sigma
    np.testing.assert_allclose(jax.jit(model.apply_fn)(model.variables, s.x), expected,
                               rtol=1e-5, atol=1e-5)
    assert model.spec["normalization"] == CIFAR_LIKE

    # RobustBench-style files carry mu/sigma: used when no normalisation is given.
    path = str(tmp_path / "with_buffers.pt")
    torch.save(wrapped.state_dict(), path)
    from_file = s.load(path)
    for key in ("mean", "std"):
        np.testing.assert_allclose(from_file.spec["normalization"][key], CIFAR_LIKE[key],
                                   rtol=1e-6)
    np.testing.assert_allclose(jax.jit(from_file.apply_fn)(from_file.variables, s.x), expected,
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="differs from the mu/sigma buffers"):
        s.load(path, normalization={"mean": [0.5], "std": [0.5]})


@pytest.mark.parametrize("value", [
    {"mean": [0.5, 0.5, 0.5]}, {"mean": [0.5], "std": [0.0]}, {"mean": [0.5], "std": [1, 2]},
    {"mean": ["a"], "std": [1]}, [0.5, 0.5], {"mean": [0.5, 0.4], "std": [0.2, 0.2]},
])
def test_bad_normalization_is_refused(value, tmp_path):
    path = str(tmp_path / "m.safetensors")
    write_safetensors(path, random_state_dict("small_cnn", SMALL))
    with pytest.raises(ValueError, match="normalization"):
        load_external_model("small_cnn", path, 10, normalization=value, kwargs=SMALL)


def test_parse_normalization():
    assert parse_normalization("none") is None and parse_normalization("") is None
    assert parse_normalization('{"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.2]}') == {
        "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.2]}
    with pytest.raises(ValueError, match="normalization must be 'none' or JSON"):
        parse_normalization("cifar10")


# --------------------------------------------------------------------------
# Argument validation.


def test_unknown_arch_format_and_file_type(tmp_path):
    path = str(tmp_path / "m.safetensors")
    write_safetensors(path, random_state_dict("small_cnn", SMALL))
    with pytest.raises(ValueError, match="arch must be one of .*preact_resnet18"):
        load_external_model("wrn28", path, 10)
    with pytest.raises(ValueError, match="file_format must be one of auto, torch_zip"):
        load_external_model("small_cnn", path, 10, file_format="onnx")
    with pytest.raises(ValueError, match="cannot be loaded from a safetensors file; valid archs: "
                                         "wrn, resnet18_lbgat"):
        load_external_model("lenet", path, 10)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ExternalCheckpointError, match="unrecognised checkpoint format.*valid "
                                                      "formats: torch_zip, torch_legacy"):
        load_external_model("small_cnn", str(junk), 10)
    with pytest.raises(FileNotFoundError):
        load_external_model("small_cnn", str(tmp_path / "absent.pt"), 10)
    with pytest.raises(ValueError, match="which must be one of"):
        load_external_model("small_cnn", path, 10, which="teacher")


def test_torch_file_holding_something_else_is_refused(tmp_path):
    path = tmp_path / "list.pt"
    zip_checkpoint(path, pickle.dumps([1, 2, 3], protocol=2))
    with pytest.raises(ExternalCheckpointError, match="holds a list, not a state_dict"):
        load_external_model("small_cnn", str(path), 10)
    zip_checkpoint(path, pickle.dumps({"epoch": 3, "acc": 0.5}, protocol=2))
    with pytest.raises(ExternalCheckpointError, match="'epoch': int"):
        load_external_model("small_cnn", str(path), 10)


# --------------------------------------------------------------------------
# Paper-size layouts, by names and shapes (PyTorch modules on the meta device).

PAPER_SIZES = {
    "wrn_34_10": ("wrn", {}, 10, lambda r: r.WideResNet(34, 10, 10)),
    "wrn_34_20_c100": ("wrn", {"widen_factor": 20}, 100, lambda r: r.WideResNet(34, 20, 100)),
    "wrn_34_10_with_sub_block": ("wrn", {"include_unused_sub_block": True}, 10,
                                 lambda r: r.WideResNet(34, 10, 10)),
    "resnet18": ("resnet18", {}, 10, lambda r: r.ResNet18(10)),
    "resnet18_lbgat": ("resnet18_lbgat", {}, 100,
                       lambda r: r.ResNet18(100, strides=(1, 1, 2, 2), pool=8)),
    "preact_resnet18": ("preact_resnet18", {}, 10, lambda r: r.PreActResNet18(10)),
    "preact_resnet18_plain": ("preact_resnet18", {"final_bn": False}, 10,
                              lambda r: r.PreActResNet18(10, final_bn=False)),
    "small_cnn": ("small_cnn", {}, 10, lambda r: r.SmallCNN(10)),
}


@pytest.mark.parametrize("case", list(PAPER_SIZES))
def test_paper_size_layouts_match_pytorch_names_and_shapes(case):
    torch, refs = import_torch()
    arch, kwargs, classes, make = PAPER_SIZES[case]
    with torch.device("meta"):
        file_shapes = {k: tuple(v.shape) for k, v in make(refs).state_dict().items()}
    layout = layouts.torch_layout(arch, _variable_shapes(build_model(arch, classes, **kwargs),
                                                         arch))
    assert set(layout) <= set(file_shapes)
    assert {k: t.torch_shape for k, t in layout.items()} == {k: file_shapes[k] for k in layout}
    leftovers = set(file_shapes) - set(layout)
    expected = {n for n in file_shapes if n.endswith("num_batches_tracked")}
    if arch == "wrn" and not kwargs.get("include_unused_sub_block"):
        expected |= {n for n in file_shapes if n.startswith("sub_block1.")}
    assert leftovers == expected
    assert all(layouts.is_ignorable(arch, name, layout) for name in leftovers)


def test_preact_resnet18_parameter_counts():
    def conv(cin, cout, k):
        return cin * cout * k * k

    def count(final_bn):
        total, cin = conv(3, 64, 3), 64
        for width, stride in zip((64, 128, 256, 512), (1, 2, 2, 2)):
            for i in range(2):
                c = cin if i == 0 else width
                total += 2 * c + conv(c, width, 3) + 2 * width + conv(width, width, 3)
                if (stride if i == 0 else 1) != 1 or c != width:
                    total += conv(c, width, 1)
            cin = width
        return total + (2 * 512 if final_bn else 0) + 512 * 10 + 10

    for final_bn in (True, False):
        model = build_model("preact_resnet18", 10, final_bn=final_bn)
        variables = _variable_shapes(model, "preact_resnet18")
        assert count_params(variables["params"]) == count(final_bn)
    assert count(False) == 11_171_146  # RobustBench PreActResNet18(), as torch reports it
    with pytest.raises(ValueError, match="final_bn must be a bool"):
        build_model("preact_resnet18", 10, final_bn="yes")


# --------------------------------------------------------------------------
# Runs of this library (orbax).


def test_orbax_run_loads_through_the_same_entry_point(tmp_path):
    from advcore import checkpoint, run_spec

    model = build_model("small_cnn", 10, **SMALL)
    variables = jax.tree.map(np.asarray, dict(jax.jit(
        lambda k: model.init(k, np.zeros((1, 28, 28, 1), np.float32), train=False)
    )(jax.random.key(3))))
    config = {"model": {"robust": {"name": "small_cnn", "kwargs": SMALL}},
              "dataset": {"name": "mnist"}, "method": "trades"}
    spec = run_spec.run_spec(
        method="trades", dataset={"name": "mnist"}, default_model="robust",
        models={"robust": run_spec.model_spec("small_cnn", 10, kwargs=SMALL)},
        threat_model={"norm": "linf", "eps": 0.3, "attacks": ["pgd40"]})
    saver = checkpoint.Checkpointer(str(tmp_path / "run" / "checkpoints"), config,
                                    run_spec=spec)
    saver.save(7, {"robust": variables})
    saver.close()
    for path in (tmp_path / "run", tmp_path / "run" / "checkpoints"):
        loaded = load_external_model("small_cnn", str(path), 10)
        assert_same_variables(loaded.variables, variables)
        source = loaded.spec["source"]
        assert source["format"] == "orbax" and source["step"] == 7
        assert source["sha256"] == checkpoint.load_raw_state(str(tmp_path / "run"))[2]["digest"]
        assert loaded.spec["kwargs"] == {"channels": [2, 2, 4, 4], "hidden_dim": 6}
    with pytest.raises(ValueError, match="arch must be the run's model 'small_cnn'"):
        load_external_model("lenet", str(tmp_path / "run"), 10)
    with pytest.raises(ValueError, match="num_classes must be 10"):
        load_external_model("small_cnn", str(tmp_path / "run"), 100)
