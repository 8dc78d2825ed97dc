"""`colrag models ...`: export, verify, list."""

from __future__ import annotations

from ..cli import models_app  # noqa: F401
