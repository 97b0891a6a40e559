"""SageMaker's built-in image-classification algorithm, run locally on the project's own networks.

`hyperparameters` (the documented set), `data` (.lst + images, RecordIO), `recordio` (the `.rec`
format), `train` (the algorithm's entry point), `serving` (the hooks shipped in the artefact).
"""

# The metric definitions SageMaker applies to this algorithm's log (names as AWS reports them).
# Here, not in `train`, so that sagemaker-local reads them without importing torch.
METRIC_DEFINITIONS = (
    {"Name": "train:accuracy", "Regex": r"Epoch\[\d+\] Train-accuracy=([0-9.]+)"},
    {"Name": "validation:accuracy", "Regex": r"Epoch\[\d+\] Validation-accuracy=([0-9.]+)"},
)
