"""clusters/: the launcher YAMLs pass Ray's own config preparation and schema validation (offline,
as `ray up` does before it talks to the cloud), the KubeRay manifests have what the operator needs,
and the Dockerfile builds the package with its compiled op and checks it. Security (issue 16): no
firewall rule opens a Ray port to the world, every `ray start` runs with token authentication on the
node's private address, the KubeRay Services stay ClusterIP behind a NetworkPolicy, and the RayJob
gets the sweep owner key from an optional Secret."""
from __future__ import annotations

import copy
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from unittest import mock

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
    assert gcp["file_mounts"]["~/tcam-ray"] == "."  # this checkout, synced by `ray up`
    install = " ".join(gcp["setup_commands"])
    assert install.index("pip install -q torch") < install.index("pip install -q --no-build-isolation .")
    assert "FORCE_CUDA=1" in install
    for config in (aws, gcp):  # the shared filesystem for datasets and run folders
        assert any("/shared" in c and "mount" in c for c in config["initialization_commands"])


# --------------------------------------------------------------------------- launcher: network and auth

WORLD = {"0.0.0.0/0", "::/0"}
TOKEN_FILE = "~/.ray/auth_token"  # Ray's default token path, on the nodes as on the user's machine


def start_commands(config: dict) -> dict[str, str]:
    """{"head"/"worker": the command that runs `ray start`}."""
    found = {}
    for role in ("head", "worker"):
        (command,) = [c for c in config[f"{role}_start_ray_commands"] if "ray start" in c]
        found[role] = command
    return found


def world_open(rules: list[dict]) -> list[dict]:
    """The inbound rules (EC2 IpPermissions) that admit anyone on the internet, except SSH."""
    def to_world(rule):
        return ({r.get("CidrIp") for r in rule.get("IpRanges", [])}
                | {r.get("CidrIpv6") for r in rule.get("Ipv6Ranges", [])}) & WORLD

    return [r for r in rules if to_world(r) and (r["IpProtocol"], r["FromPort"], r["ToPort"]) != ("tcp", 22, 22)]


def aws_inbound_rules(config: dict) -> list[dict]:
    """The rules Ray's launcher gives the security group it creates for this config (its own code;
    boto3 is stubbed for the import: nothing talks to AWS)."""
    names = ["boto3", "boto3.exceptions", "boto3.resources", "boto3.resources.base", "botocore",
             "botocore.client", "botocore.config", "botocore.exceptions"]
    with mock.patch.dict(sys.modules, {name: mock.MagicMock(__version__="99") for name in names}):
        from ray.autoscaler._private.aws.config import _create_default_inbound_rules

        extra = config["provider"].get("security_group", {}).get("IpPermissions", [])
        return _create_default_inbound_rules({"sg-cluster"}, extra)


def test_aws_security_group_opens_only_ssh_to_the_world():
    config = validated(launcher("aws.yaml"))
    for node_type in config["available_node_types"].values():  # the launcher makes (and fills) the group
        assert "SecurityGroupIds" not in node_type["node_config"]
    rules = aws_inbound_rules(config)
    assert world_open(rules) == []
    inside = [r for r in rules if r.get("UserIdGroupPairs")]
    assert inside and all(pair["GroupId"] == "sg-cluster" for r in inside for pair in r["UserIdGroupPairs"])
    assert config["provider"]["security_group"]["IpPermissions"] == []


