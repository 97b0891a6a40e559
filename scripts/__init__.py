"""Thin entry points (`python -m scripts.<name>`, used by the Makefile); the code is `scones/`."""
