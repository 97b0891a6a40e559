"""AWS training images that sagemaker-local runs as local processes, and how it knows them.

`images` maps a job's `TrainingImage` to a kind (built-in algorithm, framework image, or another
container); `image_classification` is the built-in image-classification algorithm.
"""
