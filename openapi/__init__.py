"""Tools that hold the app to the Wrenn API 0.2.0 contract (``wrenn-openapi-0.2.0.yaml`` beside this file).

* :mod:`openapi.spec` — load the spec, list its operations, map concrete URLs back to templates.
* :mod:`openapi.coverage` — ``python -m openapi.coverage``: which spec operations the app routes.
* :mod:`openapi.conformance` — check responses (status documented, body validates) from tests.
"""
