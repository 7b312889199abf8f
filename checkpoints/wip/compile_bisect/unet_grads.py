"""A plain diffusers UNet2DModel (BLOCKS DownBlock2D/UpBlock2D, fresh): compiled against eager gradients, one step.

    OMP_NUM_THREADS=1 python checkpoints/wip/compile_bisect/unet_grads.py 2 inplace   # or wrapper, aot_eager, ...; [eval]

Prints how many parameter gradients are more than 5 % off and which blocks got exactly zero (2026-12-07, torch 2.13:
84 of 114 off with inductor, none with aot_eager).
"""
import copy
import sys

import torch
from diffusers import UNet2DModel

torch.manual_seed(0)
blocks = int(sys.argv[1]); how = sys.argv[2] if len(sys.argv) > 2 else "inplace"
def grads(m):
    m.zero_grad(set_to_none=True)
    y = m(x, t).sample
    (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
    return {k: p.grad.clone() if p.grad is not None else torch.zeros_like(p) for k, p in net.named_parameters()} if m is net else \
           {k: p.grad.clone() if p.grad is not None else torch.zeros_like(p) for k, p in mc_params()}
ch = (16, 32, 64, 128)[:blocks]
net = UNet2DModel(in_channels=3, out_channels=1, block_out_channels=ch, layers_per_block=1, norm_num_groups=8,
                  down_block_types=("DownBlock2D",)*blocks, up_block_types=("UpBlock2D",)*blocks)
x = torch.randn(4, 3, 48, 96); t = torch.tensor([1, 5, 50, 500])
if "eval" in sys.argv: net.eval()
ge = grads(net)
base = copy.deepcopy(net)
if how == "inplace": base.compile(); mc = base
elif how == "wrapper": mc = torch.compile(base)
else: mc = torch.compile(base, backend=how)
mc_params = base.named_parameters
gc = grads(mc)
bad = [k for k in ge if (gc[k]-ge[k]).norm() > 0.05 * (ge[k].norm() + 1e-12)]
zero = [k for k in bad if gc[k].abs().max() == 0]
print(f"blocks={blocks} {how}: bad {len(bad)} of {len(ge)}, zero {len(zero)}:", sorted({'.'.join(k.split('.')[:3]) for k in zero}), flush=True)
