"""Finding the data root: --data-root, then $DMIAI_DATA, then ./data, then ../shared/data."""
from __future__ import annotations

import os
from pathlib import Path

from diffusion.errors import DataError

TASK_FOLDERS = {"ct": "ct-inpainting", "tumor": "tumor-segmentation"}
TASK_MARKERS = {"ct": "corrupted", "tumor": "patients"}  # a sub-folder that identifies a task folder


def _task_folder(task: str, root: Path) -> Path | None:
    """`root` may be the folder holding both task folders, or the task folder itself."""
    if (root / TASK_MARKERS[task]).is_dir():
        return root
    if (root / TASK_FOLDERS[task] / TASK_MARKERS[task]).is_dir():
        return root / TASK_FOLDERS[task]
    return None


def resolve_task_root(task: str, data_root: str | Path | None) -> tuple[Path, str]:
    """Return (task folder, a line saying where it came from). Raises DataError with one clear line."""
    if task not in TASK_FOLDERS:
        raise DataError(f"unknown task {task!r}; known: {sorted(TASK_FOLDERS)}")
    if data_root is not None:
        candidates = [(Path(data_root), "--data-root")]
    else:
        candidates = []
        if os.environ.get("DMIAI_DATA"):
            candidates.append((Path(os.environ["DMIAI_DATA"]), "$DMIAI_DATA"))
        candidates += [(Path("data"), "./data"), (Path("../shared/data"), "../shared/data")]
    for path, source in candidates:
        if not path.exists():
            if source in ("--data-root", "$DMIAI_DATA"):
                raise DataError(f"data root {path} (from {source}) does not exist")
            continue
        found = _task_folder(task, path)
        if found is not None:
            return found.resolve(), f"data: {found.resolve()} (from {source})"
        if source in ("--data-root", "$DMIAI_DATA"):
            raise DataError(f"data root {path} (from {source}) holds no {TASK_FOLDERS[task]}/ folder "
                            f"and is not one (no {TASK_MARKERS[task]}/ inside)")
    tried = ", ".join(str(p) for p, _ in candidates)
    raise DataError(f"no data root found for task {task!r} (tried {tried}); pass --data-root DIR or set DMIAI_DATA")
