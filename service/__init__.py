"""facemem's HTTP service: ``POST /neighbors`` and friends (see README, "Service").

``create_app`` is imported lazily so that face-detection worker processes, which import
``service.detect``, do not pay for Flask, torch or FAISS.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from flask import Flask

__all__ = ["__version__", "create_app"]

__version__ = "0.1.0"  # the facemem project version (pyproject.toml reads it); the API version is in openapi.json


def create_app(index_dir: Any, config: dict | None = None) -> Flask:
    """The app factory: loads the index once, read-only; ``config`` keys are in ``service.http.app.DEFAULTS``."""
    from .http.app import create_app as _create_app

    return _create_app(index_dir, config)
