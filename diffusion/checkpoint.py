"""Two kinds of checkpoint.

* Full training state (`runs/NAME/checkpoints/step_XXXXXXX.pt`): model, EMA, optimiser, LR scheduler, step and
  config; written atomically (temporary file, then rename) and rotated.
* Slim inference checkpoint (`.safetensors`): EMA weights only, with the resolved config in the metadata and the
  run's facts about the weights (`meta`: the step, the validation score, where it was released from), stored under the
  metadata key "extra" (the name of earlier versions; "extra" elsewhere means a case outside the split). One larger
  than `SHARD_BYTES` (a several-network ensemble) is written in shards, as `save_pretrained(max_shard_size=...)` does:
  the named file holds the config and the first tensors and lists the others, `<stem>-00002-of-0000N.safetensors`...
  beside it; `load_slim` reads them all back, so a sharded checkpoint is used by its first file's name.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from diffusion.config import fill_defaults
from diffusion.errors import CheckpointError

_STEP = re.compile(r"^step_(\d+)\.pt$")
SLIM_DTYPE = torch.float16   # released weights are stored in half precision (half the size)
SHARD_BYTES = 24_500_000     # tensors per file of a slim checkpoint: with its header, under the 25 MB a committed file may have
_SHARD = re.compile(r"-\d{5}-of-\d{5}\.safetensors$")


@torch.no_grad()
def round_to_slim(module: torch.nn.Module) -> torch.nn.Module:
    """Round a module's floating-point weights in place to what a slim checkpoint stores, so that what is validated
    (and saved as best.safetensors) is exactly what `infer.py` loads."""
    for tensor in module.state_dict(keep_vars=True).values():
        if tensor.is_floating_point():
            tensor.copy_(tensor.to(SLIM_DTYPE).to(tensor.dtype))
    return module


def atomic_torch_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_full_state(folder: Path, step: int, state: dict, keep: int) -> Path:
    path = folder / f"step_{step:07d}.pt"
    atomic_torch_save(state, path)
    for old in list_full_states(folder)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return path


def list_full_states(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_full_state(folder: Path) -> Path | None:
    states = list_full_states(folder)
    return states[-1] if states else None


def shard_names(path: Path, count: int) -> list[Path]:
    """The files of a checkpoint written in `count` shards: `path` itself, then `<stem>-0000k-of-0000N.safetensors`."""
    return [path] + [path.with_name(f"{path.stem}-{k:05d}-of-{count:05d}.safetensors") for k in range(2, count + 1)]


def is_shard(path: str | Path) -> bool:
    """Whether a file is a later shard of a sharded slim checkpoint (not a checkpoint of its own)."""
    return bool(_SHARD.search(Path(path).name))


def save_slim(path: Path, state_dict: dict[str, torch.Tensor], config: dict, meta: dict | None = None,
              dtype: torch.dtype = SLIM_DTYPE, shard_bytes: int = SHARD_BYTES) -> None:
    """EMA weights (stored as `dtype`, fp16 by default to halve the size) plus the config as metadata; in shards of
    at most `shard_bytes` of tensors each when they are larger (a tensor larger than that gets a shard of its own)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
               for k, v in state_dict.items()}
    groups: list[dict[str, torch.Tensor]] = [{}]
    filled = 0  # bytes in the last group
    for key, tensor in tensors.items():
        size = tensor.numel() * tensor.element_size()
        if groups[-1] and filled + size > shard_bytes:
            groups.append({})
            filled = 0
        groups[-1][key] = tensor
        filled += size
    files = shard_names(path, len(groups))
    metadata = {"config": json.dumps(config), "task": config["task"], "format": "dmiai-diffusion-slim-v1"}
    if meta:
        metadata["extra"] = json.dumps(meta)
    if len(files) > 1:
        metadata["shards"] = json.dumps([f.name for f in files[1:]])
    for stale in path.parent.glob(f"{path.stem}-*-of-*.safetensors"):  # a larger earlier version's shards
        if is_shard(stale) and stale not in files:
            stale.unlink()
    for file, group, data in reversed(list(zip(files, groups, [metadata] + [{"shard_of": path.name}] * len(files)))):
        tmp = file.with_name(file.name + ".tmp")  # the first file (which lists the others) is replaced last
        save_file(group, str(tmp), metadata=data)
        os.replace(tmp, file)


