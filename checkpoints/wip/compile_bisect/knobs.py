"""The same two-block UNet compiled with one inductor knob changed (no_pattern, no_donated, no_cache, no_inplace,
no_cpp_vec, no_layout): are the gradients right? Only no_layout (layout_optimization off) fixed it (2026-12-07).

    OMP_NUM_THREADS=1 python checkpoints/wip/compile_bisect/knobs.py no_layout
"""
import sys

import torch
from diffusers import UNet2DModel

torch.manual_seed(0)
knob = sys.argv[1]
import torch._functorch.config as fc
import torch._inductor.config as ic

if knob == "no_pattern": ic.pattern_matcher = False
elif knob == "no_donated": fc.donated_buffer = False
elif knob == "no_cache": ic.fx_graph_cache = False; fc.enable_autograd_cache = False
elif knob == "no_fusion": ic.max_fusion_size = 1
elif knob == "no_inplace": ic.inplace_buffers = False; ic.allow_buffer_reuse = False
elif knob == "no_cpp_vec": ic.cpp.simdlen = 1
elif knob == "no_layout": ic.layout_optimization = False
net = UNet2DModel(in_channels=3, out_channels=1, block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
                  down_block_types=("DownBlock2D",)*2, up_block_types=("UpBlock2D",)*2)
x = torch.randn(4, 3, 48, 96); t = torch.tensor([1, 5, 50, 500])
def grads(m):
    net.zero_grad(set_to_none=True); y = m(x, t).sample
    (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
    return {k: p.grad.clone() if p.grad is not None else torch.zeros_like(p) for k, p in net.named_parameters()}
ge = grads(net); torch._dynamo.reset(); gc = grads(torch.compile(net))
bad = [k for k in ge if (gc[k]-ge[k]).norm() > 0.05 * (ge[k].norm() + 1e-12)]
zero = [k for k in bad if gc[k].abs().max() == 0]
print(knob, f"bad {len(bad)} of {len(ge)}, zero {len(zero)}", flush=True)
