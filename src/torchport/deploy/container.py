"""The microservice's container image: its Dockerfile, environment and command."""

from __future__ import annotations

import json
import re

from torchport.version import __version__

HTTP_PORT = 8080
GRPC_PORT = 8081
UID = 10001
UNREADY_SECONDS = 5
DRAIN_SECONDS = 30
MODELS_DIR = "/models"
SHM_SIZE_MIB = 4 * 64
"""`/dev/shm` for worker processes: four default-sized requests (64 MiB, max_request_bytes)
in flight, each in and out. Containers get 64 MiB by default, one request's worth."""
TMP_SIZE = "1Gi"
TORCH_VERSION = "2.13.0"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def environment(package_name: str) -> dict[str, str]:
    """How the container configures torchport: environment variables only."""
    return {
        "TORCHPORT_HOST": "0.0.0.0",  # a container's port is reached from outside it
        "TORCHPORT_HTTP_PORT": str(HTTP_PORT),
        "TORCHPORT_GRPC_PORT": str(GRPC_PORT),
        "TORCHPORT_UNREADY_SECONDS": str(UNREADY_SECONDS),
        "TORCHPORT_DRAIN_SECONDS": str(DRAIN_SECONDS),
        "TORCHPORT_LOG_FORMAT": "json",
        "HOME": "/tmp",
        "TMPDIR": "/tmp",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
    }


def command(package_name: str) -> list[str]:
    return ["torchport", "serve", f"{MODELS_DIR}/{package_name}", "--microservice"]


def dockerfile(
    package_name: str,
    env: dict[str, str],
    extras: str,
    wheel: str | None,
    torch_index: str | None = None,
) -> str:
    """The image: torch from PyTorch's CPU index, or the CUDA build's (`torch_index`) for a
    GPU image; then torchport, the package (verified), a non-root user."""
    if wheel:
        install = (
            f"COPY {wheel} /tmp/\n"
            f"RUN pip install --no-cache-dir '/tmp/{wheel}{extras}' && rm /tmp/{wheel}"
        )
    else:
        install = f"RUN pip install --no-cache-dir 'torchport{extras}=={__version__}'"
    torch_note = (
        "torch's CUDA build first (the GPU image), from its own index."
        if torch_index
        else "CPU torch first, from PyTorch's CPU index, so nothing pulls a CUDA build."
    )
    env_lines = " \\\n    ".join(f"{k}={json.dumps(v)}" for k, v in env.items())
    probe = (
        "import urllib.request; "
        f"urllib.request.urlopen('http://127.0.0.1:{HTTP_PORT}/v2/health/ready', timeout=2)"
    )
    return f"""# The {package_name} microservice: `torchport build` wrote this file.
FROM python:3.11-slim

# {torch_note}
RUN pip install --no-cache-dir --index-url {torch_index or CPU_INDEX} \\
    torch=={TORCH_VERSION}
{install}

# The package, read-only, verified now (every hash, the manifest) so a bad one fails the build.
COPY --chmod=0444 {package_name} {MODELS_DIR}/{package_name}
RUN torchport inspect {MODELS_DIR}/{package_name}

RUN useradd --uid {UID} --no-create-home --home-dir /tmp --shell /usr/sbin/nologin torchport
USER {UID}:{UID}
ENV {env_lines}
EXPOSE {HTTP_PORT} {GRPC_PORT}
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \\
    CMD ["python", "-c", "{probe}"]
STOPSIGNAL SIGTERM
CMD {json.dumps(command(package_name))}
"""


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[str]]:
    """The ENV and exec-form CMD of a Dockerfile written by `dockerfile` (for running the
    container's command outside a container, as the tests do)."""
    joined = re.sub(r"\\\n\s*", " ", text)
    env: dict[str, str] = {}
    cmd: list[str] = []
    for line in joined.splitlines():
        if line.startswith("ENV "):
            for key, value in re.findall(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)', line[4:]):
                env[key] = json.loads(value) if value.startswith('"') else value
        elif line.startswith("CMD "):
            cmd = json.loads(line[4:])
    return env, cmd
