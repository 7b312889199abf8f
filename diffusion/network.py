"""Network factory: a diffusers `UNet2DModel` whose channel counts come from the task, not from here."""
from __future__ import annotations

from diffusers import UNet2DModel


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
