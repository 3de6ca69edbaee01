"""docker-compose.yml: validated by `docker compose config` where available, and by a structural check always."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"

TOP_LEVEL_KEYS = {"version", "name", "services", "volumes", "networks", "configs", "secrets"}
SERVICE_KEYS = {
    "build", "image", "command", "entrypoint", "environment", "env_file", "volumes", "ports", "expose",
    "depends_on", "healthcheck", "restart", "user", "working_dir", "networks", "labels", "logging",
    "deploy", "init", "stop_grace_period", "profiles", "container_name", "hostname", "ulimits", "tmpfs",
}  # fmt: skip
HEALTHCHECK_KEYS = {"test", "interval", "timeout", "retries", "start_period", "start_interval", "disable"}
DEPENDS_CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
DURATION = re.compile(r"^(\d+(\.\d+)?(us|ms|s|m|h))+$")
PORT = re.compile(r"^(\$\{[A-Z_]+:-\d+\}|\d+):\d+$")


def _compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def _compose_command() -> list[str] | None:
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True, check=False)
        if probe.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def _named_volumes(service: dict) -> set[str]:
    names = set()
    for volume in service.get("volumes", []):
        source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
        if source and not source.startswith((".", "/", "~", "$")):
            names.add(source)
    return names


def _bind_mounts(service: dict) -> dict[str, tuple[str, str]]:
    """container path -> (host path, mode) for the service's bind mounts."""
    mounts = {}
    for volume in service.get("volumes", []):
        parts = volume.split(":")
        if parts[0].startswith("."):
            mounts[parts[1]] = (parts[0], parts[2] if len(parts) > 2 else "rw")
    return mounts


