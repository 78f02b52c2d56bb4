"""Modality-agnostic core: knows nothing about images or audio."""
