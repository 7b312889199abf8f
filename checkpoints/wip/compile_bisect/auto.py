"""torch's CompilerBisector on the two-block UNet's wrong compiled gradients (2026-12-07: inductor_layout_optimization).

    OMP_NUM_THREADS=1 python checkpoints/wip/compile_bisect/auto.py   # about 5 min
"""
import copy
import sys
from pathlib import Path

import torch
from torch._inductor.compiler_bisector import CompilerBisector

sys.path.insert(0, str(Path(__file__).resolve().parent))
from unet_grads import build, grads, wrong

net = build(2, add_attention=False)
ref = grads(net, net)


def test() -> bool:
    torch._dynamo.reset()
    other = copy.deepcopy(net)
    ok = not wrong(grads(torch.compile(other), other), ref)
    print("test ok" if ok else "test BAD", flush=True)
    return ok


print("first:", test())
print("RESULT", CompilerBisector.do_bisect(test))
