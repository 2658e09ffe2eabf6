"""Metric logging: JSON lines in the workdir, optional TensorBoard.

One line per ``write`` call: ``{"step": int, "time": float, <name>: value, ...}``.
Only process 0 writes, so multi-host runs log once. TensorBoard goes through
``tensorboardX`` (no TensorFlow) and is used only when it is installed and
asked for.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from typing import Any, Iterator, Mapping, Optional

import jax
import numpy as np


def _to_python(value: Any) -> Any:
    if isinstance(value, (jax.Array, np.ndarray, np.generic)):
        value = np.asarray(value)
        return value.item() if value.ndim == 0 else value.tolist()
    return value


class MetricWriter:
    """Appends scalar metrics to ``<workdir>/metrics.jsonl``."""

    def __init__(
        self,
        workdir: str,
        filename: str = "metrics.jsonl",
        tensorboard: bool = False,
        enabled: Optional[bool] = None,
    ):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.path = os.path.join(workdir, filename)
        self._tb = None
        self._first_write = True
        if not self.enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter
            except ImportError as err:  # pragma: no cover - optional dependency
                raise ImportError(
                    "tensorboard=True needs `pip install tensorboardX`"
                ) from err
            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), "time": time.time()}
        for name, value in metrics.items():
            value = _to_python(value)
            if isinstance(value, float) and not math.isfinite(value):
                value = str(value)  # JSON has no NaN/Inf literal
            record[name] = value
        with open(self.path, "a") as f:
            if self._first_write and f.tell() > 0 and not self._ends_with_newline():
                # A run killed mid-write left a cut-off last line; start the
                # resumed run's records on a line of their own.
                f.write("\n")
            self._first_write = False
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for name, value in record.items():
                if name not in ("step", "time") and isinstance(value, (int, float)):
                    self._tb.add_scalar(name, value, step)

    def truncate_after(self, step: int) -> None:
        """Drops the records logged after ``step`` (atomically).

        A run resumed from its step-``step`` checkpoint logs the later steps
        again, with the same values; keeping the killed run's records as well
        would count those steps twice.
        """
        if not self.enabled or not os.path.exists(self.path):
            return
        records = list(read_metrics(self.path))
        kept = [r for r in records if int(r.get("step", 0)) <= step]
        if len(kept) == len(records):
            return
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)
        os.replace(tmp, self.path)

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: str) -> Iterator[dict]:
    """Yields the records of a ``metrics.jsonl`` file.

    A run killed mid-write leaves a cut-off line. It is skipped with a warning
    naming the file and line, so that curves and timings of a killed and
    resumed run can still be read; every whole record is kept.
    """
    with open(path) as f:
        for number, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if not isinstance(record, dict):
                warnings.warn(f"{path}:{number}: skipping a line that is not a whole "
                              f"JSON record (cut off by a kill?): {line[:60]!r}")
                continue
            yield record