@pytest.mark.parametrize("rule", [
    {"IpProtocol": "tcp", "FromPort": 8265, "ToPort": 8265, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
    {"IpProtocol": "-1", "FromPort": -1, "ToPort": -1, "Ipv6Ranges": [{"CidrIpv6": "::/0"}]},
])
def test_aws_check_catches_a_ray_port_open_to_the_world(rule):
    config = launcher("aws.yaml")
    config["provider"]["security_group"]["IpPermissions"] = [rule]
    assert world_open(aws_inbound_rules(validated(config))) == [rule]


def firewall_rules(readme: str) -> list[dict[str, str]]:
    """The `gcloud compute firewall-rules create` commands of the README, as {flag: value}."""
    text = re.sub(r"\\\n", " ", readme)
    rules = []
    for line in text.splitlines():
        if "gcloud compute firewall-rules create" in line:
            words = shlex.split(line, comments=True)
            rules.append({"name": words[4], **dict(w[2:].split("=", 1) for w in words[5:])})
    return rules


def test_gcp_nodes_carry_the_tag_of_the_readme_firewall_rules():
    config = validated(launcher("gcp.yaml"))
    rules = firewall_rules((CLUSTERS / "README.md").read_text())
    assert len(rules) == 2
    for rule in rules:
        if WORLD & set(rule.get("source-ranges", "").split(",")):
            assert rule["allow"] == "tcp:22"  # only SSH from the world
        else:
            assert "source-ranges" not in rule and rule["source-tags"] == rule["target-tags"]
    (inside,) = [r for r in rules if "source-tags" in r]
    assert inside["allow"] == "tcp"  # every TCP port among the nodes: Ray's random ports, torch.distributed
    for node_type in config["available_node_types"].values():
        assert inside["target-tags"] in node_type["node_config"]["tags"]["items"]
    for rule in rules:
        assert rule["target-tags"] == inside["target-tags"]


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_copies_the_ray_token_to_every_node(name):
    config = launcher(name)
    assert config["file_mounts"][TOKEN_FILE] == TOKEN_FILE
    assert any("export RAY_AUTH_MODE=token" in c and ".bashrc" in c for c in config["setup_commands"])
    assert "RAY_AUTH_MODE=disabled" not in json.dumps(config)


def run_start_command(command: str, tmp_path: Path, metadata_ok: bool = True) -> subprocess.CompletedProcess:
    """Run a start command in bash with `ray` and `curl` stubbed: the stub `ray` prints what it got."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "curl").write_text("#!/bin/sh\n" + ("echo 10.1.2.3\n" if metadata_ok else "exit 22\n"))
    (bin_dir / "ray").write_text('#!/bin/sh\necho "auth=$RAY_AUTH_MODE soft=$RAY_num_workers_soft_limit $*"\n')
    for stub in bin_dir.iterdir():
        stub.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), "RAY_HEAD_IP": "10.1.0.1"}
    return subprocess.run(["bash", "-c", command], capture_output=True, text=True, env=env, timeout=30)


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_starts_ray_with_token_auth_on_the_private_address(name, tmp_path):
    commands = start_commands(validated(launcher(name)))
    for role, command in commands.items():
        assert "0.0.0.0" not in command
        done = run_start_command(command, tmp_path)
        assert done.returncode == 0, done.stderr
        (line,) = done.stdout.splitlines()
        words = line.split()
        assert words[0] == "auth=token" and words[1] == f"soft={3 * len(os.sched_getaffinity(0))}"
        assert words[2] == "start" and "--node-ip-address=10.1.2.3" in words
        if role == "head":
            assert "--head" in words and "--dashboard-host=127.0.0.1" in words
        else:
            assert "--address=10.1.0.1:6379" in words
        failed = run_start_command(command, tmp_path, metadata_ok=False)  # no address: no Ray at all
        assert failed.returncode != 0 and failed.stdout == ""


def test_ray_reads_the_token_from_the_file_the_launcher_copies(tmp_path):
    """`ray get-auth-token` (Ray's own token loader) finds the token at ~/.ray/auth_token."""
    token = "0123456789abcdef" * 4
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text(token)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH_")}
    env.update(HOME=str(tmp_path), RAY_AUTH_MODE="token")
    done = subprocess.run([str(Path(sys.executable).with_name("ray")), "get-auth-token"], capture_output=True,
                          text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == token


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
    words = words[words.index("tcam-ray"):]  # after the key file check (test below)
    assert words[:2] == ["tcam-ray", "tune"]
    sweep_file = words[words.index("--config") + 1]
    assert sweep_file.startswith(f"{IMAGE_ROOT}/configs/")
    overrides = [words[i + 1] for i, word in enumerate(words) if word == "--set"]
    sweep = load_sweep(REPO / sweep_file[len(IMAGE_ROOT) + 1:], overrides)  # every key is a real config key
    assert sweep.base.run.root == "/shared/runs" and sweep.stage == "tcam"


KUBERAY = ["kuberay-raycluster.yaml", "kuberay-rayjob.yaml"]
AUTH_SECRET = "tcam-ray-auth"


def cluster_spec(name: str) -> tuple[dict, dict]:
    """(the manifest's documents by kind, its RayCluster spec)."""
    docs = manifests(name)
    spec = docs["RayCluster"]["spec"] if "RayCluster" in docs else docs["RayJob"]["spec"]["rayClusterSpec"]
    return docs, spec


def pod_templates(spec: dict) -> list[dict]:
    return [spec["headGroupSpec"]["template"]] + [group["template"] for group in spec["workerGroupSpecs"]]


@pytest.mark.parametrize("name", KUBERAY)
def test_kuberay_ray_ports_stay_in_the_cluster(name):
    docs, spec = cluster_spec(name)
    assert spec["headGroupSpec"]["serviceType"] == "ClusterIP"
    for doc in yaml.safe_load_all((CLUSTERS / name).read_text()):
        if doc["kind"] == "Service":
            assert doc["spec"].get("type", "ClusterIP") == "ClusterIP"
    for template in pod_templates(spec):
        assert not template["spec"].get("hostNetwork")
        for container in template["spec"]["containers"]:
            assert all("hostPort" not in port for port in container.get("ports", []))


@pytest.mark.parametrize("name", KUBERAY)
def test_kuberay_token_auth(name):
    _, spec = cluster_spec(name)
    assert spec["authOptions"] == {"mode": "token", "secretName": AUTH_SECRET}
    for template in pod_templates(spec):  # nothing turns it off behind the operator's back
        for container in template["spec"]["containers"]:
            assert all(env["name"] not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN") for env in container.get("env", []))
    header = (CLUSTERS / "kuberay-raycluster.yaml").read_text()  # how the Secret is made
    assert f"kubectl create secret generic {AUTH_SECRET} --from-file=auth_token=$HOME/.ray/auth_token" in header


def allowed_sources(policy: dict) -> list[tuple[dict, set]]:
    """(peer, ports) for every peer an ingress rule admits; ports empty = all ports."""
    found = []
    for rule in policy["spec"]["ingress"]:
        ports = {(p.get("protocol", "TCP"), p["port"]) for p in rule.get("ports", [])}
        assert rule.get("from"), "a rule without `from` admits every source"
        found += [(peer, ports) for peer in rule["from"]]
    return found


@pytest.mark.parametrize("name", KUBERAY)
def test_kuberay_network_policy_admits_only_the_cluster_and_the_operator(name):
    docs, spec = cluster_spec(name)
    policy = docs["NetworkPolicy"]
    assert policy["apiVersion"] == "networking.k8s.io/v1" and policy["spec"]["policyTypes"] == ["Ingress"]
    own = policy["spec"]["podSelector"]["matchLabels"]
    for template in pod_templates(spec):  # the policy selects every pod of the cluster
        assert own.items() <= template["metadata"]["labels"].items()
    submitters = {"job-name": docs["RayJob"]["metadata"]["name"]} if "RayJob" in docs else None
    seen = set()
    for peer, ports in allowed_sources(policy):
        assert "ipBlock" not in peer
        if peer.get("podSelector", {}).get("matchLabels") == own and "namespaceSelector" not in peer:
            seen.add("cluster")  # any port: Ray's random ports, torch.distributed
            continue
        assert ports == {("TCP", 8265)}  # anyone else: the dashboard only
        labels = peer["podSelector"]["matchLabels"]
        if labels == {"app.kubernetes.io/component": "kuberay-operator"}:
            seen.add("operator")
        else:
            assert labels == submitters and "namespaceSelector" not in peer
            seen.add("submitter")
    assert seen == {"cluster", "operator"} | ({"submitter"} if submitters else set())


def test_kuberay_rayjob_mounts_the_optional_sweep_key(tmp_path):
    _, spec = cluster_spec("kuberay-rayjob.yaml")
    head = spec["headGroupSpec"]["template"]["spec"]
    container = head["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    key_file = env["TCAM_RAY_KEY_FILE"]
    (mount,) = [m for m in container["volumeMounts"] if key_file.startswith(m["mountPath"] + "/")]
    assert mount.get("readOnly") is True
    (volume,) = [v for v in head["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["optional"] is True
    file_name = key_file[len(mount["mountPath"]) + 1:]  # the Secret's key names the file
    header = (CLUSTERS / "kuberay-rayjob.yaml").read_text()
    assert (f"kubectl create secret generic {volume['secret']['secretName']} "
            f"--from-file={file_name}=$HOME/.config/tcam-ray/key") in header
    for worker in pod_templates(spec)[1:]:  # the sweep's driver runs on the head only
        assert all(e["name"] != "TCAM_RAY_KEY_FILE" for e in worker["spec"]["containers"][0].get("env", []))


@pytest.mark.parametrize("key_present", [True, False])
def test_kuberay_rayjob_entrypoint_drops_a_missing_key_file(key_present, tmp_path):
    """With the Secret absent the volume is empty: tcam-ray then makes its own key instead of failing
    on the read-only mount."""
    job = manifests("kuberay-rayjob.yaml")["RayJob"]
    entrypoint = job["spec"]["entrypoint"]
    key_file = tmp_path / "key"
    if key_present:
        key_file.write_text("ab" * 32 + "\n")
    (tmp_path / "tcam-ray").write_text('#!/bin/sh\necho "key=${TCAM_RAY_KEY_FILE-unset} $1"\n')
    (tmp_path / "tcam-ray").chmod(0o755)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "TCAM_RAY_KEY_FILE": str(key_file)}
    done = subprocess.run(["bash", "-c", entrypoint], capture_output=True, text=True, env=env, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [f"key={key_file if key_present else 'unset'}", "tune"]


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
