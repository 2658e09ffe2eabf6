"""The error every reader and layout check in ``advcore.external`` raises."""

from __future__ import annotations


class ExternalCheckpointError(ValueError):
    """A checkpoint file cannot be read safely, or does not fit the model.

    A ``ValueError`` so that callers treating bad input uniformly catch it; the
    message names the file, and where one is at fault, the tensor or the
    pickled global.
    """


class ForbiddenGlobalError(ExternalCheckpointError):
    """A pickle names a global that a state_dict never needs (e.g. ``os.system``)."""
