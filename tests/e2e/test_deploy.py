"""`torchport build`: the manifests validate against Kubernetes' schemas, and the image's
command runs as the container would run it, answering every protocol."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import yaml

from tests.cli.test_cli import assert_one_line_error, cli
from tests.e2e.server import oip_body, wait_ready
from torchport.deploy import GRPC_PORT, HTTP_PORT, parse_dockerfile
from torchport.version import __version__

KUBERNETES = "1.30.0"  # the oldest release still in wide use that has every API we write
ROW = np.linspace(-1, 1, 32, dtype=np.float32)[None]


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory, mlp_package: Path) -> Path:
    out = tmp_path_factory.mktemp("deploy") / "mlp"
    done = cli("build", mlp_package, "-o", out, "--image", "registry.example/mlp:1",
               "--replicas", "3", "--max-replicas", "6", "--cpu", "500m")  # fmt: skip
    assert done.returncode == 0, done.stderr
    return out


def load(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(path.read_text())
    return doc


def assert_writable_tmp_and_shm(pod: dict[str, Any], container: dict[str, Any]) -> None:
    """/tmp and a memory-backed /dev/shm are mounted from the pod's volumes."""
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    shm = volumes[mounts["/dev/shm"]]["emptyDir"]
    assert shm["medium"] == "Memory"
    assert shm["sizeLimit"]


@pytest.mark.parametrize("name", ["deployment", "service", "hpa", "pdb"])
def test_kubernetes_manifests_validate_strictly(deployed: Path, name: str) -> None:
    doc = load(deployed / "k8s" / f"{name}.yaml")
    kubernetes_validate.validate(doc, KUBERNETES, strict=True)  # raises on any problem