def read_slim_config(path: str | Path, expected_task: str | None = None) -> tuple[dict, dict]:
    """(config, meta) of a slim checkpoint from its metadata, without reading the weights. Raises CheckpointError
    with one clear line."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} is not a readable .safetensors file ({exc})") from None
    if "config" not in metadata:
        raise CheckpointError(f"checkpoint {path} has no config in its metadata (not a slim checkpoint of this repository)")
    config = fill_defaults(json.loads(metadata["config"]))  # keys added since it was written get their defaults
    if expected_task is not None and config.get("task") != expected_task:
        raise CheckpointError(f"checkpoint {path} is for task {config.get('task')!r}, not {expected_task!r}")
    return config, json.loads(metadata.get("extra", "{}"))


def slim_files(path: str | Path) -> list[Path]:
    """The files of a slim checkpoint: itself, then the later shards its metadata lists (those that exist)."""
    path = Path(path)
    with safe_open(str(path), framework="pt") as handle:
        shards = json.loads((handle.metadata() or {}).get("shards", "[]"))
    return [path] + [path.with_name(name) for name in shards]


def load_slim(path: str | Path, expected_task: str | None = None) -> tuple[dict[str, torch.Tensor], dict, dict]:
    """Return (float32 state dict, config, meta), the tensors of every shard. Raises CheckpointError with one clear
    line."""
    config, meta = read_slim_config(path, expected_task)
    path = Path(path)
    tensors = {}
    try:
        files = slim_files(path)
        for file in files:
            if not file.is_file():
                raise CheckpointError(f"checkpoint {path} is written in {len(files)} shards and {file.name} is "
                                      f"missing beside it (copy every {path.stem}-*-of-*.safetensors with it; to "
                                      f"rename one, `python -m eval.release --checkpoint OLD --out NEW` rewrites "
                                      f"every shard)")
            tensors |= load_file(str(file))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} is not a readable .safetensors file ({exc})") from None
    return {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}, config, meta


MEMBER_PREFIX = "member{}."  # the weights of network k of a several-network checkpoint (a fold ensemble)


def member_states(state: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """The state dicts of the networks a slim checkpoint holds: one, or several stored as `member<k>.<name>`."""
    if not any(key.startswith(MEMBER_PREFIX.format(0)) for key in state):
        return [state]
    members = []
    while any(key.startswith(prefix := MEMBER_PREFIX.format(len(members))) for key in state):
        members.append({key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)})
    if sum(map(len, members)) != len(state):
        raise CheckpointError(f"a several-network checkpoint holds keys outside member0..member{len(members) - 1}")
    return members


def fold_members(path: str | Path, expected_task: str | None = None) -> list[tuple[dict, dict, dict]]:
    """A slim checkpoint as (state dict, config, meta) per network: the checkpoint itself, or each member of a
    several-network checkpoint, member k with the fold its record names (a fold ensemble from `eval.crossval
    --release` records member k as fold k) in its config's `data.fold` and its record as meta."""
    state, config, meta = load_slim(path, expected_task)
    members = member_states(state)
    if len(members) == 1:
        return [(state, config, meta)]
    records = meta.get("member_meta") or [{} for _ in members]
    if len(records) != len(members):
        raise CheckpointError(f"{path}: {len(members)} networks but {len(records)} member records in its metadata")
    return [(member, {**config, "data": {**config["data"], "fold": int(record.get("fold", k))}}, record)
            for k, (member, record) in enumerate(zip(members, records))]


def ensemble_state(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Several networks' state dicts (one config) as one slim checkpoint's (`member_states` reads it back)."""
    return {MEMBER_PREFIX.format(k) + key: value for k, state in enumerate(states) for key, value in state.items()}
