"""The out-of-fold loop the tumor study scripts share: every fold's held-out patients, each read once and stored."""
import sys
from pathlib import Path

from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from diffusion.evaluate import select_cases


def held_out(task, root, data_configs: list[dict], out: Path, index: dict, whose: str):
    """(fold, case, example with truth) for each fold's held-out patients (fold k's `data` config: its split) whose
    `out/<case>.npz` is not there yet; `index[case id]` = its fold, for every patient, stored or not."""
    for k, data in enumerate(data_configs):
        cases, line = select_cases(task, root, data, "val", None, whose=whose)
        print(f"fold {k}: {line}", file=sys.stderr)
        for case in tqdm(cases, desc=f"fold {k}"):
            index[case.id] = k
            if not (out / f"{case.id}.npz").exists():
                yield k, case, task.layout.read_case(root, case, with_truth=True)
