"""Export of trained policies to ONNX, and an HTTP server that answers with them.

| module | what | needs torch |
|---|---|---|
| :mod:`~mecrl.serving.export` | a run directory to a bundle | yes |
| :mod:`~mecrl.serving.bundle` | reading and checking a bundle | no |
| :mod:`~mecrl.serving.decide` | decisions from a reported state | no |
| :mod:`~mecrl.serving.schema` | the request and answer formats | no |
| :mod:`~mecrl.serving.server` | the FastAPI application | no |
| :mod:`~mecrl.serving.orchestrate` | an episode driven over HTTP | no |
| :mod:`~mecrl.serving.bench` | latency and batch figures | no |

A bundle is a folder: ``model.onnx`` (observation and action mask in, action
out), ``scenario.yaml`` (the resolved scenario the policy was trained on,
with ``calibration.yaml`` or ``.toml`` if it names a calibration file) and
``manifest.json`` (layout, action meaning, hashes, versions).
"""

TOKEN_ENV = "MECRL_SERVE_TOKEN"
"""Environment variable ``mecrl serve`` reads its bearer token from."""
