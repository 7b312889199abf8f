"""Compiled vs eager gradients of the tumor segmenter's training loss on one batch (same weights, same batch).

    OMP_NUM_THREADS=1 python checkpoints/wip/compile_grad_check.py   # about 2 min (three compilations)
    OMP_NUM_THREADS=1 python checkpoints/wip/compile_grad_check.py --contiguous   # the network not channels_last
    OMP_NUM_THREADS=1 python checkpoints/wip/compile_grad_check.py --no-layout-optimization   # inductor's layout pass off

Prints, for eager bf16, compiled fp32 and compiled bf16 against eager fp32, the loss and the relative difference of
all gradients, then every parameter whose compiled gradient is more than 5 % off (2026-12-07, torch 2.13: 154 of
184, most of them exactly zero: from down_blocks.0.downsamplers on, the network got no gradient).
"""
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import train_diffusion as T
from diffusion.config import load_config
from diffusion.inference import build_denoiser
from diffusion.tasks import get_task

if "--no-layout-optimization" in sys.argv:
    import torch._inductor.config
    torch._inductor.config.layout_optimization = False
torch.manual_seed(0)
config = load_config(str(Path(__file__).resolve().parents[2] / "configs/tumor_folds_cpu.yaml"))
task = get_task("tumor", config["data"])
base = build_denoiser(config)
if "--contiguous" not in sys.argv:
    base.net.to(memory_format=torch.channels_last)
n, h, w = 16, 192, 400
image = torch.randint(0, 256, (n, h, w), dtype=torch.uint8)
label = (torch.rand(n, h, w) > 0.97).to(torch.uint8)
batch = {"image": image, "label": label, "row0": torch.randint(0, 500, (n,))}
target, cond, labels, weight = task.training_batch(batch)

def grads(compiled, bf16):
    d = copy.deepcopy(base)
    if compiled:
        d.net.compile()
    loss_module = T.make_loss(config, task, d, None, "cpu")
    torch.manual_seed(1)
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else torch.autocast("cpu", enabled=False)
    with ctx:
        loss = loss_module(target, cond, labels, weight).mean()
    loss.backward()
    return float(loss), {k: p.grad.detach().clone() for k, p in d.net.named_parameters()}

ref_loss, ref = grads(False, False)
for name, (c, b) in {"eager bf16": (False, True), "compiled fp32": (True, False), "compiled bf16": (True, True)}.items():
    loss, g = grads(c, b)
    num = sum(float((g[k] - ref[k]).norm() ** 2) for k in ref) ** 0.5
    den = sum(float(ref[k].norm() ** 2) for k in ref) ** 0.5
    worst = sorted(((float((g[k] - ref[k]).norm() / (ref[k].norm() + 1e-12)), k) for k in ref), reverse=True)[:4]
    print(f"{name}: loss {loss:.5f} (fp32 eager {ref_loss:.5f}); grad rel diff {num / den:.4f}; worst {[(round(a, 3), k) for a, k in worst]}", flush=True)

loss, g = grads(True, False)
bad = [(k, float(g[k].norm()), float(ref[k].norm())) for k in ref if float((g[k] - ref[k]).norm() / (ref[k].norm() + 1e-12)) > 0.05]
print("BAD", len(bad), "of", len(ref))
for k, a, b in bad: print("BAD", k, f"compiled {a:.3e} eager {b:.3e}")
