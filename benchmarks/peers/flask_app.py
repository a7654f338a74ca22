"""A plain Flask service, the classic Python model microservice, run by gunicorn.

MODEL_KIND=mlp MODEL_FILES=dir gunicorn -w 2 benchmarks.peers.flask_app:app -b 127.0.0.1:9001
"""

from __future__ import annotations

import os
from pathlib import Path

from flask import Flask, Response, request

from benchmarks.peers.plain_model import load

predict = load(os.environ["MODEL_KIND"], Path(os.environ["MODEL_FILES"]))
app = Flask(__name__)


@app.get("/ready")
def ready() -> dict[str, bool]:
    return {"ready": True}


@app.post("/predict")
def handle() -> Response:
    return Response(predict(request.get_data()), mimetype="application/json")
