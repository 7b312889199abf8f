import pytest
import torch

from diffusion.checkpoint import (
    is_shard,
    latest_full_state,
    list_full_states,
    load_slim,
    save_full_state,
    save_slim,
)
from diffusion.config import DEFAULTS, load_config
from diffusion.errors import CheckpointError, UserError
from diffusion.inference import build_denoiser
from tests.conftest import REPO


def tiny_config():
    return load_config(REPO / "configs/ct_tiny.yaml")


def test_slim_round_trip(tmp_path):
    config = tiny_config()
    net = build_denoiser(config).net
    save_slim(tmp_path / "m.safetensors", net.state_dict(), config, {"step": 7})
    state, config2, meta = load_slim(tmp_path / "m.safetensors", expected_task="ct")
    assert config2 == config and meta == {"step": 7}
    net2 = build_denoiser(config2).net
    net2.load_state_dict(state)
    for (k, a), (_, b) in zip(net.state_dict().items(), net2.state_dict().items()):
        assert torch.allclose(a, b, atol=1e-2, rtol=1e-3), k  # stored as fp16


def test_slim_wrong_task_and_corrupt_file(tmp_path):
    config = tiny_config()
    save_slim(tmp_path / "m.safetensors", build_denoiser(config).net.state_dict(), config)
    with pytest.raises(CheckpointError, match="for task 'ct', not 'tumor'"):
        load_slim(tmp_path / "m.safetensors", expected_task="tumor")
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        load_slim(tmp_path / "bad.safetensors")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_slim(tmp_path / "nope.safetensors")


def test_a_slim_checkpoint_larger_than_the_shard_limit_is_written_in_shards_and_read_back_whole(tmp_path):
    from safetensors.torch import load_file

    from diffusion.inference import other_released

    config = tiny_config()
    state = build_denoiser(config).net.state_dict()
    total = sum(v.numel() * 2 for v in state.values())  # fp16
    limit = total // 3
    path = tmp_path / "ct_inpaint_diffusion.safetensors"  # beside the CT release, as its diffusion model would be
    save_slim(path, state, config, {"step": 3}, shard_bytes=limit)
    files = sorted(tmp_path.glob("*.safetensors"))
    assert len(files) >= 3 and all(is_shard(f) for f in files if f != path) and not is_shard(path)
    for f in files:  # every shard within the limit unless one tensor alone is larger
        tensors = load_file(str(f))
        assert sum(t.numel() * t.element_size() for t in tensors.values()) <= limit or len(tensors) == 1
    got, config2, meta = load_slim(path)
    assert config2 == config and meta == {"step": 3} and sorted(got) == sorted(state)
    assert all(torch.equal(got[k], state[k].half().float()) for k in state)
    assert other_released("ct", tmp_path) == [path]  # its shards are not other releases
    files[-1].unlink()
    with pytest.raises(CheckpointError, match=files[-1].name):
        load_slim(path)
    save_slim(path, state, config)  # written whole again: the earlier shards go
    assert sorted(tmp_path.glob("*.safetensors")) == [path] and load_slim(path)[0].keys() == state.keys()


def test_full_state_round_trip_and_rotation(tmp_path):
    for step in (1, 2, 3):
        save_full_state(tmp_path, step, {"step": step, "w": torch.arange(3) * step}, keep=2)
    assert [p.name for p in list_full_states(tmp_path)] == ["step_0000002.pt", "step_0000003.pt"]
    state = torch.load(latest_full_state(tmp_path))
    assert state["step"] == 3 and torch.equal(state["w"], torch.tensor([0, 3, 6]))
    assert not list(tmp_path.glob("*.tmp"))


def test_config_rejects_unknown_keys(tmp_path):
    (tmp_path / "c.yaml").write_text("train:\n  bach_size: 3\n")
    with pytest.raises(UserError, match="train.bach_size"):
        load_config(tmp_path / "c.yaml")
    assert load_config(REPO / "configs/ct_cpu.yaml")["train"]["mixed_precision"] == "bf16"
    assert set(DEFAULTS) >= {"model", "diffusion", "train", "data", "sample"}


def test_train_rejects_a_stop_in_the_past():
    # a stop time computed from a clock time already past (UNTIL=00:10 at 22:00) gives a negative budget: it must
    # fail at once, not train one step and report "done"
    import train_diffusion

    base = ["--config", str(REPO / "configs/ct_tiny.yaml"), "--out", "unused"]
    with pytest.raises(UserError, match="--max-minutes must be positive, got -5"):
        train_diffusion.parse_args(base + ["--max-minutes", "-5"])
    with pytest.raises(UserError, match="--max-steps must be positive"):
        train_diffusion.parse_args(base + ["--max-steps", "0"])
    assert train_diffusion.parse_args(base + ["--max-minutes", "0.5"]).max_minutes == 0.5
