"""The HTTP service over a built index: the Flask app and its routes, admission control, slow-client
protection, Prometheus metrics, the browser page and the OpenAPI document.

Thin on purpose: each route parses its request, calls :mod:`service.query` (or the training side of
:mod:`service.stats`) and serialises the answer. ``python -m service`` starts it.
"""
