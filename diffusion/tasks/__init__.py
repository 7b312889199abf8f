"""Task registry. A task is one module that owns everything task-specific: its data (cases, reading, the training
dataset), its condition builder and loss weight, its predictor, its score and the metric's direction, its overview
figure and its competition request/response codec. Entry points ask the registry and contain no task names.

Adding a task: one module under `diffusion/tasks/` that defines a `Task` subclass and calls `register(...)` on an
instance, plus one line in `BUILTIN` (modules are imported on first use, so the library has no import cycle).
"""
from __future__ import annotations

import importlib

from diffusion.errors import UserError
from diffusion.tasks.base import Case, Example, Task

BUILTIN = {"ct": "diffusion.tasks.ct", "tumor": "diffusion.tasks.tumor"}
TASKS: dict[str, Task] = {}


def register(task: Task) -> Task:
    TASKS[task.name] = task
    return task


def task_names() -> list[str]:
    return sorted(set(BUILTIN) | set(TASKS))


def get_task(name: str, data_config: dict | None = None) -> Task:
    """The task by name; `data_config` (the config's `data` section) sets its training options."""
    if name not in TASKS and name in BUILTIN:
        importlib.import_module(BUILTIN[name])
    if name not in TASKS:
        raise UserError(f"unknown task {name!r}; known: {', '.join(task_names())}")
    return TASKS[name].with_options(data_config) if data_config else TASKS[name]


__all__ = ["BUILTIN", "TASKS", "Case", "Example", "Task", "get_task", "register", "task_names"]
