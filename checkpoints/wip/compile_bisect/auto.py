"""torch's CompilerBisector on the two-block UNet's wrong compiled gradients (2026-12-07: inductor_layout_optimization).

    OMP_NUM_THREADS=1 python checkpoints/wip/compile_bisect/auto.py   # about 5 min
"""
import copy

import torch
from diffusers import UNet2DModel
from torch._inductor.compiler_bisector import CompilerBisector

torch.manual_seed(0)
net = UNet2DModel(in_channels=3, out_channels=1, block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
                  down_block_types=("DownBlock2D",)*2, up_block_types=("UpBlock2D",)*2, add_attention=False)
x = torch.randn(4, 3, 48, 96); t = torch.tensor([1, 5, 50, 500])
def grads(m, params):
    for p in params: p.grad = None
    y = m(x, t).sample
    (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params]
ref = grads(net, list(net.parameters()))
def test():
    torch._dynamo.reset()
    m = copy.deepcopy(net)
    g = grads(torch.compile(m), list(m.parameters()))
    ok = all((a - b).norm() <= 0.05 * (b.norm() + 1e-12) for a, b in zip(g, ref))
    print("test ok" if ok else "test BAD", flush=True)
    return ok
print("first:", test())
r = CompilerBisector.do_bisect(test)
print("RESULT", r)
