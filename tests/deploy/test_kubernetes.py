"""deploy/kubernetes: every manifest valid against the Kubernetes schemas (offline), and in step with the service."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from pydantic import ValidationError

from app.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "deploy/kubernetes"
KUBERNETES_VERSION = "1.32.0"
IMAGE = "churn-service:latest"
POD_KINDS = {"Deployment", "Job", "CronJob"}
# Variables naming a directory the process writes to: with a read-only root it must be a writable volume.
WRITTEN_DIRS = {
    "CHURN_METRICS_MULTIPROC_DIR",
    "CHURN_PREDICTION_LOG_SPOOL_DIR",
    "NUMBA_CACHE_DIR",
    "DASK_TEMPORARY_DIRECTORY",
    "MPLCONFIGDIR",
}
UNITS = {"": 1, "m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}


@cache
def documents() -> tuple[tuple[str, dict], ...]:
    """(file relative to the manifests, document) for every Kubernetes object, kustomization.yaml aside."""
    found = []
    for path in sorted(MANIFESTS.rglob("*.yaml")):
        if path.name != "kustomization.yaml":
            found += [(str(path.relative_to(MANIFESTS)), doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return tuple(found)


def objects(kind: str) -> dict[str, dict]:
    return {
        doc["metadata"].get("name") or doc["metadata"]["generateName"]: doc
        for _, doc in documents()
        if doc["kind"] == kind
    }


def one(kind: str, name: str) -> dict:
    return objects(kind)[name]


def pod_template(workload: dict) -> dict:
    spec = workload["spec"]
    return spec["jobTemplate"]["spec"]["template"] if workload["kind"] == "CronJob" else spec["template"]


def pod_specs() -> Iterator[tuple[str, dict]]:
    for _, doc in documents():
        if doc["kind"] in POD_KINDS:
            yield doc["metadata"].get("name") or doc["metadata"]["generateName"], pod_template(doc)["spec"]


def main_container(workload: dict) -> dict:
    (container,) = pod_template(workload)["spec"]["containers"]
    return container


def env(container: dict) -> dict[str, dict]:
    return {item["name"]: item for item in container.get("env", [])}


def quantity(value: str | int) -> float:
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)(m|Ki|Mi|Gi)?", str(value)).groups()
    return float(number) * UNITS[unit or ""]


def shell_argv(container: dict) -> list[str]:
    """The command's argv; a `sh -c "exec ..."` wrapper (used to compute an argument) is unwrapped."""
    command = container["command"] + container.get("args", [])
    if command[:2] == ["sh", "-c"]:
        command = shlex.split(command[2])
        return command[1:] if command[0] == "exec" else command
    return command


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def mount_for(container: dict, path: str) -> dict:
    """The volume mount holding ``path`` (the longest matching mount path)."""
    mounts = [m for m in container["volumeMounts"] if path == m["mountPath"] or path.startswith(m["mountPath"] + "/")]
    assert mounts, f"{container['name']}: nothing mounted at {path}"
    return max(mounts, key=lambda mount: len(mount["mountPath"]))


def claim_of(pod_spec: dict, container: dict, path: str) -> str:
    volumes = {volume["name"]: volume for volume in pod_spec["volumes"]}
    return volumes[mount_for(container, path)["name"]]["persistentVolumeClaim"]["claimName"]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


