"""What every command line of the library shares.

* ``define_common_flags``: ``--debug``, the persistent compilation cache
  (``--compilation_cache_dir``, ``--nocompilation_cache``), simulated CPU
  devices (``--cpu_devices``) and the multi-host flags.
* ``setup(process_name)``: called first in ``main``: XLA:CPU settings,
  ``jax.distributed``, INFO logging on process 0 only (WARNING elsewhere),
  the compilation cache, and one log line with backend, devices and processes.
* ``run(main)``: ``absl.app.run`` whose user errors (a bad config value, a
  missing or damaged checkpoint, unavailable data, a full disk, NaN, a signal)
  end in **one line** on stderr and a documented exit code, without a
  traceback; ``--debug`` shows the traceback.

Exit codes: 0 success; 1 an error (the line says which); 3 the loss became
non-finite; 130 SIGINT; 143 SIGTERM (both after saving the current step).

The compilation cache: JAX stores compiled programs on disk, keyed by the
program and the backend, so a resumed run or a second evaluation of the same
model skips recompilation. Default directory ``$ADVCORE_CACHE_DIR/jax_compilation``
(``~/.cache/advcore/jax_compilation``).
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import threading
import warnings
from typing import Callable

import jax
from absl import app, flags
from absl import logging as absl_logging

from advcore import backend, config_files, parallel
from advcore.checkpoint import CheckpointCorruptError, CheckpointMismatchError
from advcore.data import DataIntegrityError, DatasetUnavailableError
from advcore.train_loop import NonFiniteLossError, TrainingInterrupted

FLAGS = flags.FLAGS

EXIT_ERROR = 1

_DEBUG = flags.DEFINE_bool("debug", False, "Show the full traceback of an error.")
_CACHE = flags.DEFINE_bool(
    "compilation_cache", True, "Keep compiled XLA programs on disk (JAX's persistent "
    "compilation cache), so a resumed run or a repeated evaluation skips recompiling.")
_CACHE_DIR = flags.DEFINE_string(
    "compilation_cache_dir", "", "Where the compilation cache lives (default: "
    "$ADVCORE_CACHE_DIR/jax_compilation, i.e. ~/.cache/advcore/jax_compilation).")
_CPU_DEVICES = flags.DEFINE_integer(
    "cpu_devices", 0, "On a CPU: simulate this many devices (0 = JAX's default of 1). One "
    "per core makes attacks with data-dependent cost (AutoAttack) about twice as fast.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", "", "Multi-host: host:port of "
                                   "process 0 (or JAX_COORDINATOR_ADDRESS).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 0, "Multi-host: number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", -1, "Multi-host: this process's index.")

log = logging.getLogger("advcore")


def cache_dir() -> str:
    if _CACHE_DIR.value:
        return os.path.abspath(os.path.expanduser(_CACHE_DIR.value))
    base = os.environ.get("ADVCORE_CACHE_DIR", os.path.join("~", ".cache", "advcore"))
    return os.path.join(os.path.abspath(os.path.expanduser(base)), "jax_compilation")


class _ClosedLoopFilter:
    """``sys.stderr`` minus orbax's "Event loop is closed" tracebacks.

    After a failed save or read (a full disk, a damaged file), tensorstore
    callbacks in orbax's worker threads try to reach an asyncio loop that is
    already closed, and Python prints each such error as a traceback on
    ``sys.stderr``, around the one line that states the real error. This
    stream holds back a traceback until its last line and drops it when that
    line is ``RuntimeError: Event loop is closed``; everything else passes.
    The library's own one-line reports (``error: ...``, ``stopped: ...``)
    always pass at once, even while such a block is open, and a block still
    open when the process ends (``discard_unfinished``) is dropped if it is
    one of these tracebacks.
    """

    OWN_LINES = ("error: ", "stopped: ")
    CLOSED_LOOP = "RuntimeError: Event loop is closed"
    CLOSED_LOOP_FRAMES = ("call_soon_threadsafe", "_check_closed")

    def __init__(self, stream):
        self._stream = stream
        self._lock = threading.Lock()
        self._pending: list[str] = []
        self._partial = ""
        self._open = 0

    def write(self, text: str) -> int:
        with self._lock:
            self._partial += text
            *lines, self._partial = self._partial.split("\n")
            for line in lines:
                self._line(line + "\n")
        return len(text)

    def _line(self, line: str) -> None:
        if line.startswith(self.OWN_LINES):
            self._stream.write(line)
            return
        # Several threads may print at once, so their tracebacks interleave:
        # count the open ones and judge the whole block when all are closed.
        if line.startswith("Traceback (most recent call last)"):
            self._open += 1
        elif not self._pending:
            self._stream.write(line)
            return
        elif not line.startswith((" ", "\t")):
            self._open -= 1
        self._pending.append(line)
        if self._open == 0:
            block, self._pending = self._pending, []
            if not self._closed_loop_only(block):
                self._stream.write("".join(block))

    def _closed_loop_only(self, block: list[str]) -> bool:
        finals = [x for x in block if not x.startswith((" ", "\t", "Traceback"))]
        if finals:
            return all(x.startswith(self.CLOSED_LOOP) for x in finals)
        # Cut off before its last line: judge it by the frames it shows.
        return any(frame in x for x in block for frame in self.CLOSED_LOOP_FRAMES)

    def discard_unfinished(self) -> None:
        """At exit: write a block still open unless it is a closed-loop traceback."""
        with self._lock:
            block, self._pending, self._open = self._pending, [], 0
            if block and not self._closed_loop_only(block):
                self._stream.write("".join(block))

    def flush(self) -> None:
        with self._lock:
            self._stream.flush()

    def __getattr__(self, name):
        return getattr(self._stream, name)


def setup(name: str) -> None:
    """Process-wide setup; must run before the first JAX operation (the XLA:CPU
    settings and the distributed runtime must precede the backend's start)."""
    if _CPU_DEVICES.value < 0:
        raise app.UsageError(f"--cpu_devices must be >= 0, got {_CPU_DEVICES.value}")
    # Orbax, tfds and JAX's backend discovery log every file operation or
    # missing plugin at INFO: keep the console for what the run does.
    for noisy in ("absl", "orbax", "tensorflow_datasets", "jax._src"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    if not _DEBUG.value and not isinstance(sys.stderr, _ClosedLoopFilter):
        sys.stderr = _ClosedLoopFilter(sys.stderr)
    backend.configure_cpu(_CPU_DEVICES.value or None)
    parallel.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    main_process = jax.process_index() == 0
    # absl's verbosity governs every library that logs through absl: orbax
    # logs each file operation at INFO and a failed background save as a
    # traceback at ERROR, which the one-line error report already covers.
    # --debug shows all of it. The library's own logger speaks at INFO on
    # process 0 only.
    absl_logging.set_verbosity(absl_logging.INFO if _DEBUG.value else absl_logging.FATAL)
    logging.getLogger("advcore").setLevel(logging.INFO if main_process else logging.WARNING)
    if _CACHE.value:
        jax.config.update("jax_compilation_cache_dir", cache_dir())
        # Evaluation programs compile in about 1 s: keep those too.
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    log.info("%s: backend %s, %d devices (%d local), %d process(es); compilation cache %s",
             name, jax.default_backend(), jax.device_count(), jax.local_device_count(),
             jax.process_count(), cache_dir() if _CACHE.value else "off")


USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
               PermissionError, CheckpointMismatchError, CheckpointCorruptError,
               DatasetUnavailableError, DataIntegrityError, app.UsageError)


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text or type(err).__name__


def _disk_full(err: BaseException) -> bool:
    while err is not None:
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False


def _exit(code: int) -> None:
    """Ends the process now. A failed orbax read leaves futures in its worker
    threads, which would print 'Event loop is closed' tracebacks during a
    normal interpreter shutdown; every save was already waited for."""
    sys.stdout.flush()
    if isinstance(sys.stderr, _ClosedLoopFilter):
        sys.stderr.discard_unfinished()
    sys.stderr.flush()
    os._exit(code)


def report_errors(main: Callable[[list[str]], None]) -> Callable[[list[str]], None]:
    """Wraps an absl ``main`` so user errors end in one line and an exit code."""

    def wrapped(argv: list[str]) -> None:
        try:
            main(argv)
        except (NonFiniteLossError, TrainingInterrupted) as err:
            if _DEBUG.value:
                raise
            print(f"stopped: {_one_line(err)}", file=sys.stderr)
            _exit(err.exit_code)
        except Exception as err:  # noqa: BLE001 - classified below
            if _DEBUG.value:
                raise
            if _disk_full(err):
                print("error: no space left on device; the previous checkpoint is kept "
                      f"({_one_line(err)[:200]})", file=sys.stderr)
                _exit(EXIT_ERROR)
            if isinstance(err, USER_ERRORS) or (isinstance(err, OSError) and err.errno):
                print(f"error: {_one_line(err)}", file=sys.stderr)
                _exit(EXIT_ERROR)
            raise

    return wrapped


def run(main: Callable[[list[str]], None]) -> None:
    """``absl.app.run(main)`` with one-line user errors (module docstring).

    ``--config`` names are resolved first (``advcore.config_files``), so a
    config can be named ``lbgat/mnist.py:smoke`` from any directory.
    """
    try:
        sys.argv = config_files.resolve_argv(sys.argv)
    except FileNotFoundError as err:
        print(f"error: {_one_line(err)}", file=sys.stderr)
        sys.exit(EXIT_ERROR)
    _show_flags_in_help(main.__module__)
    app.run(report_errors(main))


def _show_flags_in_help(module_name: str) -> None:
    """Make ``--help`` list the flags of ``module_name`` and the shared ones.

    absl's ``--help`` lists the key flags of the module named by ``sys.argv[0]``:
    for a console script that is pip's wrapper, which defines none.
    """
    by_module = FLAGS.flags_by_module_dict()
    for name in (module_name, __name__):
        for flag in by_module.get(name, ()):
            FLAGS.register_key_flag_for_module(sys.argv[0], flag)
