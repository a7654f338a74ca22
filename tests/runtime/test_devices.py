"""Placement and precision: decisions from what the devices report (no GPU needed), models
run in reduced precision on the CPU, and clear errors for a device that is not there."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import torchport
from torchport.errors import InvalidInput, ModelLoadError
from torchport.runtime.devices import CPU, Device, DeviceInfo, parse_device, place, visible_devices

GiB = 2**30
TWO_GPUS = [
    DeviceInfo(0, "H200", 141 * GiB, 10 * GiB),
    DeviceInfo(1, "H200", 141 * GiB, 40 * GiB),
]
NO_GPU = not torch.cuda.is_available()


def test_auto_takes_the_gpu_with_the_most_free_memory_that_fits() -> None:
    assert place("auto", 5 * GiB, TWO_GPUS) == Device("cuda", 1)
    assert place("auto", 5 * GiB, []) == CPU  # a machine without a GPU
    with pytest.raises(ModelLoadError, match=r"needs 50.00 GiB .* most free is 40.00 GiB"):
        place("auto", 50 * GiB, TWO_GPUS)


def test_a_named_device_is_used_if_it_is_there_and_has_room() -> None:
    assert place("cpu", 10**15, TWO_GPUS) == CPU
    assert place("cuda", GiB, TWO_GPUS) == Device("cuda", 0)
    assert place("cuda:1", GiB, TWO_GPUS) == Device("cuda", 1)
    with pytest.raises(ModelLoadError, match=r"needs 20.00 GiB .*free: cuda:0 10.00 GiB"):
        place("cuda:0", 20 * GiB, TWO_GPUS)
    with pytest.raises(ModelLoadError, match=r"cuda:2 is not available; this machine has cuda:0"):
        place("cuda:2", GiB, TWO_GPUS)
    with pytest.raises(ModelLoadError, match="has no GPU that torch can use"):
        place("cuda", GiB, [])


def test_workers_spread_over_the_listed_gpus() -> None:
    chosen = [place("cuda", GiB, TWO_GPUS, spread=[0, 1], worker=i) for i in range(4)]
    assert [str(d) for d in chosen] == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    with pytest.raises(ModelLoadError, match="cuda:3 is not available"):
        place("cuda", GiB, TWO_GPUS, spread=[0, 3])


def test_device_names_are_checked() -> None:
    assert parse_device(" CUDA:1 ") == "cuda:1"
    assert Device.parse("cuda:1") == Device("cuda", 1)
    assert Device.parse("cpu") == CPU
    for bad in ("gpu", "cuda:x", "cpu:0", "auto:1", "tpu"):
        with pytest.raises(InvalidInput, match="use cpu, cuda, cuda:N or auto"):
            parse_device(bad)


def test_reduced_precision_runs_the_model_in_that_dtype_and_answers_float32(
    mlp_package: Path, mlp_input: np.ndarray
) -> None:
    with torchport.load(mlp_package) as full:
        want = full.predict({"input": mlp_input})["output"]
    for precision, tolerance in (("bf16", 5e-2), ("fp16", 1e-2)):
        with torchport.load(mlp_package, precision=precision) as reduced:
            model = reduced._runner.handler.model
            assert {p.dtype for p in model.parameters()} == {
                {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
            }
            got = reduced.predict({"input": mlp_input})["output"]
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, atol=tolerance, rtol=tolerance)
        assert not np.array_equal(got, want)  # it really ran in the other precision


@pytest.mark.skipif(not NO_GPU, reason="this machine has a GPU")
def test_a_gpu_asked_for_on_a_machine_without_one_is_a_clear_error(mlp_package: Path) -> None:
    assert visible_devices() == []
    with pytest.raises(
        ModelLoadError, match="device cuda is not available: this machine has no GPU"
    ):
        torchport.load(mlp_package, device="cuda")
    with torchport.load(mlp_package, device="auto") as model:  # auto: the CPU here
        assert model.predict({"input": np.zeros((1, 32), np.float32)})["output"].shape == (1, 8)


@pytest.mark.skipif(NO_GPU, reason="needs a GPU: CUDA paths run only where one is present")
def test_a_model_on_the_gpu_answers_as_on_the_cpu(mlp_package: Path, mlp_input: np.ndarray) -> None:
    with torchport.load(mlp_package) as cpu, torchport.load(mlp_package, device="cuda") as gpu:
        model = gpu._runner.handler.model
        assert {p.device.type for p in model.parameters()} == {"cuda"}
        np.testing.assert_allclose(
            gpu.predict({"input": mlp_input})["output"],
            cpu.predict({"input": mlp_input})["output"],
            atol=1e-4,
            rtol=1e-4,
        )


def test_on_the_cpu_transfers_convert_dtypes_and_keep_no_device_clock() -> None:
    from torchport.runtime.transfer import take_device_seconds, to_device, to_host

    take_device_seconds()
    x = torch.ones(2, 3)
    ids = torch.arange(3)
    moved = to_device({"x": x, "ids": [ids], "n": 3}, "cpu", torch.bfloat16)
    assert moved["x"].dtype == torch.bfloat16
    assert moved["ids"][0].dtype == torch.int64  # integers keep their type
    assert moved["n"] == 3
    kept = to_device((x,), "cpu", None)[0]
    assert kept.dtype == torch.float32
    back = to_host((moved["x"], ids))
    assert back[0].dtype == torch.float32
    assert back[1].dtype == torch.int64
    assert take_device_seconds() is None  # nothing ran on a GPU


@pytest.mark.skipif(NO_GPU, reason="needs a GPU: CUDA paths run only where one is present")
def test_on_a_gpu_inputs_go_through_pinned_memory_and_the_device_time_is_measured() -> None:
    from torchport.runtime.transfer import take_device_seconds, to_device, to_host

    take_device_seconds()
    x = torch.randn(256, 256)
    on_gpu = to_device((x,), "cuda:0", torch.float16)[0]
    assert on_gpu.device.type == "cuda"
    assert on_gpu.dtype == torch.float16
    back = to_host(on_gpu @ on_gpu)
    assert back.device.type == "cpu"
    assert back.dtype == torch.float32
    seconds = take_device_seconds()
    assert seconds is not None
    assert seconds > 0


def test_tf32_is_set_for_the_process() -> None:
    from torchport.runtime.devices import allow_tf32

    before = torch.backends.cuda.matmul.allow_tf32
    try:
        allow_tf32(True)
        assert torch.backends.cuda.matmul.allow_tf32
        assert torch.backends.cudnn.allow_tf32
        allow_tf32(False)
        assert not torch.backends.cuda.matmul.allow_tf32
    finally:
        allow_tf32(before)


@pytest.mark.skipif(NO_GPU, reason="needs a GPU: CUDA paths run only where one is present")
def test_each_worker_thread_runs_on_a_stream_of_its_own(mlp_package: Path) -> None:
    import threading

    from torchport.runtime.transfer import take_device_seconds, thread_stream

    seen: list[object] = []
    with torchport.load(mlp_package, device="cuda") as model:

        def run() -> None:
            take_device_seconds()
            model.predict({"input": np.ones((2, 32), np.float32)})
            seen.append(torch.cuda.current_stream())
            assert torch.cuda.current_stream() == thread_stream("cuda:0")
            device_seconds = take_device_seconds()  # CUDA events around the call
            assert device_seconds is not None
            assert 0 < device_seconds < 10
            assert take_device_seconds() is None

        threads = [threading.Thread(target=run) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(seen) == 2
    assert seen[0] != seen[1]
    assert torch.cuda.default_stream() not in seen


def test_onnx_runtime_runs_on_the_gpu_with_its_cuda_provider_or_refuses() -> None:
    from torchport.runtime.onnx_model import providers_for

    assert providers_for("cpu", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    both = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert providers_for("cuda:1", both) == [
        ("CUDAExecutionProvider", {"device_id": 1}),
        "CPUExecutionProvider",
    ]
    with pytest.raises(ModelLoadError, match="no CUDA provider .* install onnxruntime-gpu"):
        providers_for("cuda:0", ["CPUExecutionProvider"])