@pytest.mark.parametrize(
    ("path", "document"), [pytest.param(path, doc, id=f"{path}:{doc['kind']}") for path, doc in documents()]
)
def test_every_manifest_is_valid_kubernetes(path: str, document: dict) -> None:
    kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_strict_validation_rejects_unknown_and_mistyped_fields() -> None:
    deployment = yaml.safe_load((MANIFESTS / "api-deployment.yaml").read_text())
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="livenesProbe"):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_every_manifest_but_the_one_off_jobs() -> None:
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    on_disk = {path.name for path in MANIFESTS.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == on_disk
    assert kustomization["namespace"] == one("Namespace", "churn")["metadata"]["name"]
    assert all(doc["metadata"]["namespace"] == "churn" for path, doc in documents() if path.startswith("jobs/"))


def test_every_container_is_unprivileged_with_requests_and_limits() -> None:
    uid = int(re.search(r"--uid (\d+)", (ROOT / "Dockerfile").read_text()).group(1))
    for name, spec in pod_specs():
        pod_security = spec["securityContext"]
        assert pod_security["runAsNonRoot"] is True and pod_security["runAsUser"] == uid, name
        assert pod_security["seccompProfile"]["type"] == "RuntimeDefault", name
        assert spec["automountServiceAccountToken"] is False, name
        for container in spec.get("initContainers", []) + spec["containers"]:
            where = f"{name}/{container['name']}"
            assert container["image"] == IMAGE, where
            security = container["securityContext"]
            assert security["runAsNonRoot"] is True and security["allowPrivilegeEscalation"] is False, where
            assert security["capabilities"]["drop"] == ["ALL"] and security["readOnlyRootFilesystem"] is True, where
            resources = container["resources"]
            for resource in ("cpu", "memory"):
                assert quantity(resources["requests"][resource]) <= quantity(resources["limits"][resource]), where


def test_what_processes_write_lies_on_writable_volumes() -> None:
    for name, spec in pod_specs():
        volumes = {volume["name"] for volume in spec["volumes"]}
        for container in spec.get("initContainers", []) + spec["containers"]:
            assert {mount["name"] for mount in container["volumeMounts"]} <= volumes, name
        for container in spec["containers"]:
            written = ["/tmp"] + [item["value"] for key, item in env(container).items() if key in WRITTEN_DIRS]
            for path in written:
                assert not mount_for(container, path).get("readOnly", False), f"{name}: {path}"


def test_claims_are_defined_and_the_bundle_is_read_only_where_it_is_served() -> None:
    claims = set(objects("PersistentVolumeClaim"))
    for name, spec in pod_specs():
        used = {v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"] if "persistentVolumeClaim" in v}
        assert used <= claims, name
    for name in ("churn-api", "churn-dask-worker"):
        deployment = one("Deployment", name)
        container = main_container(deployment)
        assert mount_for(container, "/app/models")["readOnly"] is True
        assert claim_of(pod_template(deployment)["spec"], container, "/app/models") == "churn-models"


def test_the_service_probes_health_and_readiness_on_its_port() -> None:
    container = main_container(one("Deployment", "churn-api"))
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    port = int(env(container)["CHURN_PORT"]["value"])
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["startupProbe"]["httpGet"]["path"] == "/health"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert ports[container[probe]["httpGet"]["port"]] == port


def test_readiness_sees_the_drain_and_the_grace_period_outlasts_it() -> None:
    deployment = one("Deployment", "churn-api")
    container = main_container(deployment)
    drain = float(env(container)["CHURN_SHUTDOWN_DRAIN_SECONDS"]["value"])
    readiness = container["readinessProbe"]
    assert readiness["periodSeconds"] * readiness["failureThreshold"] <= drain
    assert pod_template(deployment)["spec"]["terminationGracePeriodSeconds"] > drain + 30


def test_the_service_environment_names_real_settings() -> None:
    container = main_container(one("Deployment", "churn-api"))
    settings = {f"CHURN_{field.upper()}" for field in Settings.model_fields}
    assert {key for key in env(container) if key.startswith("CHURN_")} <= settings
    assert int(env(container)["CHURN_WORKERS"]["value"]) == 2
    assert "sqlite" not in str(env(container)["CHURN_DATABASE_URL"])


def test_secrets_come_only_from_secret_objects_and_ship_as_placeholders() -> None:
    secrets = {name: doc["stringData"] for name, doc in objects("Secret").items()}
    for name, spec in pod_specs():
        for container in spec["containers"]:
            for key in ("CHURN_API_KEY", "CHURN_DATABASE_URL"):
                if key in env(container):
                    reference = env(container)[key]["valueFrom"]["secretKeyRef"]
                    assert "value" not in env(container)[key], name
                    assert reference["key"] in secrets[reference["name"]], name
    assert all("CHURN_API_KEY" not in str(doc.get("data")) for doc in objects("ConfigMap").values())
    reference = env(main_container(one("Deployment", "churn-api")))["CHURN_API_KEY"]["valueFrom"]["secretKeyRef"]
    with pytest.raises(ValidationError, match="placeholder"):
        Settings(api_key=secrets[reference["name"]][reference["key"]])
    reference = env(main_container(one("Deployment", "churn-api")))["CHURN_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
    assert secrets[reference["name"]][reference["key"]].startswith("postgresql://")


def test_services_hpa_and_pdb_select_the_pods_they_mean() -> None:
    deployments = objects("Deployment")
    for name, deployment in deployments.items():
        labels = pod_template(deployment)["metadata"]["labels"]
        assert selects(deployment["spec"]["selector"]["matchLabels"], labels), name
    for name, service in objects("Service").items():
        (target,) = [
            d
            for d in deployments.values()
            if selects(service["spec"]["selector"], pod_template(d)["metadata"]["labels"])
        ]
        port_names = {port["name"] for port in main_container(target)["ports"]}
        assert {port["targetPort"] for port in service["spec"]["ports"]} <= port_names, name
    hpa = one("HorizontalPodAutoscaler", "churn-api")
    assert hpa["spec"]["scaleTargetRef"]["kind"] == "Deployment"
    api = deployments[hpa["spec"]["scaleTargetRef"]["name"]]
    assert "replicas" not in api["spec"]  # the autoscaler owns it
    assert [metric["resource"]["name"] for metric in hpa["spec"]["metrics"]] == ["cpu"]
    pdb = one("PodDisruptionBudget", "churn-api")
    assert pdb["spec"]["selector"]["matchLabels"] == api["spec"]["selector"]["matchLabels"]
    assert pdb["spec"]["maxUnavailable"] < hpa["spec"]["minReplicas"]


def test_the_ingress_reaches_the_service_and_takes_the_largest_body_it_accepts() -> None:
    ingress = one("Ingress", "churn-api")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    body = ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"]
    max_body = int(env(main_container(one("Deployment", "churn-api")))["CHURN_MAX_BODY_BYTES"]["value"])
    assert int(body.removesuffix("m")) * 2**20 == max_body == Settings().max_body_bytes
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["port"]["name"] in {port["name"] for port in one("Service", backend["name"])["spec"]["ports"]}


def test_prometheus_finds_every_annotated_pod_under_the_job_the_alerts_use() -> None:
    for name, deployment in objects("Deployment").items():
        annotations = pod_template(deployment)["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true", name
        assert int(annotations["prometheus.io/port"]) in {
            p["containerPort"] for p in main_container(deployment)["ports"]
        }
    (snippet,) = one("ConfigMap", "churn-prometheus-scrape")["data"].values()
    jobs = {job["job_name"]: job for job in yaml.safe_load(snippet)["scrape_configs"]}
    alerting_jobs = set(re.findall(r'job="([^"]+)"', (ROOT / "deploy/prometheus/alerts.yml").read_text()))
    assert alerting_jobs <= set(jobs)
    for job in jobs.values():
        assert [config["role"] for config in job["kubernetes_sd_configs"]] == ["pod"]
        kept = [rule["source_labels"] for rule in job["relabel_configs"] if rule.get("action") == "keep"]
        assert ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"] in kept


def scheduler_address() -> str:
    service = one("Service", "churn-dask-scheduler")
    scheduler = main_container(one("Deployment", "churn-dask-scheduler"))
    (comm,) = [port for port in service["spec"]["ports"] if port["targetPort"] == "comm"]
    assert int(option(scheduler["command"], "--port")) == comm["port"]
    return f"tcp://{service['metadata']['name']}:{comm['port']}"


def test_the_nightly_job_scores_on_the_dask_cluster_one_run_at_a_time() -> None:
    cronjob = one("CronJob", "churn-scoring")
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    assert len(cronjob["spec"]["schedule"].split()) == 5
    spec = pod_template(cronjob)["spec"]
    container = main_container(cronjob)
    argv = shell_argv(container)
    assert argv[:3] == ["python", "-m", "scoring"]
    assert option(argv, "--scheduler") == scheduler_address()
    model_dir = option(argv, "--model-dir")
    assert mount_for(container, model_dir)["readOnly"] is True
    assert claim_of(spec, container, model_dir) == "churn-models"
    out = option(argv, "--out")
    assert not mount_for(container, out).get("readOnly", False)
    assert claim_of(spec, container, out) == "churn-scores"


def test_dask_workers_join_the_scheduler_and_see_the_jobs_data_at_the_same_paths() -> None:
    worker_deployment = one("Deployment", "churn-dask-worker")
    worker = main_container(worker_deployment)
    assert worker["command"][:3] == ["dask", "worker", scheduler_address()]
    assert main_container(one("Deployment", "churn-dask-scheduler"))["command"][:2] == ["dask", "scheduler"]
    for name in ("churn-dask-scheduler", "churn-dask-worker"):
        container = main_container(one("Deployment", name))
        assert "livenessProbe" in container and "readinessProbe" in container, name
    cronjob = one("CronJob", "churn-scoring")
    argv = shell_argv(main_container(cronjob))
    job_spec, worker_spec = pod_template(cronjob)["spec"], pod_template(worker_deployment)["spec"]
    for path in (option(argv, "--data"), option(argv, "--out"), option(argv, "--model-dir")):
        assert claim_of(worker_spec, worker, path) == claim_of(job_spec, main_container(cronjob), path), path


def test_training_publishes_into_the_volume_the_service_serves() -> None:
    job = one("Job", "churn-training-")
    container = main_container(job)
    assert container["command"][:3] == ["python", "-m", "training"]
    model_dir = option(container["command"], "--model-dir")
    assert not mount_for(container, model_dir).get("readOnly", False)
    assert claim_of(pod_template(job)["spec"], container, model_dir) == "churn-models"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomize_renders_every_listed_manifest_into_the_namespace() -> None:
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(MANIFESTS)], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    docs = [doc for doc in yaml.safe_load_all(rendered) if doc]
    assert len(docs) == sum(1 for path, _ in documents() if not path.startswith("jobs/"))
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "churn"
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "churn"
