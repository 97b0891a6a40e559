"""SageMaker bring-your-own-container model server: /ping, /invocations, batching, workers.

It loads `<model_dir>/code/inference.py` and calls its hooks; it knows nothing about the model.
"""

from .server import MAX_PAYLOAD_BYTES, ModelServer, ServerConfig, serve

__all__ = ["MAX_PAYLOAD_BYTES", "ModelServer", "ServerConfig", "serve"]