def test_the_validator_catches_a_broken_manifest(deployed: Path) -> None:
    doc = load(deployed / "k8s" / "deployment.yaml")
    doc["spec"]["replicas"] = "three"
    doc["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}  # a typo'd key
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def test_the_deployment_runs_safely_and_probes_the_right_routes(deployed: Path) -> None:
    spec = load(deployed / "k8s" / "deployment.yaml")["spec"]
    assert spec["replicas"] == 3
    pod = spec["template"]["spec"]
    [container] = pod["containers"]
    assert container["image"] == "registry.example/mlp:1"
    assert pod["securityContext"]["runAsNonRoot"] is True
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert_writable_tmp_and_shm(pod, container)
    assert container["resources"]["requests"]["cpu"] == "500m"
    assert container["resources"]["limits"]["cpu"] == "1000m"
    env = {e["name"]: e["value"] for e in container["env"]}
    # The pod is given time to turn unready and drain before it is killed.
    grace = float(env["TORCHPORT_UNREADY_SECONDS"]) + float(env["TORCHPORT_DRAIN_SECONDS"])
    assert pod["terminationGracePeriodSeconds"] > grace
    hpa = load(deployed / "k8s" / "hpa.yaml")["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (3, 6)
    assert load(deployed / "k8s" / "pdb.yaml")["spec"]["maxUnavailable"] == 1


def test_kserve_and_sagemaker_files_fit_together(deployed: Path) -> None:
    runtime = load(deployed / "kserve" / "servingruntime.yaml")
    service = load(deployed / "kserve" / "inferenceservice.yaml")
    # No schema ships for KServe's CRDs: check the structure they define.
    assert runtime["apiVersion"] == "serving.kserve.io/v1alpha1"
    assert runtime["kind"] == "ServingRuntime"
    assert "v2" in runtime["spec"]["protocolVersions"]
    [container] = runtime["spec"]["containers"]
    assert container["name"] == "kserve-container"
    assert container["image"] == "registry.example/mlp:1"
    assert {p["containerPort"] for p in container["ports"]} == {HTTP_PORT, GRPC_PORT}
    assert service["apiVersion"] == "serving.kserve.io/v1beta1"
    assert service["kind"] == "InferenceService"
    model = service["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["protocolVersion"] == "v2"
    assert model["modelFormat"]["name"] in {
        f["name"] for f in runtime["spec"]["supportedModelFormats"]
    }
    # The KServe container is a Kubernetes container: validate it as one, in a Pod with
    # the runtime's volumes (a read-only root needs a writable /tmp to start at all).
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert_writable_tmp_and_shm(runtime["spec"], container)
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"},
           "spec": {"containers": [container], "volumes": runtime["spec"]["volumes"]}}  # fmt: skip
    kubernetes_validate.validate(pod, KUBERNETES, strict=True)
    sm_model = json.loads((deployed / "sagemaker" / "model.json").read_text())
    sm_config = json.loads((deployed / "sagemaker" / "endpoint-config.json").read_text())
    assert sm_config["ProductionVariants"][0]["ModelName"] == sm_model["ModelName"]
    assert sm_model["PrimaryContainer"]["Image"].endswith("registry.example/mlp:1")
    assert "TORCHPORT_HTTP_PORT" not in sm_model["PrimaryContainer"]["Environment"]


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_the_image_command_runs_as_the_container_runs_it(
    deployed: Path, tmp_path: Path, mlp_package: Path
) -> None:
    """The Dockerfile's exec-form CMD and ENV, exactly, with the package as a read-only
    file where the Dockerfile puts it, but for the listen address: loopback, not 0.0.0.0,
    because a test server is never reachable from outside this machine."""
    env, cmd = parse_dockerfile((deployed / "Dockerfile").read_text())
    copy = next(line for line in (deployed / "Dockerfile").read_text().splitlines()
                if line.startswith("COPY") and ".tpa" in line)  # fmt: skip
    source, target = copy.split()[-2:]
    assert target in cmd
    models = tmp_path / "models"
    models.mkdir()
    package = models / Path(target).name
    shutil.copyfile(deployed / source, package)
    package.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    models.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)
    for port in (HTTP_PORT, GRPC_PORT):
        if not port_free(port):
            pytest.fail(f"port {port} is taken: the container's ports must be free for this test")
    bin_dir = Path(sys.executable).parent
    command = [str(bin_dir / cmd[0]), *(str(package) if a == target else a for a in cmd[1:])]
    home = tmp_path / "home"
    home.mkdir()
    environment = {**env, "TORCHPORT_HOST": "127.0.0.1", "HOME": str(home),
                   "TMPDIR": str(home), "PATH": f"{bin_dir}:{os.environ['PATH']}"}  # fmt: skip
    log = (tmp_path / "container.log").open("w")
    proc = subprocess.Popen(command, env=environment, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{env['TORCHPORT_HTTP_PORT']}"
    try:
        wait_ready(proc, url, tmp_path / "container.log")
        health = subprocess.run(
            [sys.executable, "-c", _healthcheck(deployed)], env=environment, timeout=30
        )
        assert health.returncode == 0  # the Dockerfile's HEALTHCHECK passes
        answers = [
            httpx.post(f"{url}/v2/models/mlp/infer", json=oip_body("input", ROW)).json()[
                "outputs"][0]["data"],
            httpx.post(f"{url}/v1/models/mlp:predict", json={"instances": ROW.tolist()}).json()[
                "predictions"][0],
            httpx.post(f"{url}/predictions/mlp", json=ROW[0].tolist()).json(),
            httpx.post(f"{url}/invocations", json={"instances": ROW.tolist()}).json()[
                "predictions"][0],
        ]  # fmt: skip
        with triton_grpc.InferenceServerClient(f"127.0.0.1:{env['TORCHPORT_GRPC_PORT']}") as c:
            tensor = triton_grpc.InferInput("input", [1, 32], "FP32")
            tensor.set_data_from_numpy(ROW)
            answers.append(c.infer("mlp", [tensor]).as_numpy("output")[0].tolist())
        for answer in answers:
            np.testing.assert_allclose(answer, answers[0], atol=1e-6)
        assert len(answers[0]) == 8
        assert package.read_bytes() == (deployed / source).read_bytes()  # untouched
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        models.chmod(stat.S_IRWXU)


def _healthcheck(deployed: Path) -> str:
    line = next(line for line in (deployed / "Dockerfile").read_text().replace("\\\n", "")
                .splitlines() if line.strip().startswith("HEALTHCHECK"))  # fmt: skip
    exec_form = json.loads(line[line.index("CMD") + 3 :].strip())
    assert exec_form[:2] == ["python", "-c"]
    return str(exec_form[2])


def test_build_refuses_bad_options(mlp_package: Path, tmp_path: Path) -> None:
    assert_one_line_error(cli("build", mlp_package, "-o", tmp_path / "a", "--cpu", "lots"),
                          "--cpu 'lots' is not a quantity")  # fmt: skip
    assert_one_line_error(
        cli("build", mlp_package, "-o", tmp_path / "b", "--replicas", "4", "--max-replicas", "2"),
        "at most --max-replicas",
    )
    assert_one_line_error(cli("build", tmp_path / "none.tpa"), "does not exist")


def test_build_ray_writes_a_kuberay_rayservice(mlp_package: Path, tmp_path: Path) -> None:
    from ray.serve.schema import ServeDeploySchema

    out = tmp_path / "mlp-ray"
    done = cli("build", mlp_package, "-o", out, "--ray", "--replicas", "2", "--max-replicas", "4")
    assert done.returncode == 0, done.stderr
    assert "torchport[serve,ray]==" in (out / "Dockerfile").read_text()
    service = load(out / "ray" / "rayservice.yaml")
    # KubeRay's CRD schema does not ship with kubernetes-validate: check its structure, and
    # validate what is Kubernetes in it (the pod templates) and what is Ray (the Serve config).
    assert (service["apiVersion"], service["kind"]) == ("ray.io/v1", "RayService")
    config = yaml.safe_load(service["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(config)
    [application] = config["applications"]
    assert application["args"]["package"] == "/models/mlp.tpa"  # where the image puts it
    assert application["args"]["replicas"] == 2
    cluster = service["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["dashboard-host"] == "127.0.0.1"
    [workers] = cluster["workerGroupSpecs"]
    assert (workers["minReplicas"], workers["maxReplicas"]) == (2, 4)
    # Ray's GCS and client ports take only holders of the token KubeRay makes.
    assert cluster["authOptions"] == {"mode": "token"}
    for template in (head["template"], workers["template"]):
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"}, **template}
        kubernetes_validate.validate(pod, KUBERNETES, strict=True)
        [container] = template["spec"]["containers"]
        assert container["image"] == f"torchport-mlp:{__version__}"
        assert template["spec"]["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert_writable_tmp_and_shm(template["spec"], container)
    assert workers["template"]["spec"]["automountServiceAccountToken"] is False


def test_build_for_gpus_asks_for_them_everywhere_and_installs_cuda_torch(
    mlp_package: Path, tmp_path: Path
) -> None:
    from ray.serve.schema import ServeDeploySchema

    out = tmp_path / "mlp-gpu"
    done = cli("build", mlp_package, "-o", out, "--gpus", "1", "--ray", "--cuda", "cu126",
               "--node-selector", "cloud.example/accelerator=h100")  # fmt: skip
    assert done.returncode == 0, done.stderr
    dockerfile = (out / "Dockerfile").read_text()
    assert "--index-url https://download.pytorch.org/whl/cu126" in dockerfile
    assert "whl/cpu" not in dockerfile
    env, _ = parse_dockerfile(dockerfile)
    assert env["TORCHPORT_DEVICE"] == "auto"
    deployment = load(out / "k8s" / "deployment.yaml")
    kubernetes_validate.validate(deployment, KUBERNETES, strict=True)
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["nodeSelector"] == {"cloud.example/accelerator": "h100"}
    assert pod["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    runtime = load(out / "kserve" / "servingruntime.yaml")
    assert runtime["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    service = load(out / "ray" / "rayservice.yaml")
    config = yaml.safe_load(service["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(config)
    assert config["applications"][0]["args"]["num_gpus"] == 1
    [workers] = service["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert workers["rayStartParams"] == {"num-gpus": "1"}
    worker = workers["template"]["spec"]
    assert worker["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    kubernetes_validate.validate(
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"}, **workers["template"]},
        KUBERNETES,
        strict=True,
    )
    head = service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in head["containers"][0]["resources"]["limits"]
    # A CPU build never pulls CUDA torch; GPU placement options need --gpus.
    cpu_only = tmp_path / "cpu"
    assert cli("build", mlp_package, "-o", cpu_only).returncode == 0
    assert "whl/cpu" in (cpu_only / "Dockerfile").read_text()
    assert_one_line_error(
        cli("build", mlp_package, "-o", tmp_path / "x", "--node-selector", "a=b"), "add --gpus N"
    )
    assert_one_line_error(
        cli("build", mlp_package, "-o", tmp_path / "y", "--gpus", "1", "--cuda", "12.8"),
        "--cuda '12.8'",
    )
