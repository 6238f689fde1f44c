"""The deployment files parse, and the Kubernetes manifest passes the Kubernetes schema."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import yaml

DOCKER = Path(__file__).resolve().parents[2] / "docker"


def test_kubernetes_job_manifest_is_valid() -> None:
    documents = list(yaml.safe_load_all((DOCKER / "k8s" / "load-job.yaml").read_text()))
    assert {d["kind"] for d in documents} == {"ConfigMap", "Job"}
    version = kubernetes_validate.latest_version()
    for document in documents:
        kubernetes_validate.validate(document, version, strict=True)
    job = next(d for d in documents if d["kind"] == "Job")
    spec = job["spec"]
    config = next(d for d in documents if d["kind"] == "ConfigMap")["data"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == int(config["SHARDS"])
    assert "$JOB_COMPLETION_INDEX/$SHARDS" in spec["template"]["spec"]["containers"][0]["args"][0]


def test_compose_files_parse_and_name_their_services() -> None:
    run = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    assert {"devserver", "setup", "bot"} <= set(run["services"])
    load = yaml.safe_load((DOCKER / "compose.load.yaml").read_text())
    assert {"devserver", "shard-0", "shard-1", "merge"} <= set(load["services"])
    assert "--shard 1/$$SHARDS" in load["services"]["shard-1"]["command"][0]
