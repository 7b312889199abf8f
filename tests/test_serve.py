"""serve.py through FastAPI's test client: exact formats, bad inputs, the deadline."""
import base64
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

import serve
from diffusion.data.images import decode_png
from diffusion.inference import Predictor
from tests.conftest import b64, ct_request


@pytest.fixture(scope="module")
def slice_request():
    return ct_request(3)


@pytest.fixture(scope="module")
def client(trained_tiny):
    service = serve.Service(Predictor.from_checkpoint(trained_tiny / "last.safetensors"))
    with TestClient(serve.create_app(service, budget_s=8.0)) as c:
        yield c


def test_index_and_api(client):
    assert "running" in client.get("/").json()["message"]
    body = client.get("/api").json()
    assert body["service"] == "ct-inpainting" and "uptime" in body


def test_good_request_round_trips_in_competition_format(client, slice_request):
    r = client.post("/predict", json=slice_request)
    assert r.status_code == 200, r.text
    assert set(r.json()) == {"reconstructed_image"}
    image = decode_png(base64.b64decode(r.json()["reconstructed_image"]))
    assert image.shape == (256, 256) and image.dtype == np.uint8
    corrupted = decode_png(base64.b64decode(slice_request["corrupted_image"]))
    mask = decode_png(base64.b64decode(slice_request["mask_image"]))
    tissue = decode_png(base64.b64decode(slice_request["tissue_image"]))
    assert np.array_equal(image[mask == 0], corrupted[mask == 0]) and np.all(image[tissue == 0] == 0)
    assert "E=" in r.headers["x-sampler"]


def _bad_cases(good):
    grey = np.zeros((256, 256), np.uint8)
    return {
        "corrupted_image: not valid base64": {**good, "corrupted_image": "%%%not base64%%%"},
        "tissue_image: not a PNG": {**good, "tissue_image": base64.b64encode(b"GIF89a....").decode()},
        "mask_image: expected 256x256": {**good, "mask_image": b64(np.zeros((128, 256), np.uint8))},
        "mask_image: values must be only 0 and 255": {**good, "mask_image": b64(grey + 7)},
        "tissue_image: values must be only 0, 100 and 255": {**good, "tissue_image": b64(grey + 50)},
        "vertebrae:": {**good, "vertebrae": "L3"},
        "vertebrae: 40 out of range": {**good, "vertebrae": 40},
        "mask_image: Field required": {k: v for k, v in good.items() if k != "mask_image"},
    }


def test_each_bad_input_is_a_4xx_naming_the_field_and_the_server_keeps_serving(client, slice_request):
    for message, body in _bad_cases(slice_request).items():
        r = client.post("/predict", json=body)
        assert 400 <= r.status_code < 500, (message, r.status_code)
        assert message in r.json()["detail"], (message, r.json())
        assert client.get("/").status_code == 200


