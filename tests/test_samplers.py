import pytest
import torch

from samplers import SAMPLERS, parse_spec, repaint_jump_schedule, spaced_timesteps
from samplers.ensemble import reduce_ensemble, sample_noise


class OracleDenoiser(torch.nn.Module):
    """A dummy model that always predicts the same clean image; it records the timesteps it was called at, and
    checks they arrive as the model's contract says: one per sample, on the sample's device."""

    def __init__(self, x0, T=1000):
        super().__init__()
        self.x0 = x0
        self.num_train_timesteps = T
        self.alphas_cumprod = torch.linspace(0.9999, 0.0001, T)
        self.calls = []

    def forward(self, x, t, **extra):
        assert t.shape == (x.shape[0],) and t.device == x.device and t.dtype == torch.long, (t, x.device)
        self.calls.append(int(t[0]))
        a = self.alphas_cumprod[int(t[0])]
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


class Echo(torch.nn.Module):
    """A network that answers with its condition's first channel and records what it saw."""
    num_train_timesteps = 1000
    alphas_cumprod = torch.linspace(0.999, 0.001, 1000)

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(1, 1)
        self.seen = []

    def forward(self, x, t, cond=None, class_labels=None):
        self.seen.append(cond.clone())
        return cond[:, :1], torch.zeros_like(x)


def test_flip_members_see_the_mirrored_input_and_are_mirrored_back():
    """Flipped members must come back unmirrored."""
    from diffusion.inference import Predictor

    config = {"task": "tumor", "model": {"block_out_channels": [8]}, "sample": {"flip": True}}
    predictor = Predictor(Echo(), config, bf16=False)
    from samplers import SamplerSpec

    cond = torch.arange(8.0).view(1, 1, 2, 4).repeat(1, 2, 1, 1)
    x0 = predictor.sample(cond, None, SamplerSpec("ddim", 1), 2, [0])
    seen = predictor.denoiser.seen[0]
    assert torch.equal(seen[0], cond[0]) and torch.equal(seen[1], cond[0].flip(-1))  # member 1 saw the mirror
    assert torch.equal(x0[0], cond[0, :1]) and torch.equal(x0[1], cond[0, :1])       # both answers unmirrored


def test_with_one_member_per_network_every_other_network_sees_the_mirror():
    """A fold ensemble sampled with one member per network keeps the flip augmentation across its networks (members
    numbered network by network); two members per network keep each network's own pair. Two inputs, so the
    member layout inside a batch (input-major) is checked too."""
    from diffusion.inference import Predictor
    from samplers import SamplerSpec

    config = {"task": "tumor", "model": {"block_out_channels": [8]}, "sample": {"flip": True}}
    cond = torch.arange(16.0).view(2, 1, 2, 4).repeat(1, 2, 1, 1)
    for ensemble, expected in [(1, [[False], [True], [False]]), (2, [[False, True]] * 3)]:
        nets = [Echo(), Echo(), Echo()]
        x0 = Predictor(nets, config, bf16=False).sample(cond, None, SamplerSpec("ddim", 1), ensemble, [0, 1])
        for net, flips in zip(nets, expected):
            seen = net.seen[0]                                     # (inputs x members, C, H, W), input-major
            for i in range(2):
                for e, flipped in enumerate(flips):
                    want = cond[i].flip(-1) if flipped else cond[i]
                    assert torch.equal(seen[i * ensemble + e], want), (ensemble, nets.index(net), i, e)
        assert x0.shape[0] == 2 * 3 * ensemble
        assert torch.equal(x0, cond[:, :1].repeat_interleave(3 * ensemble, 0))  # every answer unmirrored
    single = Predictor(Echo(), config, bf16=False)                  # one network, one member: nothing to pair
    single.sample(cond, None, SamplerSpec("ddim", 1), 1, [0, 1])
    assert torch.equal(single.denoiser.seen[0], cond)


def test_with_networks_keeps_networks_spread_over_the_ensemble_and_the_mirror_alternating():
    """The service's degrade of a fold ensemble: k of n networks, network i * n // k (a two-run fold ensemble stored
    fold by fold keeps one network of every fold at k = n / 2), sampled as a k-network ensemble (members numbered
    over the kept networks, so with one member each every other kept network sees the mirror); all of them for None
    or n; a clear error outside 1..n."""
    from diffusion.errors import UserError
    from diffusion.inference import Predictor
    from samplers import SamplerSpec

    config = {"task": "tumor", "model": {"block_out_channels": [8]}, "sample": {"flip": True}}
    nets = [Echo() for _ in range(10)]
    predictor = Predictor(nets, config, bf16=False)
    for k, kept in [(5, [0, 2, 4, 6, 8]), (3, [0, 3, 6]), (2, [0, 5]), (1, [0])]:
        sub = predictor.with_networks(k)
        assert [nets.index(m) for m in sub.models] == kept and sub.denoiser is nets[0]
    assert predictor.with_networks(None) is predictor and predictor.with_networks(10) is predictor
    assert len(predictor.models) == 10                                  # the original is untouched
    cond = torch.arange(8.0).view(1, 1, 2, 4).repeat(1, 2, 1, 1)
    x0 = predictor.with_networks(5).sample(cond, None, SamplerSpec("ddim", 1), 1, [0])
    assert x0.shape[0] == 5 and [len(n.seen) for n in nets] == [1, 0] * 5  # only the kept networks ran
    for j, i in enumerate([0, 2, 4, 6, 8]):
        assert torch.equal(nets[i].seen[0][0], cond[0].flip(-1) if j % 2 else cond[0]), i
    for bad in (0, 11):
        with pytest.raises(UserError, match=f"networks={bad}: this model has 10"):
            predictor.with_networks(bad)


