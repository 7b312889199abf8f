"""Finding the data root: --data-root, then $DMIAI_DATA, then ./data, then ../shared/data."""
from __future__ import annotations

import os
from pathlib import Path

from diffusion.errors import DataError


def _task_folder(root: Path, folder: str, marker: str) -> Path | None:
    """`root` may be the folder holding the task folders, or the task folder itself (it holds `marker`/)."""
    if (root / marker).is_dir():
        return root
    if (root / folder / marker).is_dir():
        return root / folder
    return None


def resolve_root(folder: str, marker: str, data_root: str | Path | None) -> tuple[Path, str]:
    """Return (task folder, a line saying where it came from) for a task whose data lives in `folder`/ (e.g.
    ct-inpainting) and holds the sub-folder `marker`/. Raises DataError with one clear line."""
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
        found = _task_folder(path, folder, marker)
        if found is not None:
            return found.resolve(), f"data: {found.resolve()} (from {source})"
        if source in ("--data-root", "$DMIAI_DATA"):
            raise DataError(f"data root {path} (from {source}) holds no {folder}/ folder and is not one "
                            f"(no {marker}/ inside)")
    tried = ", ".join(str(p) for p, _ in candidates)
    raise DataError(f"no data root found for {folder} (tried {tried}); pass --data-root DIR or set DMIAI_DATA")
