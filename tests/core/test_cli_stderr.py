"""The stderr filter of ``advcore.cli``: orbax's closed-loop tracebacks go, everything else stays."""

import io

from advcore.cli import _ClosedLoopFilter

CLOSED = [
    "Traceback (most recent call last):\n",
    '  File "asyncio/base_events.py", line 806, in call_soon_threadsafe\n',
    "    self._check_closed()\n",
    '  File "asyncio/base_events.py", line 519, in _check_closed\n',
    "    raise RuntimeError('Event loop is closed')\n",
    "RuntimeError: Event loop is closed\n",
]


def _filtered(lines, finish=True):
    out = io.StringIO()
    f = _ClosedLoopFilter(out)
    for line in lines:
        f.write(line)
    if finish:
        f.discard_unfinished()
    return out.getvalue()


def test_closed_loop_traceback_is_dropped_and_others_kept():
    assert _filtered(CLOSED + ["plain line\n"]) == "plain line\n"
    other = ["Traceback (most recent call last):\n", '  File "x.py", line 1, in f\n',
             "ValueError: bad\n"]
    assert _filtered(other) == "".join(other)


def test_interleaved_tracebacks_cut_off_by_the_one_line_error():
    # Two worker threads print at once and the process reports its error
    # before the second traceback is complete (seen on a full disk).
    lines = [CLOSED[0], CLOSED[1], CLOSED[0], CLOSED[1], *CLOSED[2:],
             "error: no space left on device; the previous checkpoint is kept\n"]
    assert _filtered(lines) == "error: no space left on device; the previous checkpoint is kept\n"


def test_an_unfinished_foreign_traceback_is_still_shown_at_exit():
    lines = ["Traceback (most recent call last):\n", '  File "x.py", line 1, in f\n']
    assert _filtered(lines) == "".join(lines)
    assert _filtered(lines, finish=False) == ""  # held back until judged
