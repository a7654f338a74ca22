"""GPUs for the deployment files: the CUDA build of torch in the image, `nvidia.com/gpu`
in every pod that runs the model, the nodes they may go to, and Ray's `num_gpus`.

Nothing here is written unless `torchport build --gpus N` asks: a CPU image never pulls a
CUDA build of torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from torchport.errors import InvalidInput

GPU_RESOURCE = "nvidia.com/gpu"
_CUDA = re.compile(r"^cu\d{3}$")
_LABEL = re.compile(r"^[A-Za-z0-9./_-]{1,253}=[A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class GpuRequest:
    count: int
    """GPUs per pod (per Ray replica)."""
    cuda: str = "cu128"
    """The CUDA build of torch the image installs (PyTorch's index `whl/<cuda>`)."""
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[str] = field(default_factory=lambda: [GPU_RESOURCE])
    """Taints tolerated (NoSchedule, any value): GPU nodes are commonly tainted
    `nvidia.com/gpu`."""

    @classmethod
    def of(
        cls, count: int, cuda: str, node_selector: list[str], tolerations: list[str]
    ) -> GpuRequest | None:
        """Checked options (`--gpus`, `--cuda`, `--node-selector`, `--toleration`); None
        without GPUs (then the other options are refused)."""
        if count < 0 or count > 16:
            raise InvalidInput(f"--gpus {count}: give 0 to 16 GPUs a pod", field="gpus")
        if count == 0:
            if node_selector or tolerations:
                raise InvalidInput(
                    "--node-selector and --toleration place GPU pods: add --gpus N",
                    field="gpus",
                )
            return None
        if not _CUDA.match(cuda):
            raise InvalidInput(
                f"--cuda {cuda!r}: a CUDA build of torch as PyTorch's index names it "
                "(cu126, cu128, …)",
                field="cuda",
            )
        for pair in node_selector:
            if not _LABEL.match(pair):
                raise InvalidInput(
                    f"--node-selector {pair!r}: use KEY=VALUE", field="node_selector"
                )
        selector = dict(pair.split("=", 1) for pair in node_selector)
        return cls(count, cuda, selector, tolerations or [GPU_RESOURCE])

    @property
    def torch_index(self) -> str:
        return f"https://download.pytorch.org/whl/{self.cuda}"

    def container(self, container: dict[str, Any]) -> None:
        """Ask for the GPUs in a container's limits (and requests: Kubernetes wants both
        equal for extended resources)."""
        resources = container.setdefault("resources", {})
        for kind in ("limits", "requests"):
            resources.setdefault(kind, {})[GPU_RESOURCE] = str(self.count)

    def pod(self, spec: dict[str, Any]) -> None:
        """Put a pod on GPU nodes: its node selector and tolerations."""
        if self.node_selector:
            spec["nodeSelector"] = dict(self.node_selector)
        spec["tolerations"] = [
            {"key": key, "operator": "Exists", "effect": "NoSchedule"} for key in self.tolerations
        ]
