import pytest
import torch

from samplers import SAMPLERS, parse_spec, repaint_jump_schedule, spaced_timesteps
from samplers.ensemble import reduce_ensemble, sample_noise


class OracleDenoiser(torch.nn.Module):
    """A dummy model that always predicts the same clean image; it records the timesteps it was called at."""

    def __init__(self, x0, T=1000):
        super().__init__()
        self.x0 = x0
        self.num_train_timesteps = T
        self.alphas_cumprod = torch.linspace(0.9999, 0.0001, T)
        self.calls = []

    def forward(self, x, t, **extra):
        self.calls.append(int(t))
        a = self.alphas_cumprod[int(t)]
        eps = (x - a.sqrt() * self.x0) / (1 - a).sqrt()
        return self.x0.expand_as(x), eps


@pytest.mark.parametrize("steps, jump_length, jump_n", [(10, 2, 3), (50, 10, 10), (7, 3, 1), (1, 1, 5), (25, 5, 2)])
def test_jump_schedule_invariants(steps, jump_length, jump_n):
    pos = repaint_jump_schedule(steps, jump_length, jump_n)
    assert pos[0] == steps - 1 and pos[-1] == -1
    moves = [b - a for a, b in zip(pos[:-1], pos[1:])]
    assert set(moves) <= {-1, 1}
    assert min(pos) == -1 and max(pos) == steps - 1
    n_jump_points = len(range(0, steps - jump_length, jump_length))
    assert moves.count(1) == (jump_n - 1) * jump_length * n_jump_points
    assert moves.count(-1) == steps + moves.count(1)  # every re-noised step is denoised again
    assert pos.count(-1) == 1


def test_spaced_timesteps():
    assert spaced_timesteps(1000, 4) == [999, 749, 499, 249]
    assert spaced_timesteps(1000, 1) == [999]
    ts = spaced_timesteps(1000, 1000)
    assert ts == list(range(999, -1, -1))
    with pytest.raises(ValueError):
        spaced_timesteps(1000, 0)


@pytest.mark.parametrize("spec", ["ddim:1", "ddim:5", "ddpm:20", "repaint:10x3"])
def test_samplers_return_the_oracle_image(spec):
    torch.manual_seed(0)
    target = torch.rand(2, 1, 8, 8) * 2 - 1
    s = parse_spec(spec)
    model = OracleDenoiser(target)
    out = SAMPLERS[s.name](model, torch.randn(2, 1, 8, 8), spaced_timesteps(1000, s.steps), **s.knobs())
    assert torch.allclose(out, target, atol=1e-4)
    assert len(model.calls) == s.nfe
    assert model.calls[0] == 999


def test_known_pixels_are_replaced_by_noised_truth():
    """With a model that predicts 0 everywhere, the sampler's x_t must still carry the truth in the known region."""
    truth = torch.full((1, 1, 16, 16), 0.5)
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., :8] = 1
    seen = []

    class Spy(OracleDenoiser):
        def forward(self, x, t, **extra):
            seen.append(x.clone())
            return super().forward(x, t, **extra)

    model = Spy(torch.zeros(1, 1, 16, 16))
    SAMPLERS["ddim"](model, torch.randn(1, 1, 16, 16), [999, 10], known={"x0": truth, "mask": mask},
                     generator=torch.Generator().manual_seed(0))
    a = model.alphas_cumprod[10]
    # at t=10 the known region is sqrt(a) * 0.5 plus noise of std sqrt(1 - a) = 0.1; the rest follows the model (0)
    assert abs(seen[1][..., :8].mean() - a.sqrt() * 0.5) < 0.05
    assert abs(seen[1][..., 8:].mean()) < 0.05


def test_parse_spec_rejects_malformed():
    assert (parse_spec("repaint:50x10").steps, parse_spec("repaint:50x10").jumps) == (50, 10)
    for bad in ["ddim", "ddim:", "warp:4", "ddim:abc", "ddim:0", "ddim:4x2", "repaint:10x0"]:
        with pytest.raises(ValueError, match="sampler spec"):
            parse_spec(bad)


def test_ensemble_median_and_spread():
    samples = torch.tensor([[0.0, 1.0], [10.0, 1.0], [2.0, 1.0]])
    reduced, spread = reduce_ensemble(samples, "median")
    assert torch.equal(reduced, torch.tensor([2.0, 1.0]))
    assert spread[0] > 0 and spread[1] == 0
    single, zero = reduce_ensemble(samples[:1])
    assert torch.equal(single, samples[0]) and torch.all(zero == 0)


def test_noise_is_per_sample_seeded():
    a = sample_noise((1, 4, 4), [5, 6, 7])
    b = sample_noise((1, 4, 4), [6])
    assert torch.equal(a[1], b[0]) and not torch.equal(a[0], a[1])


def test_flip_members_see_the_mirrored_input_and_are_mirrored_back():
    """A model that answers with its condition's first channel: flipped members must come back unmirrored."""
    import torch

    from diffusion.inference import Predictor

    class Echo(torch.nn.Module):
        num_train_timesteps = 1000
        alphas_cumprod = torch.linspace(0.999, 0.001, 1000)

        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(1, 1)
            self.seen = []

        def forward(self, x, t, cond=None, class_labels=None):
            self.seen.append(cond.clone())
            return cond[:, :1], torch.zeros_like(x)

    config = {"task": "tumor", "model": {"block_out_channels": [8]}, "sample": {"flip": True}}
    predictor = Predictor(Echo(), config, bf16=False)
    from samplers import SamplerSpec

    cond = torch.arange(8.0).view(1, 1, 2, 4).repeat(1, 2, 1, 1)
    x0 = predictor.sample(cond, None, SamplerSpec("ddim", 1), 2, [0])
    seen = predictor.denoiser.seen[0]
    assert torch.equal(seen[0], cond[0]) and torch.equal(seen[1], cond[0].flip(-1))  # member 1 saw the mirror
    assert torch.equal(x0[0], cond[0, :1]) and torch.equal(x0[1], cond[0, :1])       # both answers unmirrored
