"""The service's deployment files: the Kubernetes manifest passes the Kubernetes schema (strict)
and wires the API, the workers, Redis and the autoscaler together; the compose file runs the same
commands."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

DOCKER = Path(__file__).resolve().parents[2] / "docker"
REDIS_URL = "redis://redis:6379/0"


def _manifest() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DOCKER / "k8s" / "service.yaml").read_text()) if d]


def _one(documents: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [d for d in documents if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def _option(args: list[str], name: str) -> str:
    """The value after `name` in an argument list (exactly once)."""
    assert args.count(name) == 1, (name, args)
    return args[args.index(name) + 1]


def _seconds(duration: str | int) -> float:
    """A compose duration ("45s", "1m30s", "500ms" or plain seconds) in seconds."""
    if isinstance(duration, int):
        return float(duration)
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6}
    return sum(float(n) * scale[u] for n, u in parts)


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def test_every_document_passes_the_kubernetes_schema_strictly() -> None:
    documents = _manifest()
    version = kubernetes_validate.latest_version()
    for document in documents:
        kubernetes_validate.validate(document, version, strict=True)
    kinds = Counter(d["kind"] for d in documents)
    assert set(kinds) == {
        "Secret",
        "ConfigMap",
        "Deployment",
        "Service",
        "PersistentVolumeClaim",
        "HorizontalPodAutoscaler",
    }
    assert kinds["Deployment"] == 3
    assert {d["metadata"]["name"] for d in documents if d["kind"] == "Deployment"} == {
        "connvo-redis",
        "connvo-service",
        "connvo-worker",
    }
    assert kinds["Service"] >= 2  # the API's and Redis's


def test_strict_validation_rejects_an_unknown_field() -> None:
    worker = _one(_manifest(), "Deployment", "connvo-worker")
    worker["spec"]["template"]["spec"]["terminationGraceSeconds"] = 90
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(worker, kubernetes_validate.latest_version(), strict=True)


def test_the_api_is_one_replica_recreated_on_persistent_state() -> None:
    documents = _manifest()
    deployment = _one(documents, "Deployment", "connvo-service")
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    container = _container(deployment)
    assert container["image"] == "connvo-agent:latest"
    assert container["imagePullPolicy"] == "IfNotPresent"
    args = container["args"]
    assert args[0] == "serve"
    assert _option(args, "--port") == "8080"
    assert _option(args, "--redis") == "$(CONNVO_REDIS_URL)"
    config = _one(documents, "ConfigMap", "connvo-service")
    assert config["data"]["CONNVO_REDIS_URL"] == "redis://connvo-redis:6379/0"
    assert {"configMapRef": {"name": "connvo-service"}} in container["envFrom"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": 8080}

    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    state_dir = _option(args, "--state-dir")
    state_claim = volumes[mounts[state_dir]]["persistentVolumeClaim"]["claimName"]
    assert _one(documents, "PersistentVolumeClaim", state_claim)
    key_file = Path(_option(args, "--api-key-file"))
    secret = volumes[mounts[str(key_file.parent)]]["secret"]["secretName"]
    assert key_file.name in _one(documents, "Secret", secret)["stringData"]
    # token_file is read in --token-dir, mounted from the same secret in the service and workers
    token_dir = _option(args, "--token-dir")
    tokens = volumes[mounts[token_dir]]["secret"]["secretName"]
    assert _one(documents, "Secret", tokens)["stringData"]
    worker = _one(documents, "Deployment", "connvo-worker")
    worker_mounts = {m["mountPath"]: m["name"] for m in _container(worker)["volumeMounts"]}
    worker_volumes = {v["name"]: v for v in worker["spec"]["template"]["spec"]["volumes"]}
    assert worker_volumes[worker_mounts[token_dir]]["secret"]["secretName"] == tokens

    service = _one(documents, "Service", "connvo-service")
    assert service["spec"]["selector"] == spec["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["port"] == 80
    assert service["spec"]["ports"][0]["targetPort"] == 8080


def test_workers_drain_within_their_termination_grace_period() -> None:
    documents = _manifest()
    worker = _one(documents, "Deployment", "connvo-worker")
    pod = worker["spec"]["template"]["spec"]
    container = _container(worker)
    args = container["args"]
    assert args[0] == "worker"
    assert _option(args, "--redis") == "$(CONNVO_REDIS_URL)"
    grace = int(_option(args, "--grace"))
    assert grace == 60
    assert pod["terminationGracePeriodSeconds"] >= grace + 15
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert "hostNetwork" not in pod

    port = int(_option(args, "--metrics-port"))
    assert port == 9465
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": port}
    annotations = worker["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(port)
    assert set(container["resources"]) == {"requests", "limits"}


def test_workers_and_the_api_share_the_bot_data_volume_at_the_same_path() -> None:
    documents = _manifest()
    worker = _one(documents, "Deployment", "connvo-worker")
    state_dir = _option(_container(worker)["args"], "--state-dir")
    claims = []
    for deployment in (worker, _one(documents, "Deployment", "connvo-service")):
        mounts = {m["mountPath"]: m["name"] for m in _container(deployment)["volumeMounts"]}
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        claims.append(volumes[mounts[state_dir]]["persistentVolumeClaim"]["claimName"])
    assert claims[0] == claims[1]
    claim = _one(documents, "PersistentVolumeClaim", claims[0])
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]


def test_the_autoscaler_scales_the_workers_on_their_running_bots() -> None:
    documents = _manifest()
    (hpa,) = [d for d in documents if d["kind"] == "HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert target == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "connvo-worker"}
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == "connvo_worker_bots"
    assert metric["pods"]["target"]["type"] == "AverageValue"
    max_bots = int(_one(documents, "ConfigMap", "connvo-service")["data"]["WORKER_MAX_BOTS"])
    worker_args = _container(_one(documents, "Deployment", "connvo-worker"))["args"]
    assert _option(worker_args, "--max-bots") == "$(WORKER_MAX_BOTS)"
    assert 0 < int(metric["pods"]["target"]["averageValue"]) < max_bots
    assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]


def test_compose_runs_the_api_and_two_draining_workers_on_one_redis() -> None:
    compose = yaml.safe_load((DOCKER / "compose.service.yaml").read_text())
    services = compose["services"]
    assert {"redis", "devserver", "setup", "service", "worker-1", "worker-2"} <= set(services)
    assert services["redis"]["image"] == "redis:7"
    assert "redis-cli" in services["redis"]["healthcheck"]["test"]

    service = services["service"]
    args = service["command"]
    assert args[0] == "serve"
    assert _option(args, "--redis") == REDIS_URL
    assert _option(args, "--state-dir") == "/data/service"
    assert _option(args, "--api-key-file") == "/data/api-keys"
    # the tokens setup writes are where the service takes token_file from
    assert _option(args, "--token-dir") == "/data/tokens"
    assert "> /data/tokens/bot.token" in services["setup"]["command"][0]
    assert "/data/api-keys" in services["setup"]["command"][0]
    assert service["ports"] == ["127.0.0.1:8080:8080"]
    assert "8080/healthz" in " ".join(service["healthcheck"]["test"])
    assert "servicedata:/data/service" in service["volumes"]
    assert "botdata:/data/bots" in service["volumes"]

    for name in ("worker-1", "worker-2"):
        worker = services[name]
        args = worker["command"]
        assert args[0] == "worker"
        assert _option(args, "--redis") == REDIS_URL
        assert _option(args, "--state-dir") == "/data/bots"
        assert "botdata:/data/bots" in worker["volumes"]
        port = _option(args, "--metrics-port")
        assert f"{port}/healthz" in " ".join(worker["healthcheck"]["test"])
        assert _seconds(worker["stop_grace_period"]) > int(_option(args, "--grace"))
        assert worker["depends_on"]["redis"] == {"condition": "service_healthy"}


@pytest.mark.parametrize(
    ("duration", "seconds"), [("45s", 45), ("1m30s", 90), ("500ms", 0.5), (20, 20)]
)
def test_compose_durations_are_read_in_seconds(duration: str | int, seconds: float) -> None:
    assert _seconds(duration) == seconds
