"""The error a user can cause when choosing a model (a leaf module, so every model module can import it)."""
from __future__ import annotations

from faceutil.errors import FaceUtilError


class ModelConfigError(FaceUtilError, ValueError):
    """A model option a user can get wrong (unknown model / encoder / attention name, bad width); one sentence."""
