"""The image classifier: networks, the SageMaker training script, inference hooks, packing."""
