"""Network factory: a diffusers `UNet2DModel` whose channel counts come from the task, not from here."""
from __future__ import annotations

import torch
from diffusers import UNet2DModel
from diffusers.models.attention_processor import Attention


def build_unet(model_cfg: dict, *, in_channels: int, out_channels: int, num_class_embeds: int | None) -> UNet2DModel:
    """`model_cfg` keys: block_out_channels, layers_per_block, attention_levels, norm_num_groups, attention_head_dim,
    mid_attention (self-attention in the middle block; its cost grows with the square of the image area, so the
    tumor models, which see whole 400 x 991 images at inference, turn it off)."""
    channels = tuple(model_cfg["block_out_channels"])
    attention = set(model_cfg.get("attention_levels", []))
    down = tuple("AttnDownBlock2D" if i in attention else "DownBlock2D" for i in range(len(channels)))
    up = tuple("AttnUpBlock2D" if i in attention else "UpBlock2D" for i in reversed(range(len(channels))))
    return UNet2DModel(
        in_channels=in_channels,
        out_channels=out_channels,
        block_out_channels=channels,
        layers_per_block=model_cfg.get("layers_per_block", 2),
        down_block_types=down,
        up_block_types=up,
        norm_num_groups=model_cfg.get("norm_num_groups", 32),
        attention_head_dim=model_cfg.get("attention_head_dim", 8),
        num_class_embeds=num_class_embeds,
        dropout=model_cfg.get("dropout", 0.0),
        add_attention=model_cfg.get("mid_attention", True),
    )


def grown_model_config(old: dict, new: dict) -> bool:
    """Whether a network built from model config `new` is one built from `old` with self-attention added at more
    levels (model.attention_levels a superset, nothing else changed): then `grow_into` can start it from `old`'s
    weights."""
    same_otherwise = all(old.get(k) == new.get(k) for k in {*old, *new} - {"attention_levels"})
    return same_otherwise and set(old.get("attention_levels", [])) <= set(new.get("attention_levels", []))


def grow_into(net: UNet2DModel, state: dict) -> list[str]:
    """Load `state` into `net`, which may hold self-attention blocks that `state` lacks (`grown_model_config`). Each
    new block starts as the identity: the blocks are residual (x + out(attn(x))), so zeroing the output projection
    makes the grown network compute exactly what the checkpoint's did, and training starts where it left off
    (function-preserving growth). Returns the names of the new blocks."""
    result = net.load_state_dict(state, strict=False)
    if result.unexpected_keys or any(".attentions." not in key for key in result.missing_keys):
        raise ValueError(f"the weights do not fit this network beyond added attention blocks (missing "
                         f"{[k for k in result.missing_keys if '.attentions.' not in k][:3]}, unexpected "
                         f"{result.unexpected_keys[:3]})")
    missing = set(result.missing_keys)
    new = [name for name, module in net.named_modules()
           if isinstance(module, Attention) and f"{name}.to_out.0.weight" in missing]
    for name in new:
        torch.nn.init.zeros_(net.get_submodule(name).to_out[0].weight)
        torch.nn.init.zeros_(net.get_submodule(name).to_out[0].bias)
    return new
