"""clusters/: the launcher YAMLs pass Ray's own config preparation and schema validation (offline,
as `ray up` does before it talks to the cloud), the KubeRay manifests have what the operator needs,
and the Dockerfile builds the package with its compiled op and checks it."""
from __future__ import annotations

import copy
import json
import re
import shlex

import pytest
import ray
import yaml

from tcam_ray.tune.sweep import load_sweep

from .conftest import REPO

CLUSTERS = REPO / "clusters"
LAUNCHERS = ["aws.yaml", "gcp.yaml"]
IMAGE_ROOT = "/opt/tcam-ray"  # where the Dockerfile puts the repository


def launcher(name: str) -> dict:
    return yaml.safe_load((CLUSTERS / name).read_text())


def validated(config: dict) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


# --------------------------------------------------------------------------- cluster launcher


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_yaml_passes_rays_validation(name):
    config = validated(launcher(name))
    workers = config["available_node_types"]["gpu_worker"]
    assert workers["resources"]["GPU"] >= 1
    assert workers["min_workers"] == 0 < workers["max_workers"] <= config["max_workers"]  # autoscaling
    assert config["available_node_types"][config["head_node_type"]]["resources"].get("GPU", 0) == 0
    assert any("ray start --head" in c for c in config["head_start_ray_commands"])
    assert any("ray start --address=$RAY_HEAD_IP:6379" in c for c in config["worker_start_ray_commands"])
    assert any(c.strip().endswith("tcam-ray doctor") for c in config["setup_commands"])  # the op is built on the node
    assert "working_dir" not in json.dumps(config)  # the package is never shipped with a job


@pytest.mark.parametrize("mistake, error", [
    (lambda c: c.update(max_worker=3), "Additional properties are not allowed"),
    (lambda c: c.update(head_node_type="gpu"), "head_node_type"),
    (lambda c: c["available_node_types"]["gpu_worker"].update(min_worker=1), "Additional properties"),
    (lambda c: c["available_node_types"]["gpu_worker"].update(min_workers=9), "max_workers"),
])
def test_rays_validation_catches_mistakes(mistake, error):
    """The check above can fail: Ray refuses these edits of aws.yaml."""
    config = launcher("aws.yaml")
    mistake(config)
    with pytest.raises(Exception, match=error):
        validated(config)


def test_aws_runs_the_image_and_gcp_builds_on_the_node():
    aws = launcher("aws.yaml")
    assert aws["docker"]["image"] and "-v /shared:/shared" in aws["docker"]["run_options"]
    gcp = launcher("gcp.yaml")
    assert gcp["file_mounts"] == {"~/tcam-ray": "."}  # this checkout, synced by `ray up`
    install = " ".join(gcp["setup_commands"])
    assert install.index("pip install -q torch") < install.index("pip install -q --no-build-isolation .")
    assert "FORCE_CUDA=1" in install
    for config in (aws, gcp):  # the shared filesystem for datasets and run folders
        assert any("/shared" in c and "mount" in c for c in config["initialization_commands"])


# --------------------------------------------------------------------------- KubeRay


def manifests(name: str) -> dict[str, dict]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all((CLUSTERS / name).read_text())}


def check_cluster_spec(spec: dict, claim: str) -> None:
    assert spec["rayVersion"] == ray.__version__
    head = spec["headGroupSpec"]["template"]["spec"]
    (worker_group,) = spec["workerGroupSpecs"]
    worker = worker_group["template"]["spec"]
    images = {pod["containers"][0]["image"] for pod in (head, worker)}
    assert len(images) == 1 and images.pop().endswith("tcam-ray:0.1.0")
    assert 0 == worker_group["minReplicas"] < worker_group["maxReplicas"]
    assert worker["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] >= 1
    assert "nvidia.com/gpu" not in head["containers"][0]["resources"]["limits"]
    for pod in (head, worker):
        mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
        volume = next(v for v in pod["volumes"] if v["name"] == mounts["/shared"])
        assert volume["persistentVolumeClaim"]["claimName"] == claim


def test_kuberay_raycluster():
    docs = manifests("kuberay-raycluster.yaml")
    cluster, claim = docs["RayCluster"], docs["PersistentVolumeClaim"]
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["spec"]["enableInTreeAutoscaling"] is True
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    check_cluster_spec(cluster["spec"], claim["metadata"]["name"])


def test_kuberay_rayjob_runs_a_valid_tcam_ray_command():
    job = manifests("kuberay-rayjob.yaml")["RayJob"]
    assert job["apiVersion"] == "ray.io/v1" and job["spec"]["shutdownAfterJobFinishes"] is True
    check_cluster_spec(job["spec"]["rayClusterSpec"], manifests("kuberay-raycluster.yaml")["PersistentVolumeClaim"]
                       ["metadata"]["name"])
    words = shlex.split(job["spec"]["entrypoint"])
    assert words[:2] == ["tcam-ray", "tune"]
    sweep_file = words[words.index("--config") + 1]
    assert sweep_file.startswith(f"{IMAGE_ROOT}/configs/")
    overrides = [words[i + 1] for i, word in enumerate(words) if word == "--set"]
    sweep = load_sweep(REPO / sweep_file[len(IMAGE_ROOT) + 1:], overrides)  # every key is a real config key
    assert sweep.base.run.root == "/shared/runs" and sweep.stage == "tcam"


# --------------------------------------------------------------------------- Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = (CLUSTERS / "Dockerfile").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    return [(m.group(1).upper(), m.group(2)) for m in re.finditer(r"^\s*([A-Za-z]+)\s+(.*)$", joined, re.M)]


def test_dockerfile_builds_the_package_with_its_op_and_runs_doctor():
    steps = dockerfile_instructions()
    args = dict(re.match(r"(\w+)=(.*)", a).groups() for kind, a in steps if kind == "ARG" and "=" in a)
    assert "devel" in args["CUDA_IMAGE"]  # nvcc is there to compile the CUDA kernels
    runs = " && ".join(a for kind, a in steps if kind == "RUN")
    torch_at = runs.index("pip install --index-url ${TORCH_INDEX} torch")
    package_at = runs.index("pip install --no-build-isolation .")
    assert torch_at < package_at < runs.index("tcam-ray doctor")
    assert "FORCE_CUDA=1" in runs
    assert ("COPY", ". /opt/tcam-ray") in steps
    ignored = (CLUSTERS / "Dockerfile.dockerignore").read_text().split()
    assert {".venv", "**/*.so", "runs"} <= set(ignored)  # nothing built for this machine goes in
