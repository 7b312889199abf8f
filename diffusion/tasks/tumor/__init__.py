"""Tumor segmentation, described once: `layout` (the competition's files, reading and validation; healthy controls as
extra cases), `dataset` (training crops and the small-data levers), `synthetic_tumors` (tumors pasted into controls),
`task` (condition, training batch, the predictor's hooks, score), `postprocess` (threshold, component filter), `codec`
(the HTTP format), `report` (overview figure, uncertainty report). The registry takes `TASK`."""
from diffusion.tasks.tumor.task import TASK, TumorTask

__all__ = ["TASK", "TumorTask"]
