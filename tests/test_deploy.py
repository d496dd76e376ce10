"""Deployment files: cluster.yaml against Ray's own schema, the RayJob manifest, the Dockerfile.

Every ``lstc`` command written in them must parse with the real command line, so a renamed
flag or recipe key breaks here and not on a cluster.
"""

from __future__ import annotations

import copy
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
RAYJOBS = sorted((ROOT / "deploy" / "k8s").glob("rayjob*.yaml"))


def parse_lstc(argv: list[str]):
    """Parse an ``lstc`` command line with the real parser; recipe overrides are validated by
    loading the recipe with them (URIs in data.root/storage_path are only strings here)."""
    from pipelines.cli import build_parser
    from pipelines.config import load_recipe

    args = build_parser().parse_args(argv)
    if getattr(args, "config", None):
        load_recipe(ROOT / args.config, list(getattr(args, "overrides", []) or []))
    return args


def pinned(name: str) -> str:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for d in deps:
        head = d.split("==")[0].split("[")[0].strip()
        if head == name and "==" in d:
            return d.split("==")[1].split()[0].strip('",')
    raise KeyError(name)


# ------------------------------------------------------------------------------ cluster.yaml


@pytest.fixture(scope="module")
def cluster_cfg() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_cluster_yaml_validates_against_rays_schema(cluster_cfg):
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(cluster_cfg)))
    broken = copy.deepcopy(cluster_cfg)
    broken["docker"]["imagee"] = broken["docker"]["image"]  # a typo beside the real key
    with pytest.raises(Exception, match="imagee"):
        validate_config(prepare_config(broken))


def test_cluster_yaml_keeps_dashboard_local_and_artefacts_home(cluster_cfg):
    head_cmds = " ".join(cluster_cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_cmds and "0.0.0.0" not in head_cmds
    assert cluster_cfg["available_node_types"]["head"]["resources"] == {"CPU": 0}
    excluded = set(cluster_cfg["rsync_exclude"])
    assert {".venv", "data", "outputs", "mlruns", "mlartifacts", "mlflow.db"} <= excluded
    worker = cluster_cfg["available_node_types"]["gpu_worker"]["node_config"]
    assert "IamInstanceProfile" in worker  # S3 access on the workers
    assert cluster_cfg["docker"]["image"].endswith(":0.1.0")


def test_commands_in_cluster_yaml_parse():
    lines = (ROOT / "cluster.yaml").read_text().splitlines()
    cmds, current = [], None
    for line in lines:
        text = line.lstrip("# ").rstrip()
        if text.startswith("lstc "):
            current = text
        elif current is not None and line.startswith("#       "):
            current += " " + text
        else:
            if current is not None:
                cmds.append(current)
            current = None
    assert cmds, "cluster.yaml documents no lstc command"
    for cmd in cmds:
        argv = shlex.split(cmd.replace("\\", ""))[1:]
        args = parse_lstc(argv)
        if args.command == "submit":  # the command the job runs must parse too
            parse_lstc([args.job_command, *args.args])


# --------------------------------------------------------------------------------- RayJob


@pytest.mark.parametrize("path", RAYJOBS, ids=lambda p: p.name)
def test_rayjob_manifest(path):
    import ray

    doc = yaml.safe_load(path.read_text())
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayJob"
    assert doc["metadata"]["name"]
    spec = doc["spec"]
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__ == pinned("ray")
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["image"] and "rayStartParams" in cluster["headGroupSpec"]
    for group in cluster["workerGroupSpecs"]:
        assert group["groupName"] and group["minReplicas"] <= group["replicas"]
        assert group["replicas"] <= group["maxReplicas"]
        container = group["template"]["spec"]["containers"][0]
        assert container["image"] == head["image"]
        assert "nvidia.com/gpu" in container["resources"]["limits"]
    env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert "MLFLOW_TRACKING_URI" in env["env_vars"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[:3] == ["python", "-m", "pipelines.cli"]
    parse_lstc(argv[3:])


# ------------------------------------------------------------------------------ Dockerfile


def test_dockerfile_parses_and_matches_the_pins():
    from dockerfile_parse import DockerfileParser

    df = DockerfileParser(path=str(ROOT / "Dockerfile"))
    base = df.baseimage
    assert base.startswith("rayproject/ray:"), base
    tag = base.split(":", 1)[1]
    assert tag.startswith(pinned("ray") + "-py311"), tag  # Ray and Python of the project
    instructions = [i["instruction"] for i in df.structure if i["instruction"] != "COMMENT"]
    assert instructions[0] in ("ARG", "FROM") and "FROM" in instructions
    runs = " ".join(i["value"] for i in df.structure if i["instruction"] == "RUN")
    assert "pip install" in runs and ".[gpu]" in runs
    copies = {i["value"].split()[-1] for i in df.structure if i["instruction"] == "COPY"}
    assert {"lstc", "data_prep", "pipelines", "tuning", "configs"} <= copies
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", "data", "outputs", "mlruns", "mlflow.db"} <= set(ignored)


# ------------------------------------------------------------------------- documented commands


def shell_commands(markdown: str) -> list[str]:
    """``lstc ...`` commands of the ```bash blocks (continuation lines joined)."""
    cmds, block, current = [], False, ""
    for line in markdown.splitlines():
        if line.startswith("```"):
            block = line.strip() == "```bash"
            continue
        if not block:
            continue
        text = line.split(" #", 1)[0].strip() if not line.strip().startswith("#") else ""
        current = f"{current} {text}" if current else text
        if current.endswith("\\"):
            current = current[:-1]
            continue
        if current.startswith("lstc "):
            cmds.append(current)
        current = ""
    return cmds


@pytest.mark.parametrize("doc", ["README.md", "docs/CLUSTER.md"])
def test_every_lstc_command_in_the_docs_parses(doc):
    """Each ``lstc ...`` line of the docs' bash blocks parses with the real command line (and
    its recipe loads with its overrides); for ``lstc submit`` the submitted command too."""
    cmds = shell_commands((ROOT / doc).read_text())
    assert len(cmds) >= 6, cmds
    for cmd in cmds:
        argv = [a for a in shlex.split(cmd)[1:]]
        args = parse_lstc(argv)
        if args.command == "submit":
            parse_lstc([args.job_command, *args.args])
