"""The competition's HTTP interface (`POST /predict`) around the released models.

    python serve.py --task ct [--host 127.0.0.1] [--port 9050] [--checkpoint PATH] [--device cpu] [--budget 8]
    dmiai-serve --task tumor      # the same, as the installed console command

The request and response formats are the task's codec (`diffusion/tasks/<task>/codec.py`: `request_model`,
`parse_request`, `encode_response`); this file knows no task.

* The model is loaded once at start-up. `GET /` says the endpoint is running, `GET /api` gives service and uptime.
* Deadline: the service keeps a running estimate of the seconds per network evaluation (at the largest input size,
  scaled by each request's pixels: a tall PET image costs more than a short one) and, when the default setting
  would run past `--budget` seconds counted from the request's arrival (time queued behind other requests
  included), degrades (fewer ensemble members first, then, for a checkpoint of several networks such as a fold
  ensemble, fewer networks, then fewer steps). The setting used is in the `X-Sampler` response header and the log.
* Concurrency: one inference at a time behind an asyncio lock (a queue in arrival order): two inferences on two
  cores would each run at half speed and both risk the deadline, where one after the other the first answers at
  full speed. A request whose client has gone is dropped before it starts, and cancelled between sampler steps
  while it runs.
* Bad input: a 4xx with a JSON `{"detail": "FIELD: problem"}`; a server-side failure: a 500 with the request id,
  logged. The server keeps serving.
"""

import argparse
import asyncio
import logging
import threading
import time
import uuid
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from diffusion.codec import BadInput
from diffusion.errors import run_cli
from diffusion.inference import case_pixels, load_predictor
from diffusion.tasks import task_names
from samplers import SamplerSpec

log = logging.getLogger("serve")
MAX_BODY_BYTES = 8 * 1024 * 1024  # a 256x256 or 400x991 PNG in base64 is far below this


class Cancelled(Exception):
    """The client went away: stop sampling."""


@dataclass
class Plan:
    spec: SamplerSpec
    ensemble: int
    networks: int = 1  # networks used of the checkpoint's `of` (`Predictor.with_networks`)
    of: int = 1

    def __str__(self) -> str:
        return f"{self.spec} E={self.ensemble}" + (f" N={self.networks}/{self.of}" if self.networks < self.of else "")

    @property
    def evaluations(self) -> float:
        """Network evaluations per image in units of the whole checkpoint's (all its networks): what the estimate of
        seconds per evaluation is counted in."""
        return self.spec.nfe * self.ensemble * self.networks / self.of


class Deadline:
    """Chooses the largest setting (ensemble first, then networks, then steps) whose estimated time fits the
    budget."""

    def __init__(self, budget_s: float, seconds_per_nfe: float):
        self.budget_s = budget_s
        # per network evaluation of one sample at the reference size (scale 1: the largest input the task takes),
        # updated from every request
        self.seconds_per_nfe = seconds_per_nfe

    def plan(self, spec: SamplerSpec, ensemble: int, waited_s: float = 0.0, scale: float = 1.0,
             networks: int = 1) -> Plan:
        """`waited_s`: seconds the request already spent queued behind others; they count against the budget,
        so an answer is late neither because the model is slow nor because the queue is long. `scale`: the
        request's size over the reference size (its pixels over the largest input's). `networks`: the checkpoint's
        networks (a fold ensemble's), of which a plan may use fewer once one member each does not fit."""
        budget = self.budget_s - waited_s
        fits = lambda s, e, k=networks: Plan(s, e, k, networks).evaluations * self.seconds_per_nfe * scale <= budget
        while ensemble > 1 and not fits(spec, ensemble):
            ensemble -= 1
        used = networks
        while used > 1 and not fits(spec, ensemble, used):
            used -= 1
        while spec.steps > 1 and spec.name != "distilled" and not fits(spec, ensemble, used):  # a student: one grid
            spec = SamplerSpec(spec.name, max(1, spec.steps // 2), spec.jumps)
        if spec.name == "repaint" and not fits(spec, ensemble, used):
            spec = SamplerSpec("ddim", 1)
        return Plan(spec, ensemble, used, networks)

    def observe(self, seconds: float, nfe: float, scale: float = 1.0) -> None:
        """A request's time and its evaluations (`Plan.evaluations`) update the estimate."""
        if nfe > 0:
            self.seconds_per_nfe = 0.7 * self.seconds_per_nfe + 0.3 * seconds / nfe / scale


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


class Service:
    """A task's predictor behind the competition's interface: the task decodes the request and encodes the answer."""

    def __init__(self, predictor):
        self.predictor = predictor
        self.task = predictor.task
        self.name = self.task.codec.service_name
        self.request_model, self.response_model = self.task.codec.request_model, self.task.codec.response_model

    def parse(self, request) -> dict:
        return self.task.codec.parse_request(request)

    def default_plan(self, inputs: dict | None = None) -> Plan:
        """The checkpoint's own setting, all its networks; for `inputs`, the ensemble their size gets
        (`Predictor.ensemble_for`)."""
        spec, ensemble = self.predictor.default_spec()
        networks = len(self.predictor.models)
        return Plan(spec, ensemble if inputs is None else self.predictor.ensemble_for(inputs), networks, networks)

    def predict(self, inputs: dict, plan: Plan, callback=None) -> dict:
        predictor = self.predictor.with_networks(plan.networks if plan.networks < plan.of else None)  # else all
        prediction = predictor.predict_one(inputs, spec=plan.spec, ensemble=plan.ensemble, seed=0, callback=callback)
        return self.task.codec.encode_response(self.task.output_image(prediction))

    def warm_up(self) -> float:
        """Seconds per network evaluation, from 1-member predictions on blank inputs of the largest size."""
        return seconds_per_evaluation(self, self.task.codec.warm_up_inputs())


def create_app(service, budget_s: float = 8.0, seconds_per_nfe: float | None = None) -> FastAPI:
    """The FastAPI app for one task's `Service`. `seconds_per_nfe=None` measures it at start-up."""
    app = FastAPI(title=f"dmiai-diffusion {service.name}")
    started = time.time()
    lock = asyncio.Lock()
    deadline = Deadline(budget_s, seconds_per_nfe if seconds_per_nfe is not None else service.warm_up())
    reference_pixels = max(case_pixels(service.task.codec.warm_up_inputs()), 1)  # what warm_up measured at
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
            default = service.default_plan(inputs)
            scale = case_pixels(inputs) / reference_pixels
            plan = deadline.plan(default.spec, default.ensemble, waited_s=time.perf_counter() - arrived, scale=scale,
                                 networks=default.of)
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
            deadline.observe(seconds, plan.evaluations, scale=scale)
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


def build_service(task: str, checkpoint: str | None, device: str) -> Service:
    return Service(load_predictor(task, checkpoint, device=device))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", required=True, choices=task_names())
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


def cli() -> None:
    """Console entry point `dmiai-serve`."""
    run_cli(main)


if __name__ == "__main__":
    cli()
