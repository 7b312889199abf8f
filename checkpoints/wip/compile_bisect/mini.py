"""A hand-written small encoder-decoder (GroupNorm, stride-2 conv, nearest up-sampling, skip concat): compiled gradients
right in every variant (full, nonorm, nocat, shortcut, temb; `cl`: channels-last), so the UNet fault is not one op alone.

    OMP_NUM_THREADS=1 python checkpoints/wip/compile_bisect/mini.py full cl
"""
import sys

import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)
variant = sys.argv[1]
class Mini(nn.Module):
    def __init__(s):
        super().__init__()
        s.cin = nn.Conv2d(3, 16, 3, padding=1); s.n1 = nn.GroupNorm(8, 16); s.c1 = nn.Conv2d(16, 16, 3, padding=1)
        s.down = nn.Conv2d(16, 16, 3, stride=2, padding=1); s.n2 = nn.GroupNorm(8, 16); s.c2 = nn.Conv2d(16, 32, 3, padding=1)
        s.up = nn.Conv2d(32, 32, 3, padding=1); s.n3 = nn.GroupNorm(8, 48); s.c3 = nn.Conv2d(48, 16, 3, padding=1)
        s.cout = nn.Conv2d(16, 1, 3, padding=1); s.sc = nn.Conv2d(48, 16, 1); s.temb = nn.Linear(8, 16)
    def forward(s, x):
        h = s.cin(x); skip = h + s.c1(F.silu(s.n1(h)))
        d = s.down(skip)
        if variant != "nonorm": d = s.c2(F.silu(s.n2(d)))
        else: d = s.c2(F.silu(d))
        u = s.up(F.interpolate(d, scale_factor=2.0, mode="nearest"))
        if variant == "nocat": h = u[:, :16] + skip
        elif variant == "shortcut":
            c = torch.cat([u, skip], dim=1); h = (s.sc(c) + s.c3(F.silu(s.n3(c)))) / 1.0
        elif variant == "temb":
            c = torch.cat([u, skip], dim=1); e = s.temb(torch.ones(x.shape[0], 8))
            h = s.sc(c) + s.c3(F.silu(s.n3(c)) ) + e[:, :, None, None]
        else: h = s.c3(F.silu(s.n3(torch.cat([u, skip], dim=1))))
        return s.cout(h)
m = Mini(); x = torch.randn(4, 3, 48, 96)
if "cl" in sys.argv: m.to(memory_format=torch.channels_last); x = x.to(memory_format=torch.channels_last)
def grads(mod):
    m.zero_grad(set_to_none=True); y = mod(x); (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
    return {k: p.grad.clone() if p.grad is not None else torch.zeros_like(p) for k, p in m.named_parameters()}
ge = grads(m); torch._dynamo.reset(); gc = grads(torch.compile(m))
bad = [k for k in ge if (gc[k]-ge[k]).norm() > 0.05 * (ge[k].norm() + 1e-12)]
print(variant, "bad", bad, flush=True)
