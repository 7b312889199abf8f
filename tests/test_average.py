"""Weight averaging of slim checkpoints (eval.average): the mean of the weights, and refusals that keep a fold model
honest (no average across folds or across networks)."""
import pytest
import torch

from diffusion.checkpoint import load_slim, save_slim
from diffusion.config import load_config
from diffusion.errors import UserError
from diffusion.inference import build_denoiser
from eval import average
from tests.conftest import REPO


def checkpoint(path, seed: int, **data):
    config = load_config(REPO / "configs" / "tumor_tiny.yaml")
    config["data"].update(data)
    torch.manual_seed(seed)
    net = build_denoiser(config).net
    for p in net.parameters():
        torch.nn.init.normal_(p)
    save_slim(path, net.state_dict(), config, {"step": seed})
    return path


def test_the_average_is_the_mean_of_the_weights(tmp_path):
    a, b = checkpoint(tmp_path / "a.safetensors", 1), checkpoint(tmp_path / "b.safetensors", 2)
    assert average.main(["--checkpoint", str(a), str(b), "--out", str(tmp_path / "m.safetensors")]) == 0
    (sa, _, _), (sb, _, _), (sm, _, meta) = (load_slim(p) for p in (a, b, tmp_path / "m.safetensors"))
    assert sm.keys() == sa.keys()
    for k in sa:  # stored in fp16: the mean of the stored weights, rounded once
        assert torch.allclose(sm[k], ((sa[k] + sb[k]) / 2).half().float(), atol=0, rtol=0), k
    assert meta["average_of"] == [str(a), str(b)] and meta["step"] == 2


def test_no_average_across_folds_or_networks(tmp_path):
    f0 = checkpoint(tmp_path / "f0.safetensors", 1, folds=5, fold=0)
    f1 = checkpoint(tmp_path / "f1.safetensors", 2, folds=5, fold=1)
    with pytest.raises(UserError, match="fold"):
        average.average([str(f0), str(f1)], tmp_path / "m.safetensors")
    wide = tmp_path / "wide.safetensors"
    config = load_config(REPO / "configs" / "tumor_tiny.yaml")
    config["model"]["block_out_channels"] = [c * 2 for c in config["model"]["block_out_channels"]]
    save_slim(wide, build_denoiser(config).net.state_dict(), config)
    with pytest.raises(UserError, match="different network"):
        average.average([str(checkpoint(tmp_path / "a.safetensors", 1)), str(wide)], tmp_path / "m.safetensors")
    assert not (tmp_path / "m.safetensors").exists()
