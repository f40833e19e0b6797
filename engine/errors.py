"""User-facing failures of a run (NaN loss, unusable checkpoint, model mismatch) — one sentence each.

torchrun.py turns these into one line on stderr and a non-zero exit code, never a traceback.
"""


class RunError(Exception):
    """A run cannot continue for a reason the user can act on; ``str(err)`` is one clear sentence."""
