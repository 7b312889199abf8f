"""CT inpainting, described once: `layout` (the competition's files, reading and validation), `dataset` (training
crops with new masks), `task` (condition, training batch, the predictor's hooks, score), `codec` (the HTTP format),
`report` (overview figure, uncertainty report). The registry takes `TASK`."""
from diffusion.tasks.ct.task import TASK, CTTask

__all__ = ["TASK", "CTTask"]