def test_inputs_larger_than_ensemble_max_pixels_get_one_member_per_network():
    """The size rule of `sample.ensemble_max_pixels`: the checkpoint's ensemble up to that many pixels, one pass per
    network above (every other network on the mirror), an explicit ensemble as asked, and no rule without the key."""
    import numpy as np

    from diffusion.inference import Predictor

    sample = {"sampler": "regressor", "steps": 1, "flip": True, "ensemble": 2, "ensemble_max_pixels": 100}
    config = {"task": "tumor", "model": {"block_out_channels": [8]}, "diffusion": {"objective": "regress"},
              "sample": sample}
    small = {"image": np.arange(100, dtype=np.uint8).reshape(10, 10)}             # 100 pixels
    large = {"image": np.arange(128, dtype=np.uint8).reshape(16, 8)}              # 128 pixels
    nets = [Echo(), Echo()]
    predictor = Predictor(nets, config, bf16=False)
    for inputs, ensemble, members in [(small, None, 2), (large, None, 1), (large, 2, 2), (small, 1, 1)]:
        assert predictor.ensemble_for(inputs, ensemble) == members
        predictor.predict_one(inputs, ensemble=ensemble)
        assert [net.seen[-1].shape[0] for net in nets] == [members, members], (inputs["image"].shape, ensemble)
    image = nets[1].seen[-1][0, 0]
    assert torch.equal(nets[0].seen[-1][0, 0], image.flip(-1))  # one pass each: the second network saw the mirror
    assert Predictor(nets, {**config, "sample": {**sample, "ensemble_max_pixels": None}}, bf16=False) \
        .ensemble_for(large) == 2


def tiny_denoiser(prediction_type: str = "sample", cond_channels: int = 2, classes: int | None = None):
    from diffusion.denoiser import Denoiser
    from diffusion.network import build_unet

    torch.manual_seed(0)
    net = build_unet({"block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4},
                     in_channels=1 + cond_channels, out_channels=1, num_class_embeds=classes)
    return Denoiser(net, prediction_type=prediction_type, null_class=classes - 1 if classes else None,
                    class_dropout=0.1 if classes else 0.0)


@pytest.mark.parametrize("spec", ["ddim:2", "ddpm:3", "repaint:4x2", "distilled:2", "regressor:1"])
def test_every_sampler_creates_its_tensors_on_the_sample_device(spec):
    """The network and the inputs on the `meta` device: a timestep, noise or coefficient made on the CPU (what
    breaks CUDA sampling) fails with 'Tensor on device cpu is not on the expected device meta'."""
    s = parse_spec(spec)
    model = tiny_denoiser(classes=3).to("meta")
    n = 2
    x = torch.randn(n, 1, 16, 16, device="meta")
    extra = {"cond": torch.randn(n, 2, 16, 16, device="meta"), "class_labels": torch.zeros(n, dtype=torch.long,
                                                                                              device="meta")}
    known = {"x0": torch.zeros(n, 1, 16, 16, device="meta"), "mask": torch.ones(n, 1, 16, 16, device="meta")}
    out = SAMPLERS[s.name](model, x, spaced_timesteps(1000, s.steps), extra_args=extra, known=known, **s.knobs())
    assert out.device.type == "meta" and out.shape == x.shape


@pytest.mark.parametrize("prediction_type", ["sample", "epsilon", "v_prediction"])
def test_one_training_step_creates_its_tensors_on_the_model_device(prediction_type):
    from diffusion.distill import DistillationLoss

    model = tiny_denoiser(prediction_type, classes=3).to("meta").train()
    x0 = torch.zeros(2, 1, 16, 16, device="meta")
    cond = torch.zeros(2, 2, 16, 16, device="meta")
    labels = torch.zeros(2, dtype=torch.long, device="meta")
    weight = torch.ones(2, 1, 16, 16, device="meta")
    model.loss(x0, cond, labels, weight).mean().backward()
    teacher = tiny_denoiser(prediction_type, classes=3).to("meta").eval()
    distill = DistillationLoss(model, teacher, 2, known_fn=lambda target, c: {"x0": c[:, :1], "mask": c[:, 1:2]})
    distill(x0, cond, labels, weight).mean().backward()


class SmoothModel(torch.nn.Module):
    """Not an oracle: its clean-image estimate is a fixed smooth function of (x_t, t) inside [-1, 1] (so no
    clamping), given in the requested parameterisation."""

    def __init__(self, prediction_type: str):
        super().__init__()
        from diffusers import DDPMScheduler

        self.prediction_type = prediction_type
        torch.manual_seed(1)
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)
        self.abar = DDPMScheduler(beta_schedule="squaredcos_cap_v2").alphas_cumprod

    def raw(self, x, t):
        x0 = 0.5 * torch.tanh(self.conv(x) + t.view(-1, 1, 1, 1) / 1000.0)
        a = self.abar[t.long()].view(-1, 1, 1, 1)
        alpha, sigma = a.sqrt(), (1 - a).sqrt()
        if self.prediction_type == "epsilon":
            return (x - alpha * x0) / sigma
        if self.prediction_type == "v_prediction":
            return (alpha * x - x0) / sigma
        return x0


