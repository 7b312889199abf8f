"""Data: the competition's folder layouts, validated, split by patient."""
from diffusion.data.ct import (
                               NUM_VERTEBRA_LEVELS,
                               CTSlices,
                               CTTrainDataset,
                               list_ct_ids,
                               load_ct_slices,
                               parse_vertebra,
)
from diffusion.data.masks import random_mask
from diffusion.data.roots import resolve_task_root
from diffusion.data.split import split_indices, split_patients, validation_subset

__all__ = ["NUM_VERTEBRA_LEVELS", "CTSlices", "CTTrainDataset", "list_ct_ids", "load_ct_slices", "parse_vertebra",
           "random_mask", "resolve_task_root", "split_indices", "split_patients", "validation_subset"]
