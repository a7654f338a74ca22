"""Answers of SageMaker's own PyTorch inference toolkit (sagemaker-pytorch-inference, as its
containers run it) for requests given on stdin, printed as JSON on stdout.

Run with the TorchServe venv's Python (where the toolkit is installed), never imported by
torchport: `{"model_dir": DIR, "requests": [{"body": B64, "headers": {...}}]}` in, a list
of `{"status", "content_type", "body": B64}` out.
"""

import base64
import json
import os
import sys


def main() -> None:
    request = json.load(sys.stdin)
    model_dir = request["model_dir"]
    sys.path.insert(0, os.path.join(model_dir, "code"))  # what the container's PYTHONPATH holds
    from sagemaker_pytorch_serving_container.handler_service import HandlerService
    from ts.context import Context, RequestProcessor

    service = HandlerService()
    context = Context("model", model_dir, {}, 1, None, "0.12.0")
    answers = []
    for i, item in enumerate(request["requests"]):
        context.request_processor = [RequestProcessor(item["headers"])]
        if i == 0:
            service.initialize(context)
        result = service.handle([{"body": base64.b64decode(item["body"])}], context)[0]
        status, _ = context.get_response_status(0)
        body = result.encode() if isinstance(result, str) else bytes(result)
        answers.append({
            "status": status,
            "content_type": context.get_response_content_type(0),
            "body": base64.b64encode(body).decode(),
        })  # fmt: skip
    print(json.dumps(answers))


if __name__ == "__main__":
    main()
