"""The competition's HTTP interface (`POST /predict`) around the released models.

    python serve.py --task ct [--host 127.0.0.1] [--port 9050] [--checkpoint PATH] [--device cpu] [--budget 8]

* The model is loaded once at start-up. `GET /` says the endpoint is running, `GET /api` gives service and uptime.
* Deadline: the service keeps a running estimate of the seconds per network evaluation and, when the default
  setting would run past `--budget` seconds counted from the request's arrival (time queued behind other
  requests included), degrades (fewer ensemble members first, then fewer steps). The setting used is in the
  `X-Sampler` response header and the log.
* Concurrency: one inference at a time behind an asyncio lock (a queue in arrival order): two inferences on two
  cores would each run at half speed and both risk the deadline, where one after the other the first answers at
  full speed. A request whose client has gone is dropped before it starts, and cancelled between sampler steps
  while it runs.
* Bad input: a 4xx with a JSON `{"detail": "FIELD: problem"}`; a server-side failure: a 500 with the request id,
  logged. The server keeps serving.
"""

import argparse
import asyncio
import base64
import binascii
import logging
import threading
import time
import uuid
from dataclasses import dataclass

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from diffusion.data.ct import NUM_VERTEBRA_LEVELS, SIZE
from diffusion.data.images import decode_png, encode_png
from diffusion.data.tumor import MAX_HEIGHT, MAX_WIDTH
from diffusion.errors import DataError, run_cli
from samplers import SamplerSpec

log = logging.getLogger("serve")
MAX_BODY_BYTES = 8 * 1024 * 1024  # a 256x256 or 400x991 PNG in base64 is far below this


class CTRequest(BaseModel):
    corrupted_image: str
    tissue_image: str
    mask_image: str
    vertebrae: int


class CTResponse(BaseModel):
    reconstructed_image: str


class TumorRequest(BaseModel):
    img: str


class TumorResponse(BaseModel):
    img: str


class Cancelled(Exception):
    """The client went away: stop sampling."""


class BadInput(Exception):
    def __init__(self, field: str, problem: str, status: int = 422):
        super().__init__(f"{field}: {problem}")
        self.status = status


def decode_field(value: str, field: str, grey: bool = True) -> np.ndarray:
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadInput(field, "not valid base64") from None
    try:
        return decode_png(raw, grey=grey, what=field)
    except DataError as exc:
        raise BadInput(field, str(exc).split(": ", 1)[-1]) from None


def encode_field(image: np.ndarray) -> str:
    return base64.b64encode(encode_png(image)).decode("ascii")


@dataclass
class Plan:
    spec: SamplerSpec
    ensemble: int

    def __str__(self) -> str:
        return f"{self.spec} E={self.ensemble}"


