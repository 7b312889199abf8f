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
from diffusion.data.split import split_indices, split_patients, validation_subset

__all__ = ["NUM_VERTEBRA_LEVELS", "CTSlices", "CTTrainDataset", "list_ct_ids", "load_ct_slices", "parse_vertebra",
           "random_mask", "split_indices", "split_patients", "validation_subset"]
