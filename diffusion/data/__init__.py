"""The generic data pieces: data roots, PNG reading, the patient split, generated masks, synthetic test data. What a
task's files look like lives in its package (`diffusion/tasks/<task>/layout.py`)."""
from diffusion.data.masks import random_mask
from diffusion.data.split import split_indices, split_patients, validation_subset

__all__ = ["random_mask", "split_indices", "split_patients", "validation_subset"]