class Deadline:
    """Chooses the largest setting (ensemble first, then steps) whose estimated time fits the budget."""

    def __init__(self, budget_s: float, seconds_per_nfe: float):
        self.budget_s = budget_s
        self.seconds_per_nfe = seconds_per_nfe  # per network evaluation of one sample, updated from every request

    def plan(self, spec: SamplerSpec, ensemble: int, waited_s: float = 0.0) -> Plan:
        """`waited_s`: seconds the request already spent queued behind others; they count against the budget,
        so an answer is late neither because the model is slow nor because the queue is long."""
        budget = self.budget_s - waited_s
        fits = lambda s, e: s.nfe * e * self.seconds_per_nfe <= budget
        while ensemble > 1 and not fits(spec, ensemble):
            ensemble -= 1
        while spec.steps > 1 and spec.name != "distilled" and not fits(spec, ensemble):  # a student has one grid
            spec = SamplerSpec(spec.name, max(1, spec.steps // 2), spec.jumps)
        if spec.name == "repaint" and not fits(spec, ensemble):
            spec = SamplerSpec("ddim", 1)
        return Plan(spec, ensemble)

    def observe(self, seconds: float, nfe: int) -> None:
        if nfe > 0:
            self.seconds_per_nfe = 0.7 * self.seconds_per_nfe + 0.3 * seconds / nfe


def seconds_per_evaluation(service, inputs: dict, repeats: int = 2) -> float:
    """The fastest of `repeats` one-member predictions with the default sampler (the first also warms the kernels
    up), per network evaluation. The default sampler, not `ddim:1`: a regressor or student runs nothing else."""
    spec = service.default_plan().spec
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        service.predict(inputs, Plan(spec, 1))
        times.append(time.perf_counter() - start)
    return min(times) / spec.nfe


class CTService:
    name = "ct-inpainting"
    request_model, response_model = CTRequest, CTResponse

    def __init__(self, inpainter):
        self.inpainter = inpainter

    def parse(self, req: CTRequest) -> dict:
        images = {}
        for field in ("corrupted_image", "tissue_image", "mask_image"):
            image = decode_field(getattr(req, field), field)
            if image.shape != (SIZE, SIZE):
                raise BadInput(field, f"expected {SIZE}x{SIZE} pixels, got {image.shape[1]}x{image.shape[0]}")
            images[field] = image
        bad = np.setdiff1d(np.unique(images["mask_image"]), (0, 255))
        if bad.size:
            raise BadInput("mask_image", f"values must be only 0 and 255, found {bad[:5].tolist()}")
        bad = np.setdiff1d(np.unique(images["tissue_image"]), (0, 100, 255))
        if bad.size:
            raise BadInput("tissue_image", f"values must be only 0, 100 and 255, found {bad[:5].tolist()}")
        if not 0 <= req.vertebrae < NUM_VERTEBRA_LEVELS:
            raise BadInput("vertebrae", f"{req.vertebrae} out of range 0..{NUM_VERTEBRA_LEVELS - 1}")
        return {"corrupted": images["corrupted_image"][None], "missing_mask": (images["mask_image"][None] > 0)
                .astype(np.uint8), "tissue": images["tissue_image"][None], "vertebra": np.array([req.vertebrae])}

    def default_plan(self) -> Plan:
        spec, ensemble = self.inpainter.default_spec()
        return Plan(spec, ensemble)

    def predict(self, inputs: dict, plan: Plan, callback=None) -> dict:
        from diffusion.inference import to_uint8

        pred = self.inpainter.predict_batch(**inputs, spec=plan.spec, ensemble=plan.ensemble, seeds=[0],
                                            callback=callback)[0]
        return {"reconstructed_image": encode_field(to_uint8(pred.image))}

    def warm_up(self) -> float:
        """Seconds per network evaluation, from 1-step predictions on a blank slice."""
        blank = np.zeros((1, SIZE, SIZE), np.uint8)
        return seconds_per_evaluation(self, {"corrupted": blank, "missing_mask": blank, "tissue": blank,
                                             "vertebra": np.array([0])})


class TumorService:
    name = "tumor-segmentation"
    request_model, response_model = TumorRequest, TumorResponse

    def __init__(self, segmenter):
        self.segmenter = segmenter

    def parse(self, req: TumorRequest) -> dict:
        rgb = decode_field(req.img, "img", grey=False)
        h, w = rgb.shape[:2]
        if not (1 <= h <= MAX_HEIGHT and 1 <= w <= MAX_WIDTH):
            raise BadInput("img", f"{w}x{h} pixels is outside the competition's bounds (width <= {MAX_WIDTH}, "
                                  f"height <= {MAX_HEIGHT})")
        if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
            raise BadInput("img", "the three colour channels must be identical (a grey PET MIP)")
        return {"image": rgb[..., 0]}

    def default_plan(self) -> Plan:
        spec, ensemble = self.segmenter.default_spec()
        return Plan(spec, ensemble)

    def predict(self, inputs: dict, plan: Plan, callback=None) -> dict:
        pred = self.segmenter.predict(inputs["image"], spec=plan.spec, ensemble=plan.ensemble, callback=callback)
        return {"img": encode_field(np.repeat(pred.image[..., None], 3, 2))}

    def warm_up(self) -> float:
        """Seconds per network evaluation, from 1-step predictions on a blank image of the largest size."""
        return seconds_per_evaluation(self, {"image": np.full((MAX_HEIGHT, MAX_WIDTH), 255, np.uint8)})


def create_app(service, budget_s: float = 8.0, seconds_per_nfe: float | None = None) -> FastAPI:
    """The FastAPI app for one task's service (`CTService` or `TumorService`). `seconds_per_nfe=None` measures it at start-up."""
    app = FastAPI(title=f"dmiai-diffusion {service.name}")
    started = time.time()
    lock = asyncio.Lock()
    deadline = Deadline(budget_s, seconds_per_nfe if seconds_per_nfe is not None else service.warm_up())
    app.state.deadline, app.state.service = deadline, service
    request_model = service.request_model

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
            return JSONResponse({"detail": f"body: {int(length)} bytes is over the limit of {MAX_BODY_BYTES}"},
                                status_code=413)
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        problems = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
            problems.append(f"{field}: {err.get('msg', 'invalid')}")
        return JSONResponse({"detail": "; ".join(problems)}, status_code=422)

    @app.get("/")
    def index():
        return {"message": f"{service.name} endpoint is running"}

    @app.get("/api")
    def api():
        return {"service": service.name, "uptime": f"{time.time() - started:.1f}s"}

    @app.post("/predict", response_model=service.response_model)
    async def predict(body: request_model, request: Request):  # type: ignore[valid-type]
        request_id = uuid.uuid4().hex[:8]
        arrived = time.perf_counter()
        try:
            inputs = service.parse(body)
        except BadInput as exc:
            log.info("request %s rejected: %s", request_id, exc)
            return JSONResponse({"detail": str(exc)}, status_code=exc.status)
        async with lock:
            if await request.is_disconnected():
                log.info("request %s dropped: client disconnected while queued", request_id)
                return JSONResponse({"detail": "client disconnected"}, status_code=499)
            # the budget counts from the request's arrival: time spent queued leaves less for sampling
            default = service.default_plan()
            plan = deadline.plan(default.spec, default.ensemble, waited_s=time.perf_counter() - arrived)
            cancel = threading.Event()

            def callback(_state):
                if cancel.is_set():
                    raise Cancelled()

            watcher = asyncio.create_task(_watch_disconnect(request, cancel))
            start = time.perf_counter()
            try:
                result = await asyncio.to_thread(service.predict, inputs, plan, callback)
            except Cancelled:
                log.info("request %s cancelled: client disconnected", request_id)
                return JSONResponse({"detail": "client disconnected"}, status_code=499)
            except Exception:
                log.exception("request %s failed", request_id)
                return JSONResponse({"detail": f"internal error (request id {request_id})"}, status_code=500)
            finally:
                watcher.cancel()
            seconds = time.perf_counter() - start
            deadline.observe(seconds, plan.spec.nfe * plan.ensemble)
        log.info("request %s: %s in %.2fs (%.2fs with queue)", request_id, plan, seconds,
                 time.perf_counter() - arrived)
        return JSONResponse(result, headers={"X-Sampler": str(plan), "X-Request-Id": request_id,
                                             "X-Seconds": f"{seconds:.3f}"})

    return app


async def _watch_disconnect(request: Request, cancel: threading.Event) -> None:
    while not cancel.is_set():
        if await request.is_disconnected():
            cancel.set()
            return
        await asyncio.sleep(0.1)


def build_service(task: str, checkpoint: str | None, device: str):
    if task == "ct":
        from diffusion.inference import CTInpainter

        return CTService(CTInpainter.from_checkpoint(checkpoint, device=device))
    from diffusion.inference import TumorSegmenter

    return TumorService(TumorSegmenter.from_checkpoint(checkpoint, device=device))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", required=True, choices=["ct", "tumor"])
    p.add_argument("--host", default="127.0.0.1", help="127.0.0.1 (default, loopback) or 0.0.0.0 for all interfaces")
    p.add_argument("--port", type=int, default=9050)
    p.add_argument("--checkpoint", default=None, help="slim checkpoint (default: the released one of the task)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--budget", type=float, default=8.0, help="seconds of sampling a request may take")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    import uvicorn

    service = build_service(args.task, args.checkpoint, args.device)
    app = create_app(service, budget_s=args.budget)
    log.info("serving %s on http://%s:%d (budget %.1fs, %.3fs per network evaluation)", service.name, args.host,
             args.port, args.budget, app.state.deadline.seconds_per_nfe)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


if __name__ == "__main__":
    run_cli(main)
