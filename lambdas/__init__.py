"""The workflow's three Lambda functions (one folder each, zipped alone) and their packaging."""
