"""Task registry. A task is one module that owns everything task-specific: its data (cases, reading, the training
dataset), its condition builder and loss weight, the predictor's two hooks (`encode`, `decode`), its score and the metric's direction, its overview
figure and its competition request/response codec. Entry points ask the registry and contain no task names.

Adding a task: one module (or package) that defines a `Task` subclass and an instance of it named `TASK`, plus one
line in `BUILTIN` naming the module. The registry imports it on first use; a task module imports nothing of the
registry, the predictor or the entry points, so the library's import graph has no cycle (`tests/test_imports.py`).
`register(task)` adds a task object at run time instead.
"""
from __future__ import annotations

import importlib

from diffusion.errors import UserError
from diffusion.tasks.base import Case, Encoded, Example, Prediction, Task

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
        task = getattr(importlib.import_module(BUILTIN[name]), "TASK", None)
        if not isinstance(task, Task) or task.name != name:
            raise UserError(f"task module {BUILTIN[name]} defines no TASK named {name!r}")
        register(task)
    if name not in TASKS:
        raise UserError(f"unknown task {name!r}; known: {', '.join(task_names())}")
    return TASKS[name].with_options(data_config) if data_config else TASKS[name]


__all__ = ["BUILTIN", "TASKS", "Case", "Encoded", "Example", "Prediction", "Task", "get_task", "register", "task_names"]