def test_oversized_body_is_413(client):
    r = client.post("/predict", content=b"x" * (serve.MAX_BODY_BYTES + 1), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "body" in r.json()["detail"]
    assert client.get("/").status_code == 200


def test_server_error_is_500_with_request_id(trained_tiny, slice_request):
    service = serve.Service(Predictor.from_checkpoint(trained_tiny / "last.safetensors"))
    app = serve.create_app(service, seconds_per_nfe=0.01)
    service.predict = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom"))
    with TestClient(app) as c:
        r = c.post("/predict", json=slice_request)
        assert r.status_code == 500 and "request id" in r.json()["detail"]
        assert c.get("/").status_code == 200


def test_deadline_degrades_instead_of_overrunning(trained_tiny, slice_request):
    """Each network evaluation made to take 0.3 s: the default (ddim:2, ensemble 2) would take 1.2 s; with a
    0.5 s budget the service must drop to one member and one step."""
    inpainter = Predictor.from_checkpoint(trained_tiny / "last.safetensors")
    forward = inpainter.denoiser.forward

    def slow_forward(*args, **kwargs):
        time.sleep(0.3)
        return forward(*args, **kwargs)

    inpainter.denoiser.forward = slow_forward
    app = serve.create_app(serve.Service(inpainter), budget_s=0.5)
    assert app.state.deadline.seconds_per_nfe >= 0.3  # measured at start-up
    with TestClient(app) as c:
        r = c.post("/predict", json=slice_request)
    assert r.status_code == 200
    assert r.headers["x-sampler"] == "ddim:1 E=1"  # 1 evaluation instead of the default's 4
    assert float(r.headers["x-seconds"]) >= 0.3      # the slow model was really used


def test_deadline_plan_keeps_the_default_when_it_fits():
    from samplers import SamplerSpec

    d = serve.Deadline(8.0, 0.1)
    assert str(d.plan(SamplerSpec("ddim", 4), 4)) == "ddim:4 E=4"          # 1.6 s
    assert str(d.plan(SamplerSpec("ddim", 50), 4)) == "ddim:50 E=1"        # 5 s with one member
    assert str(d.plan(SamplerSpec("ddim", 200), 1)) == "ddim:50 E=1"       # halved until it fits
    assert d.plan(SamplerSpec("repaint", 50, 10), 1).spec.nfe * 0.1 <= 8.0


def test_deadline_counts_time_spent_queued():
    from samplers import SamplerSpec

    d = serve.Deadline(8.0, 0.1)
    assert str(d.plan(SamplerSpec("ddim", 4), 4, waited_s=0.0)) == "ddim:4 E=4"    # 1.6 s of 8
    assert str(d.plan(SamplerSpec("ddim", 4), 4, waited_s=7.0)) == "ddim:4 E=2"    # 0.8 s of the 1 s left
    assert str(d.plan(SamplerSpec("ddim", 4), 4, waited_s=9.0)) == "ddim:1 E=1"    # over: the cheapest answer


def test_deadline_scales_its_estimate_with_the_request_size():
    from samplers import SamplerSpec

    d = serve.Deadline(8.0, 5.0)                                              # 5 s per evaluation at full size
    assert str(d.plan(SamplerSpec("regressor", 1), 2, scale=0.5)) == "regressor:1 E=2"  # 5 s: a short image
    assert str(d.plan(SamplerSpec("regressor", 1), 2, scale=1.0)) == "regressor:1 E=1"  # 10 s would overrun
    d.observe(2.5, 1, scale=0.5)                     # a half-size request at 2.5 s is 5 s per evaluation at full size
    assert d.seconds_per_nfe == pytest.approx(5.0)


def test_deadline_drops_networks_after_members_and_before_steps():
    """A fold ensemble of 10 networks at 1 s per evaluation of all of them: members go first, then networks (as many
    as fit, at least one), then steps; the estimate counts a plan's evaluations in whole-ensemble units."""
    from samplers import SamplerSpec

    d = serve.Deadline(8.0, 1.0)
    reg = SamplerSpec("regressor", 1)
    assert str(d.plan(reg, 2, networks=10)) == "regressor:1 E=2"                     # 2 s: the default
    assert str(d.plan(reg, 2, waited_s=7.0, networks=10)) == "regressor:1 E=1"       # 1 s left: one member each
    assert str(d.plan(reg, 2, waited_s=7.5, networks=10)) == "regressor:1 E=1 N=5/10"  # 0.5 s: half the networks
    assert str(d.plan(reg, 2, waited_s=9.0, networks=10)) == "regressor:1 E=1 N=1/10"  # over: the cheapest answer
    assert str(d.plan(SamplerSpec("ddim", 4), 1, waited_s=7.7, networks=10)) == "ddim:2 E=1 N=1/10"  # 0.2 s
    assert str(d.plan(SamplerSpec("ddim", 4), 2, waited_s=7.7)) == "ddim:1 E=1"      # one network: steps only
    plan = d.plan(reg, 2, waited_s=7.5, networks=10)
    assert plan.evaluations == pytest.approx(0.5)
    d.observe(0.5, plan.evaluations)             # half the networks in 0.5 s: still 1 s for all of them
    assert d.seconds_per_nfe == pytest.approx(1.0)


def test_the_service_degrades_a_fold_ensemble_to_fewer_networks(trained_tumor_tiny):
    """Four networks of the tiny diffusion segmenter (ddim:2, 2 members each) at an estimated 1 s per evaluation of
    all four: the default (4 s), one member each (2 s) and three networks (1.5 s) overrun a 1.4 s budget, so the
    service answers with 2 of the 4 networks (the first and the third), one member each, both steps (1 s), and its
    answer is what those two networks give."""
    import torch

    from diffusion.data.images import decode_png
    from diffusion.inference import build_denoiser
    from tests.conftest import make_pet_case

    base = Predictor.from_checkpoint(trained_tumor_tiny / "last.safetensors")
    nets = []
    for i in range(4):  # four different networks: the first one's weights, each output bias shifted its own way
        net = build_denoiser(base.config)
        net.net.load_state_dict(base.denoiser.net.state_dict())
        with torch.no_grad():
            net.net.conv_out.bias += 0.3 * (i - 1.5)
        nets.append(net)
    predictor = Predictor(nets, base.config, checkpoint="four networks")
    service = serve.Service(predictor)
    image, _ = make_pet_case(np.random.default_rng(0), 991)
    with TestClient(serve.create_app(service, budget_s=1.4, seconds_per_nfe=1.0)) as c:
        r = c.post("/predict", json={"img": b64(image)})
    assert r.status_code == 200 and r.headers["x-sampler"] == "ddim:2 E=1 N=2/4", r.headers
    answer = decode_png(base64.b64decode(r.json()["img"]), grey=False)[..., 0]
    spec, inputs = predictor.default_spec()[0], {"image": image[..., 0]}  # the PET, as the codec parses it
    two = predictor.with_networks(2).predict_one(inputs, spec=spec, ensemble=1).image
    four = predictor.predict_one(inputs, spec=spec, ensemble=1).image
    assert np.array_equal(answer, two) and not np.array_equal(two, four)


def test_the_service_plans_each_request_at_its_own_size(trained_tumor_tiny):
    from tests.conftest import make_pet_case

    service = serve.Service(Predictor.from_checkpoint(trained_tumor_tiny / "last.safetensors"))
    app = serve.create_app(service, seconds_per_nfe=0.01)
    seen = []
    plan = app.state.deadline.plan
    app.state.deadline.plan = lambda *a, **k: seen.append(k["scale"]) or plan(*a, **k)
    image, _ = make_pet_case(np.random.default_rng(0), 437)
    with TestClient(app) as c:
        assert c.post("/predict", json={"img": b64(image)}).status_code == 200
    assert image.shape[0] == 437 and seen == [pytest.approx(437 / 991)]  # the request's rows over the tallest


def test_the_service_gives_inputs_over_ensemble_max_pixels_one_member_per_network(trained_tumor_tiny):
    """The checkpoint's size rule is what the service starts from (before any deadline cut): a short image gets the
    ensemble of 2, a taller one (over 400 x 450 pixels) one member."""
    from tests.conftest import make_pet_case

    predictor = Predictor.from_checkpoint(trained_tumor_tiny / "last.safetensors")
    service = serve.Service(predictor.with_sample(ensemble=2, ensemble_max_pixels=400 * 450))
    with TestClient(serve.create_app(service, seconds_per_nfe=1e-4)) as c:
        for rows, members in [(437, 2), (463, 1)]:
            image, _ = make_pet_case(np.random.default_rng(0), rows)
            r = c.post("/predict", json={"img": b64(image)})
            assert r.status_code == 200 and r.headers["x-sampler"].endswith(f"E={members}"), (rows, r.headers)


@pytest.fixture(scope="module")
def tumor_client(trained_tumor_tiny):

    service = serve.Service(Predictor.from_checkpoint(trained_tumor_tiny / "last.safetensors"))
    with TestClient(serve.create_app(service, budget_s=8.0)) as c:
        yield c


def test_tumor_request_round_trips_in_competition_format(tumor_client):
    from tests.conftest import make_pet_case

    image, _ = make_pet_case(np.random.default_rng(0), 437)
    r = tumor_client.post("/predict", json={"img": b64(image)})
    assert r.status_code == 200, r.text
    out = decode_png(base64.b64decode(r.json()["img"]), grey=False)
    assert out.shape == image.shape and set(np.unique(out)) <= {0, 255}
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 0], out[..., 2])
    assert tumor_client.get("/api").json()["service"] == "tumor-segmentation"


def test_tumor_bad_inputs(tumor_client):
    colour = np.zeros((400, 400, 3), np.uint8)
    colour[..., 0] = 255
    cases = {
        "img: not valid base64": {"img": "###"},
        "img: not a PNG": {"img": base64.b64encode(b"\xff\xd8\xff\xe0 jpeg").decode()},
        "img: 400x1200 pixels is outside": {"img": b64(np.zeros((1200, 400, 3), np.uint8))},
        "img: the three colour channels must be identical": {"img": b64(colour)},
        "img: Field required": {"image": "x"},
    }
    for message, body in cases.items():
        r = tumor_client.post("/predict", json=body)
        assert 400 <= r.status_code < 500 and message in r.json()["detail"], (message, r.text)
        assert tumor_client.get("/").status_code == 200
