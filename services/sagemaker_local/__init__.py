"""sagemaker-local: the project's own SageMaker control plane, runtime and data capture.

Rooms as in moto, one reason each:
- the wire: `responses` (JSON 1.1 control plane, rest-json runtime), `shapes` (validation from
  botocore's models), `exceptions` (AWS error codes), `listing` (List* paging);
- state: `backend` (endpoints, life cycle), `model_registry` (models, endpoint configs),
  `training_jobs` (jobs), `notebooks` (notebook instances), `store` (JSON files), `state_lock`
  (one process per state folder);
- training: `training` (the job runner), `s3io` (transfers, manifests), `processes` (children,
  SIGTERM then SIGKILL), `archive` (safe tar extraction);
- hosting: `endpoint_deployment` (one deployment, a callback into the state), `model_data`
  (model archives from S3), `model_server_process` (the handle to a model-server child),
  `supervisor` (replaces dead model servers), `router` (endpoint_router: InvokeEndpoint),
  `http_pool` (keep-alive client), `capture` (capture_writer), `capture_spool` (durability).
"""
