"""The released slim checkpoints and their model cards, shipped as package data so that every install (editable or
not) finds them: `diffusion.inference.released_checkpoint(task)`."""
