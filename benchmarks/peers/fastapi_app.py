"""A plain FastAPI service: one model, no batching, the way most teams first serve one.

MODEL_KIND=mlp MODEL_FILES=dir uvicorn benchmarks.peers.fastapi_app:app --port 9000
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import FastAPI, Request, Response

from benchmarks.peers.plain_model import load

predict = load(os.environ["MODEL_KIND"], Path(os.environ["MODEL_FILES"]))
app = FastAPI()


@app.get("/ready")
def ready() -> dict[str, bool]:
    return {"ready": True}


@app.post("/predict")
async def handle(request: Request) -> Response:
    body = await request.body()
    # The model runs in the thread pool, as a sync endpoint would.
    from starlette.concurrency import run_in_threadpool

    return Response(await run_in_threadpool(predict, body), media_type="application/json")
