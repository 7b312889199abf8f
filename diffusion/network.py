"""Network factory: a diffusers `UNet2DModel` whose channel counts come from the task, not from here."""
from __future__ import annotations

import re

import torch
from diffusers import UNet2DModel
from diffusers.models.attention_processor import Attention
from diffusers.models.resnet import ResnetBlock2D


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
    """Whether a network built from model config `new` is one built from `old` with more depth: self-attention at
    more levels (model.attention_levels a superset) and/or more layers per block (model.layers_per_block larger),
    nothing else changed. Then `grow_into` can start it from `old`'s weights, computing what `old` computed."""
    same_otherwise = all(old.get(k) == new.get(k) for k in {*old, *new} - {"attention_levels", "layers_per_block"})
    return (same_otherwise and set(old.get("attention_levels", [])) <= set(new.get("attention_levels", []))
            and old.get("layers_per_block", 2) <= new.get("layers_per_block", 2))


UP_RESNET = re.compile(r"^(up_blocks\.\d+\.(?:resnets|attentions))\.(\d+)\.(.*)$")


def grown_state(state: dict, old_layers: int, new_layers: int) -> dict:
    """The weights of a network with `old_layers` per block renamed for one with `new_layers`. Down blocks keep
    their first layers; the new ones come after them. An up block's layer j consumes the down path's skips in
    reverse, so its first layer keeps consuming the last skip (the new down layers, as identities, repeat the old
    last one) and layers 1..added are the new ones, between it and the old layers 1.. (shifted by `added`)."""
    added = new_layers - old_layers

    def rename(key: str) -> str:
        match = UP_RESNET.match(key)
        if not match or not added or int(match.group(2)) == 0:
            return key
        return f"{match.group(1)}.{int(match.group(2)) + added}.{match.group(3)}"

    return {rename(key): value for key, value in state.items()}


def grow_into(net: UNet2DModel, state: dict, old_layers: int | None = None) -> list[str]:
    """Load `state` (a network of `old_layers` per block; default: as many as `net`) into `net`, which may be deeper
    (`grown_model_config`): more self-attention blocks and/or more layers per block. Every new block starts as the
    identity, so the grown network computes exactly what the checkpoint's did and training starts where it left
    off (function-preserving growth): the blocks are residual, so a new self-attention block or down-path resnet
    with its last projection zeroed passes its input on; a new up-path resnet, which also takes a skip tensor,
    gets its 1x1 shortcut set to pass the main input's channels and drop the skip's. Returns the new blocks' names."""
    new_layers = len(net.down_blocks[0].resnets)
    state = grown_state(state, new_layers if old_layers is None else old_layers, new_layers)
    result = net.load_state_dict(state, strict=False)
    new_modules = {name for name, module in net.named_modules()
                   if isinstance(module, (Attention, ResnetBlock2D))
                   and any(key.startswith(name + ".") for key in result.missing_keys)}
    stray = [key for key in result.missing_keys if not any(key.startswith(name + ".") for name in new_modules)]
    if result.unexpected_keys or stray:
        raise ValueError(f"the weights do not fit this network beyond added blocks (missing {stray[:3]}, unexpected "
                         f"{result.unexpected_keys[:3]})")
    partly = [name for name in new_modules if any(key.startswith(name + ".") for key in state)]
    if partly:
        raise ValueError(f"{partly[0]}: partly in the checkpoint, partly new")
    for name in sorted(new_modules):
        module = net.get_submodule(name)
        if isinstance(module, Attention):
            torch.nn.init.zeros_(module.to_out[0].weight)
            torch.nn.init.zeros_(module.to_out[0].bias)
            continue
        torch.nn.init.zeros_(module.conv2.weight)
        torch.nn.init.zeros_(module.conv2.bias)
        if module.conv_shortcut is not None:  # up path: [main input, skip] -> out; pass the main input through
            weight = torch.zeros_like(module.conv_shortcut.weight)
            out_channels = weight.shape[0]
            weight[:, :out_channels, 0, 0] = torch.eye(out_channels)
            module.conv_shortcut.weight.data.copy_(weight)
            torch.nn.init.zeros_(module.conv_shortcut.bias)
    return sorted(new_modules)


def silence_noisy_input(net: UNet2DModel) -> None:
    """Zero the input convolution's weights on the noisy target x_t (the first `out_channels` input channels, see
    Denoiser.forward). A regressor sees x_t = 0 at t = T-1, so those weights never trained (they are still their
    random init); zeroed, a diffusion model warm-started from the regressor computes at t = T-1, for any x_t, what
    the regressor computed: its one-step DDIM from pure noise starts as the regressor's prediction, and training
    with the diffusion objective teaches it to read x_t from there."""
    with torch.no_grad():
        net.conv_in.weight[:, :net.config.out_channels].zero_()
