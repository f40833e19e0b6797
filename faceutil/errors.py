"""Errors a user can cause in faceutil: each carries one clear sentence naming the file or value at fault.

Programming errors (wrong shapes passed by our own code) raise ordinary Python exceptions instead.
"""


class FaceUtilError(Exception):
    """A problem with user-supplied data or paths; ``str(err)`` is a one-sentence explanation."""


class SampleError(FaceUtilError):
    """One dataset sample cannot be used (unreadable image, malformed .mat, absurd parameters, ...)."""