# ---- validation ------------------------------------------------------------------------------------
def test_compose_file_follows_the_compose_structure() -> None:
    """What `docker compose config` rejects: unknown keys, bad durations, undeclared volumes, bad deps."""
    compose = _compose()
    assert set(compose) - TOP_LEVEL_KEYS == {key for key in compose if key.startswith("x-")}
    services = compose["services"]
    declared = set(compose.get("volumes") or {})
    for name, service in services.items():
        assert set(service) <= SERVICE_KEYS, f"{name}: unknown keys {set(service) - SERVICE_KEYS}"
        assert "image" in service or "build" in service, name
        assert _named_volumes(service) <= declared, f"{name}: undeclared volumes"
        for port in service.get("ports", []):
            assert PORT.match(str(port)), f"{name}: port {port!r}"
        for dependency, spec in (service.get("depends_on") or {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            assert spec["condition"] in DEPENDS_CONDITIONS
        healthcheck = service.get("healthcheck")
        if healthcheck:
            assert set(healthcheck) <= HEALTHCHECK_KEYS, name
            assert healthcheck["test"][0] in {"CMD", "CMD-SHELL", "NONE"}, name
            for key in ("interval", "timeout", "start_period"):
                assert DURATION.match(healthcheck[key]), f"{name}: {key}={healthcheck[key]!r}"
        for host, _ in _bind_mounts(service).values():
            assert (ROOT / host).exists(), f"{name}: mounts missing {host}"
    assert declared == set().union(*(_named_volumes(service) for service in services.values())), "unused volumes"


def test_docker_compose_config_validates_the_file(tmp_path: Path) -> None:
    command = _compose_command()
    if command is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed")
    env = {**os.environ, "CHURN_WORKERS": "3", "CHURN_API_KEY": "s3cret", "GRAFANA_ADMIN_PASSWORD": "g3cret"}
    env.pop("COMPOSE_FILE", None)
    result = _compose_config(command, env, tmp_path)
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    api_env = resolved["services"]["churn-api"]["environment"]
    assert str(api_env["CHURN_WORKERS"]) == "3"
    assert api_env["CHURN_API_KEY"] == "s3cret"
    assert resolved["services"]["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == "g3cret"
    services = {"trainer", "churn-api", "nginx", "prometheus", "alertmanager", "retrainer", "grafana"}
    assert set(resolved["services"]) == services
    assert resolved["services"]["retrainer"]["environment"]["CHURN_API_KEY"] == "s3cret"


@pytest.mark.parametrize("missing", ["CHURN_API_KEY", "GRAFANA_ADMIN_PASSWORD"])
def test_docker_compose_refuses_to_start_without_a_secret(missing: str, tmp_path: Path) -> None:
    command = _compose_command()
    if command is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed")
    env = {**os.environ, "CHURN_API_KEY": "s3cret", "GRAFANA_ADMIN_PASSWORD": "g3cret"}
    env.pop(missing)
    env.pop("COMPOSE_FILE", None)
    result = _compose_config(command, env, tmp_path)
    assert result.returncode != 0
    assert f"set {missing}" in result.stderr


def _compose_config(command: list[str], env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    # An empty env file instead of a developer's .env, so only the given environment counts.
    empty = tmp_path / "empty.env"
    empty.write_text("")
    return subprocess.run(
        [*command, "-f", str(COMPOSE_FILE), "--env-file", str(empty), "config"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


# ---- content ---------------------------------------------------------------------------------------
def test_api_service_runs_the_app_with_one_worker_setting_and_persistent_data() -> None:
    api = _compose()["services"]["churn-api"]
    assert api["build"] == "."
    assert api["command"] == ["python", "-m", "app"]
    env = api["environment"]
    assert env["CHURN_HOST"] == "0.0.0.0"
    assert env["CHURN_WORKERS"] == "${CHURN_WORKERS:-2}"
    assert env["CHURN_MODEL_DIR"] == "/app/models"
    assert env["CHURN_DATABASE_URL"] == "sqlite:////data/predictions.sqlite3"
    assert env["CHURN_API_KEY"].startswith("${CHURN_API_KEY:?")  # no default: compose refuses to start without it
    assert "ports" not in api and api["expose"] == ["8000"]  # clients reach it through nginx only
    assert {"models:/app/models", "data:/data"} <= set(api["volumes"])
    assert api["depends_on"]["trainer"]["condition"] == "service_completed_successfully"
    probe = " ".join(api["healthcheck"]["test"])
    assert "python" in probe and "http://127.0.0.1:8000/ready" in probe


def test_trainer_publishes_a_bundle_only_when_none_exists() -> None:
    services = _compose()["services"]
    trainer = services["trainer"]
    assert trainer["image"] == services["churn-api"]["image"]
    script = trainer["command"][-1]
    assert script.startswith("test -f /app/models/current ||")
    assert "python -m training --model-dir /app/models" in script
    assert trainer["volumes"] == ["models:/app/models"]
    assert trainer["restart"] == "no"


def test_prometheus_uses_the_repository_config_and_rules() -> None:
    prometheus = _compose()["services"]["prometheus"]
    assert prometheus["image"].startswith("prom/prometheus:")
    mounts = _bind_mounts(prometheus)
    assert mounts["/etc/prometheus/prometheus.yml"] == ("./deploy/prometheus/prometheus.yml", "ro")
    assert mounts["/etc/prometheus/alerts.yml"] == ("./deploy/prometheus/alerts.yml", "ro")
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    assert "prometheus-data:/prometheus" in prometheus["volumes"]
    assert "http://127.0.0.1:9090/-/ready" in prometheus["healthcheck"]["test"]


def test_grafana_is_provisioned_from_the_repository() -> None:
    grafana = _compose()["services"]["grafana"]
    assert grafana["image"].startswith("grafana/grafana:")
    mounts = _bind_mounts(grafana)
    assert mounts["/etc/grafana/provisioning"] == ("./deploy/grafana/provisioning", "ro")
    assert mounts["/etc/grafana/dashboards"] == ("./deploy/grafana/dashboards", "ro")
    providers = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/dashboards.yml").read_text())
    assert providers["providers"][0]["options"]["path"] == "/etc/grafana/dashboards"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith("/etc/grafana/dashboards/")
    assert (ROOT / "deploy/grafana/dashboards" / Path(home).name).is_file()
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert "grafana-data:/var/lib/grafana" in grafana["volumes"]
    assert "http://127.0.0.1:3000/api/health" in grafana["healthcheck"]["test"]


def test_nginx_fronts_the_api_with_the_repository_config() -> None:
    nginx = _compose()["services"]["nginx"]
    assert nginx["image"].startswith("nginx:")
    assert _bind_mounts(nginx)["/etc/nginx/nginx.conf"] == ("./deploy/nginx/nginx.conf", "ro")
    assert nginx["ports"] == ["${API_PORT:-8000}:8080"]
    assert "listen 8080" in (ROOT / "deploy/nginx/nginx.conf").read_text()
    assert "server churn-api:8000 resolve;" in (ROOT / "deploy/nginx/nginx.conf").read_text()


def test_no_secret_has_a_default() -> None:
    text = COMPOSE_FILE.read_text()
    assert "change-me" not in text
    assert "${GRAFANA_ADMIN_PASSWORD:?" in text and "${CHURN_API_KEY:?" in text


def test_every_long_running_service_has_a_healthcheck_and_published_port() -> None:
    services = _compose()["services"]
    for name in ("churn-api", "nginx", "prometheus", "grafana", "alertmanager", "retrainer"):
        assert services[name]["healthcheck"]["test"], name
        assert services[name]["restart"] == "unless-stopped"
    for name, container_port in (("nginx", 8080), ("prometheus", 9090), ("grafana", 3000), ("alertmanager", 9093)):
        assert any(str(port).endswith(f":{container_port}") for port in services[name]["ports"]), name
    assert set(_compose()["volumes"]) == {"models", "data", "prometheus-data", "alertmanager-data", "grafana-data"}


def test_alerts_reach_the_retrainer_through_alertmanager() -> None:
    services = _compose()["services"]
    prometheus = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    (target,) = prometheus["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert target == "alertmanager:9093"
    retrainer = services["retrainer"]
    assert retrainer["command"][:3] == ["python", "-m", "training.retrainer"]
    assert "--reload-url=http://churn-api:8000/admin/reload" in retrainer["command"]
    # It reads the API's prediction log and publishes into the models volume the API serves from.
    assert _named_volumes(retrainer) == _named_volumes(services["churn-api"]) == {"data", "models"}
    config = yaml.safe_load((ROOT / "deploy" / "alertmanager" / "alertmanager.yml").read_text())
    (hook,) = next(r for r in config["receivers"] if r["name"] == "retrainer")["webhook_configs"]
    assert hook["url"] == "http://retrainer:9095/alerts"


@pytest.mark.skipif(shutil.which("amtool") is None, reason="needs amtool (Debian's prometheus-alertmanager package)")
@pytest.mark.parametrize(
    ("alertname", "receiver"),
    [
        ("ChurnFeatureDrift", "retrainer"),
        ("ChurnScoreDrift", "retrainer"),
        ("ChurnEstimatedRocAucDrop", "retrainer"),
        ("ChurnRealizedRocAucLow", "retrainer"),
        ("ChurnHighP99Latency", "null"),
        ("ChurnChallengerFailing", "null"),
    ],
)
def test_alertmanager_routes_only_staleness_alerts_to_the_retrainer(alertname: str, receiver: str) -> None:
    config = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
    assert subprocess.run(["amtool", "check-config", str(config)], capture_output=True, check=False).returncode == 0
    routed = subprocess.run(
        ["amtool", "config", "routes", "test", f"--config.file={config}", f"alertname={alertname}", "job=churn-api"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert routed.stdout.strip() == receiver


REPLICAS_FILE = ROOT / "docker-compose.replicas.yml"


def test_the_replicas_overlay_makes_one_service_of_several_api_containers(tmp_path: Path) -> None:
    command = _compose_command()
    if command is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed")
    env = {**os.environ, "CHURN_API_KEY": "s3cret", "GRAFANA_ADMIN_PASSWORD": "g3cret", "POSTGRES_PASSWORD": "p4ss"}
    env.pop("COMPOSE_FILE", None)
    empty = tmp_path / "empty.env"
    empty.write_text("")
    files = ["-f", str(COMPOSE_FILE), "-f", str(REPLICAS_FILE)]
    result = subprocess.run(
        [*command, *files, "--env-file", str(empty), "config"], capture_output=True, text=True, env=env, check=False
    )
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    api = services["churn-api"]
    assert int(api["deploy"]["replicas"]) == 3
    assert api["environment"]["CHURN_DATABASE_URL"] == "postgresql://churn:p4ss@postgres:5432/churn"
    assert api["environment"]["CHURN_DRIFT_SHARING"] == "database"
    assert "--database-url=postgresql://churn:p4ss@postgres:5432/churn" in services["retrainer"]["command"]
    mounts = [volume if isinstance(volume, str) else f"{volume['source']}:{volume['target']}" for volume in
              services["prometheus"]["volumes"]]  # fmt: skip
    assert any("prometheus-replicas.yml:/etc/prometheus/prometheus.yml" in mount for mount in mounts), mounts
    missing = subprocess.run(
        [*command, *files, "--env-file", str(empty), "config"],
        capture_output=True, text=True, env={k: v for k, v in env.items() if k != "POSTGRES_PASSWORD"}, check=False,
    )  # fmt: skip
    assert missing.returncode != 0 and "POSTGRES_PASSWORD" in missing.stderr


def test_prometheus_finds_every_replica_by_dns() -> None:
    single = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    replicas = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus-replicas.yml").read_text())
    (job,) = [job for job in replicas["scrape_configs"] if job["job_name"] == "churn-api"]
    assert job["dns_sd_configs"] == [{"names": ["churn-api"], "type": "A", "port": 8000, "refresh_interval": "10s"}]
    # Everything else as in the single-container configuration.
    for key in ("global", "rule_files", "alerting"):
        assert replicas[key] == single[key]