@pytest.mark.parametrize("steps", [1, 2, 5, 10])
@pytest.mark.parametrize("prediction_type", ["sample", "epsilon", "v_prediction"])
def test_ddim_and_ddpm_steps_match_diffusers_schedulers(steps, prediction_type):
    """The deterministic DDIM (eta 0) and ancestral DDPM chains agree with diffusers' DDIMScheduler and
    DDPMScheduler step by step, for a model that is not an oracle (the oracle test passes with wrong coefficients)."""
    from diffusers import DDIMScheduler, DDPMScheduler

    from diffusion.denoiser import Denoiser

    smooth = SmoothModel(prediction_type)

    class Net(torch.nn.Module):  # the UNet's calling convention around the smooth model
        def __init__(self):
            super().__init__()
            self.smooth = smooth

        def forward(self, xc, t, class_labels=None):
            from types import SimpleNamespace
            return SimpleNamespace(sample=self.smooth.raw(xc[:, :1], t))

    model = Denoiser(Net(), prediction_type=prediction_type)
    cond = torch.zeros(2, 0, 8, 8)
    x_start = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.5
    common = dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type=prediction_type,
                  clip_sample=False, timestep_spacing="trailing")
    with torch.no_grad():
        ddim = DDIMScheduler(**common, set_alpha_to_one=True)
        ddim.set_timesteps(steps)
        assert ddim.timesteps.tolist() == spaced_timesteps(1000, steps)
        x = x_start.clone()
        for t in ddim.timesteps:
            x = ddim.step(smooth.raw(x, t.expand(2)), t, x).prev_sample
        ours = SAMPLERS["ddim"](model, x_start.clone(), spaced_timesteps(1000, steps), extra_args={"cond": cond})
        assert torch.allclose(ours, x, atol=1e-5), float((ours - x).abs().max())

        ddpm = DDPMScheduler(**common, variance_type="fixed_small")
        ddpm.set_timesteps(steps)
        generator = torch.Generator().manual_seed(3)
        x = x_start.clone()
        for t in ddpm.timesteps:
            x = ddpm.step(smooth.raw(x, t.expand(2)), t, x, generator=generator).prev_sample
        ours = SAMPLERS["ddpm"](model, x_start.clone(), spaced_timesteps(1000, steps), extra_args={"cond": cond},
                                generator=torch.Generator().manual_seed(3))
        assert torch.allclose(ours, x, atol=1e-4), float((ours - x).abs().max())


def test_a_member_does_not_depend_on_the_batch_it_is_sampled_in():
    """Per-member generators: two inputs sampled together give what each gives alone (ancestral noise and
    known-pixel noise included), so in-training validation (one batch) and infer.py (one at a time) agree."""
    from diffusion.inference import Predictor
    from samplers import SamplerSpec

    model = tiny_denoiser(cond_channels=4)
    predictor = Predictor(model, {"task": "ct", "model": {"block_out_channels": [8, 16]}}, bf16=False)
    cond = torch.rand(2, 4, 16, 16)
    known = cond[:, :1], (cond[:, 1:2] > 0.5).float()
    for spec in (SamplerSpec("ddpm", 3), SamplerSpec("repaint", 4, 2)):
        both = predictor.sample(cond, None, spec, 2, [5, 9], known_x0=known[0], known_mask=known[1])
        alone = predictor.sample(cond[1:], None, spec, 2, [9], known_x0=known[0][1:], known_mask=known[1][1:])
        # float rounding differs with the batch size (~1e-6, conv kernels); a batch-dependent noise draw differs by ~1
        assert torch.allclose(both[2:], alone, atol=1e-4), float((both[2:] - alone).abs().max())
        assert not torch.allclose(both[0], both[1])  # members differ
