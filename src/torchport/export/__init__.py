"""`torchport export`: the same package with its model as TorchScript, a `torch.export`
program, an AOTInductor package or ONNX, checked for parity against the original
(`exporting`); the targets (`targets`), the parity check (`parity`), tensors as text for
programs that run an export (`tensor_file`), and `torchport bench` (`bench`).
"""

from torchport.agreement import Tolerance
from torchport.export.exporting import ExportResult, ParityFailed, describe_failure, export_package
from torchport.export.targets import ExportFailed, Target

__all__ = [
    "ExportFailed",
    "ExportResult",
    "ParityFailed",
    "Target",
    "Tolerance",
    "describe_failure",
    "export_package",
]
