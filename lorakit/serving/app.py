"""The ASGI app of ``lorakit serve`` (Starlette on uvicorn): routes, limits, dynamic batching, the active
experiment followed.

Every request's rows go to one queue; a batcher gathers what arrives within ``max_wait_ms`` (up to
``max_batch_rows`` rows) and hands it to the model thread as one call, where rows of experiments that share
a base model run in the same forward passes. Every bad request is a 4xx with ``{"error": "<one line>"}``
and never reaches the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import signal
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import attrs

from .metrics import ServerMetrics
from .pool import LoadRefused, ModelPool


@attrs.define(kw_only=True, frozen=True)
class ServeSettings:
    token: str | None = None
    max_wait_ms: float = 5.0
    max_batch_rows: int = 64
    max_body_bytes: int = 1_000_000
    max_texts: int = 256
    max_chars: int = 10_000
    follow_active: bool = False
    load_all: bool = False
    poll_s: float = 0.5


class BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Server:
    """The state behind the routes: the pool, its one model thread, the batch queue, the active pointer."""

    def __init__(self, pool: ModelPool, settings: ServeSettings):
        self.pool = pool
        self.settings = settings
        self.metrics = ServerMetrics()
        self.model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lorakit-model")
        self.queue: asyncio.Queue[tuple[Any, list[str], asyncio.Future]] | None = None
        self.active: str | None = None

    async def in_model_thread(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.model_thread, fn, *args)

    async def predict(self, served: Any, texts: list[str]) -> list[dict[str, Any]]:
        assert self.queue is not None
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        await self.queue.put((served, texts, future))
        result: list[dict[str, Any]] = await future
        return result

    async def batcher(self) -> None:
        """Gather requests for up to ``max_wait_ms`` (or ``max_batch_rows`` rows), run them as one call."""
        assert self.queue is not None
        loop = asyncio.get_running_loop()
        while True:
            items = [await self.queue.get()]
            rows = len(items[0][1])
            deadline = loop.time() + self.settings.max_wait_ms / 1000
            while rows < self.settings.max_batch_rows:
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    items.append(await asyncio.wait_for(self.queue.get(), left))
                except asyncio.TimeoutError:
                    break
                rows += len(items[-1][1])
            await self._run(items)

    async def _run(self, items: list[tuple[Any, list[str], asyncio.Future]]) -> None:
        flat = [(served, text) for served, texts, _ in items for text in texts]
        self.metrics.batch(len(flat))
        try:
            answers = await self.in_model_thread(self._predict_rows, flat)
        except Exception as exc:  # the model failed: every request of the batch gets the error
            for _, _, future in items:
                if not future.done():
                    future.set_exception(exc)
            return
        start = 0
        for _, texts, future in items:
            if not future.done():
                future.set_result(answers[start : start + len(texts)])
            start += len(texts)

    def _predict_rows(self, rows: list[tuple[Any, str]]) -> list[dict[str, Any]]:
        return self.pool.predict(rows, batch_rows=self.settings.max_batch_rows)

    async def reload(self) -> None:
        """SIGHUP: load every served experiment again from its folder (one retrained with ``--force`` is
        picked up) and, under ``--all``, the experiments completed since; requests keep being answered, by the
        old model until the new one is in. Each refusal is one line on stderr; the old one keeps serving."""
        import click

        ids = list(self.pool.served)
        if self.settings.load_all:
            ids += [e for e in await asyncio.to_thread(self.pool.completed) if e not in ids]
        for exp_id in ids:
            try:
                await self.in_model_thread(self.pool.load, exp_id)
            except LoadRefused as exc:
                click.echo(f"Warning: reload: {exc}", err=True)
        click.echo(f"reloaded {', '.join(ids) or 'nothing'}", err=True)

    async def follow_active(self) -> None:
        """Serve whatever ``lorakit rollback`` made active: poll the index, load the new one, then switch."""
        from ..runs.index import ExperimentIndex

        index = ExperimentIndex(self.pool.outputs)
        while True:
            with contextlib.suppress(Exception):  # a damaged or half-written index: try again next time
                active = await asyncio.to_thread(index.active)
                if active and active != self.active:
                    if active not in self.pool.served:
                        await self.in_model_thread(self.pool.load, active)
                    self.active = active
            await asyncio.sleep(self.settings.poll_s)


def _error(status: int, message: str) -> Any:
    from starlette.responses import JSONResponse

    return JSONResponse({"error": message}, status_code=status)


async def _read_json(request: Any, limit: int) -> Any:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise BadRequest(413, f"body of {int(declared):,} bytes, more than the limit of {limit:,}")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BadRequest(413, f"body over the limit of {limit:,} bytes")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(400, f"body is not JSON: {exc}") from None


def _texts(payload: Any, settings: ServeSettings) -> tuple[str | None, list[str]]:
    """``{"experiment": str (optional), "texts": [str, ...]}``, checked against the limits."""
    if not isinstance(payload, dict):
        raise BadRequest(400, 'expected a JSON object {"experiment": ..., "texts": [...]}')
    unknown = sorted(set(payload) - {"experiment", "texts"})
    if unknown:
        raise BadRequest(400, f"unknown key {unknown[0]!r}; expected experiment and texts")
    experiment = payload.get("experiment")
    if experiment is not None and not isinstance(experiment, str):
        raise BadRequest(400, "experiment must be a string (an exp_id)")
    texts = payload.get("texts")
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise BadRequest(400, "texts must be a list of strings")
    if not texts:
        raise BadRequest(400, "texts is empty")
    if len(texts) > settings.max_texts:
        raise BadRequest(413, f"{len(texts)} texts, more than the limit of {settings.max_texts}")
    for i, text in enumerate(texts):
        if len(text) > settings.max_chars:
            raise BadRequest(
                413, f"texts[{i}] has {len(text):,} characters, more than the limit of {settings.max_chars:,}"
            )
    return experiment, texts


def _authorized(request: Any, token: str | None) -> bool:
    if token is None:
        return True
    given = request.headers.get("authorization", "")
    return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())


def create_app(server: Server) -> Any:
    """The Starlette app over ``server``."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, PlainTextResponse
    from starlette.routing import Route

    settings = server.settings

    def guarded(handler: Any) -> Any:
        async def endpoint(request: Any) -> Any:
            if not _authorized(request, settings.token):
                return _error(401, "missing or wrong bearer token (Authorization: Bearer <token>)")
            try:
                return await handler(server, request)
            except BadRequest as exc:
                return _error(exc.status, str(exc))

        return endpoint

    async def experiments(server: Server, request: Any) -> Any:
        rows = [dict(s.info, active=s.exp_id == server.active) for s in server.pool.served.values()]
        return JSONResponse({"active": server.active, "experiments": rows})

    async def healthz(request: Any) -> Any:
        return JSONResponse({"status": "ok", "experiments": len(server.pool.served), "active": server.active})

    async def metrics(server: Server, request: Any) -> Any:
        text = server.metrics.render(len(server.pool.served))
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    routes = [
        Route("/v1/predict", guarded(_predict), methods=["POST"]),
        Route("/v1/experiments", guarded(experiments), methods=["GET"]),
        Route("/v1/experiments/{exp_id}/load", guarded(_load), methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", guarded(metrics), methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=_lifespan(server))


async def _predict(server: Server, request: Any) -> Any:
    from starlette.responses import JSONResponse

    settings = server.settings
    started = time.perf_counter()
    try:
        experiment, texts = _texts(await _read_json(request, settings.max_body_bytes), settings)
    except BadRequest as exc:
        server.metrics.request("", exc.status, 0, 0.0)
        raise
    exp_id = experiment or server.active
    if exp_id is None:
        raise BadRequest(400, "no experiment given and none is active (lorakit rollback --exp-id EXP)")
    served = server.pool.served.get(exp_id)
    if served is None:
        server.metrics.request(exp_id, 404, 0, 0.0)
        loaded = ", ".join(sorted(server.pool.served)) or "none"
        raise BadRequest(
            404, f"experiment {exp_id!r} is not loaded (loaded: {loaded}); POST /v1/experiments/{exp_id}/load"
        )
    answers = await server.predict(served, texts)
    server.metrics.request(exp_id, 200, len(texts), time.perf_counter() - started)
    return JSONResponse({"experiment": exp_id, "predictions": answers})


async def _load(server: Server, request: Any) -> Any:
    from starlette.responses import JSONResponse

    exp_id = request.path_params["exp_id"]
    try:
        served = await server.in_model_thread(server.pool.load, exp_id)
    except LoadRefused as exc:
        return _error(exc.status, str(exc))
    return JSONResponse({"loaded": served.info})


def _lifespan(server: Server) -> Any:
    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        server.queue = asyncio.Queue()
        tasks = [asyncio.create_task(server.batcher())]
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, AttributeError):  # no SIGHUP on Windows
            loop.add_signal_handler(signal.SIGHUP, lambda: tasks.append(loop.create_task(server.reload())))
        if server.settings.follow_active:
            tasks.append(asyncio.create_task(server.follow_active()))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            server.model_thread.shutdown(wait=False, cancel_futures=True)

    return lifespan
