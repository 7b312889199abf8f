"""A plain diffusers UNet2DModel (BLOCKS DownBlock2D/UpBlock2D, fresh): compiled against eager gradients, one step.

    OMP_NUM_THREADS=1 python checkpoints/wip/compile_bisect/unet_grads.py 2 inplace   # or wrapper, aot_eager, ...
    OMP_NUM_THREADS=1 python checkpoints/wip/compile_bisect/unet_grads.py 2 inplace no_layout   # one inductor knob

Prints how many parameter gradients are more than 5 % off and which blocks got exactly zero (2026-12-07, torch 2.13:
84 of 114 off with inductor, none with aot_eager). Knobs (no_pattern, no_donated, no_cache, no_inplace, no_cpp_vec,
no_layout): only no_layout (inductor's layout_optimization off) made the gradients right.
"""
import copy
import sys

import torch
import torch._functorch.config as functorch_config
import torch._inductor.config as inductor_config
from diffusers import UNet2DModel

KNOBS = {"no_pattern": (inductor_config, {"pattern_matcher": False}),
         "no_donated": (functorch_config, {"donated_buffer": False}),
         "no_cache": (inductor_config, {"fx_graph_cache": False}),
         "no_inplace": (inductor_config, {"inplace_buffers": False, "allow_buffer_reuse": False}),
         "no_cpp_vec": (inductor_config, {"cpp.simdlen": 1}),
         "no_layout": (inductor_config, {"layout_optimization": False})}


def build(blocks: int = 2, **kw) -> UNet2DModel:
    torch.manual_seed(0)
    ch = (16, 32, 64, 128)[:blocks]
    return UNet2DModel(in_channels=3, out_channels=1, block_out_channels=ch, layers_per_block=1, norm_num_groups=8,
                       down_block_types=("DownBlock2D",) * blocks, up_block_types=("UpBlock2D",) * blocks, **kw)


X, T = torch.randn(4, 3, 48, 96, generator=torch.Generator().manual_seed(1)), torch.tensor([1, 5, 50, 500])


def grads(module, net: UNet2DModel) -> list[torch.Tensor]:
    """The gradients of net's parameters after one backward pass through module (net itself or a compiled net)."""
    net.zero_grad(set_to_none=True)
    y = module(X, T).sample
    (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in net.parameters()]


def wrong(got: list[torch.Tensor], ref: list[torch.Tensor]) -> list[int]:
    return [i for i, (a, b) in enumerate(zip(got, ref)) if (a - b).norm() > 0.05 * (b.norm() + 1e-12)]


if __name__ == "__main__":
    blocks, how = int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "inplace"
    if len(sys.argv) > 3:
        module, values = KNOBS[sys.argv[3]]
        module.patch(values).__enter__()  # for the whole process
    net = build(blocks)
    ref = grads(net, net)
    other = copy.deepcopy(net)
    if how == "inplace":
        other.compile()
        compiled = other
    else:
        compiled = torch.compile(other) if how == "wrapper" else torch.compile(other, backend=how)
    got = grads(compiled, other)
    names = [k for k, _ in net.named_parameters()]
    bad = wrong(got, ref)
    zero = sorted({".".join(names[i].split(".")[:3]) for i in bad if got[i].abs().max() == 0})
    print(f"blocks={blocks} {how} {sys.argv[3:]}: bad {len(bad)} of {len(ref)}, zero in {zero}", flush=True)
