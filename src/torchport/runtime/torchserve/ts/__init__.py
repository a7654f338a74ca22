"""What TorchServe handlers import as `ts`, for handlers run by torchport.

Handler code loaded by `torchport.runtime.torchserve` sees `import ts…` resolve here (and
only that code: torchport installs no top-level `ts`). The modules offer the parts of
TorchServe 0.12's handler API that handlers use; see docs/migrating-from-torchserve.md.
"""

__version__ = "0.12.0"
