"""Not a benchmark: the naive peer ``bench_serve.py`` compares ``lorakit serve`` against.

What a hand-written service looks like: one experiment per process, loaded with transformers + peft and
lorakit's saved heads, one forward pass per request, a synchronous handler run in the web framework's
thread pool (as FastAPI runs a plain ``def`` endpoint). Same JSON in and out as ``lorakit serve``.

Run: python bench/naive_server.py EXP_FOLDER --port 8001
"""

from __future__ import annotations

import argparse
from typing import Any


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folder")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()

    import torch
    import uvicorn
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from lorakit import Experiment

    predictor = Experiment.load(args.folder)

    def predict_sync(texts: list[str]) -> list[dict[str, Any]]:
        with torch.no_grad():
            result: list[dict[str, Any]] = predictor.predict(texts)
        return result

    async def predict(request: Any) -> Any:
        body = await request.json()
        return JSONResponse({"predictions": await run_in_threadpool(predict_sync, body["texts"])})

    async def healthz(request: Any) -> Any:
        return JSONResponse({"status": "ok"})

    app = Starlette(routes=[Route("/v1/predict", predict, methods=["POST"]), Route("/healthz", healthz)])
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
