"""What SageMaker scripts import as `sagemaker_inference`, for scripts run by torchport.

An `inference.py` loaded by `torchport.runtime.sagemaker` sees `import
sagemaker_inference…` resolve here (its code alone): `content_types`, `decoder`,
`encoder`, `errors` and `utils`, as the SageMaker inference toolkit offers them, except
that a `.npy` body is never unpickled.
"""
