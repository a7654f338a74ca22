"""`torchport build`: a Dockerfile and Kubernetes, KServe and SageMaker files for a package."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from torchport.cli.output import out

Opt = typer.Option


def build_cmd(
    package: Annotated[Path, typer.Argument(help="The package to deploy (.tpa).")],
    out_dir: Annotated[
        Path | None, Opt("-o", "--out", help="Directory to write (default: deploy/NAME/).")
    ] = None,
    image: Annotated[
        str | None, Opt(help="Image name and tag (default: torchport-NAME:VERSION).")
    ] = None,
    replicas: Annotated[int, Opt(help="Replicas (the autoscaler's minimum).", min=1)] = 2,
    max_replicas: Annotated[int, Opt(help="The autoscaler's maximum.", min=1)] = 5,
    cpu: Annotated[str, Opt(help="CPU request per replica (e.g. 500m, 2).")] = "1",
    cpu_limit: Annotated[str | None, Opt(help="CPU limit (default: twice the request).")] = None,
    memory: Annotated[
        str | None, Opt(help="Memory request and limit (default: from the package's size).")
    ] = None,
    wheel: Annotated[
        Path | None, Opt(help="A torchport wheel to install in the image (default: PyPI).")
    ] = None,
    ray: Annotated[
        bool, Opt("--ray", help="Also write a KubeRay RayService (Ray Serve on Kubernetes).")
    ] = False,
    gpus: Annotated[
        int, Opt(help="GPUs per pod: the image gets torch's CUDA build and serves on the GPU.")
    ] = 0,
    cuda: Annotated[
        str, Opt(help="With --gpus: the CUDA build of torch (PyTorch's index name).")
    ] = "cu128",
    node_selector: Annotated[
        list[str] | None, Opt(help="With --gpus: KEY=VALUE the GPU nodes carry; repeatable.")
    ] = None,
    toleration: Annotated[
        list[str] | None,
        Opt(help="With --gpus: a taint key GPU nodes carry (default nvidia.com/gpu); repeatable."),
    ] = None,
) -> None:
    """Write a Dockerfile (the microservice, non-root, read-only root filesystem),
    Kubernetes manifests (Deployment, Service, HPA, PodDisruptionBudget), KServe
    (ServingRuntime, InferenceService with protocol v2) and SageMaker requests."""
    from torchport.archive import read_package
    from torchport.deploy import BuildOptions, build
    from torchport.deploy.gpus import GpuRequest
    from torchport.errors import InvalidInput

    wanted = GpuRequest.of(gpus, cuda, node_selector or [], toleration or [])

    if not package.is_file():
        raise InvalidInput(f"package {package} does not exist", field="package")
    target = out_dir or Path("deploy") / read_package(package).manifest.name
    result = build(
        package,
        target,
        BuildOptions(
            image=image,
            replicas=replicas,
            max_replicas=max_replicas,
            cpu=cpu,
            cpu_limit=cpu_limit,
            memory=memory,
            wheel=wheel,
            ray=ray,
            gpus=wanted,
        ),
    )
    out.print(f"wrote {len(result.files)} files to {result.out} (image {result.image}):",
              markup=False)  # fmt: skip
    for path in result.files:
        out.print(f"  {path.relative_to(result.out)}", markup=False)
    out.print(f"next: docker build -t {result.image} {result.out} && kubectl apply -f "
              f"{result.out / 'k8s'}", markup=False)  # fmt: skip
