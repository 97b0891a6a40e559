"""sagemaker-local: the project's own SageMaker control plane, runtime and data capture.

Rooms as in moto: `responses` (the wire), `models` (state and behaviour), `exceptions` (AWS
error codes), `store` (persistence), `training` (job runner), `hosting` (endpoint_router and
model archives), `capture` (capture_writer), `shapes` (validation from botocore's models).
"""
