"""The Kubernetes manifests (deploy/kubernetes/).

Checked with a YAML parser, the Kubernetes OpenAPI schemas (kubernetes-validate, which ships
them, run in strict mode: unknown fields are errors), and against callgate itself: environment
variable names exist in src/config.rs, probes hit the real health routes, the termination grace
covers CALLGATE_SHUTDOWN_GRACE_SECS, and resources are sized from BENCHMARKS.md.
"""

import re
import subprocess

import kubernetes_validate
import yaml

from conftest import ROOT, config_default, config_env_vars

K8S = ROOT / "deploy" / "kubernetes"
# The oldest Kubernetes the manifests target (preStop `sleep` needs 1.30).
K8S_VERSION = "1.30.0"


def documents():
    docs = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and "kind" in doc and doc["kind"] != "Kustomization":
                docs[(doc["kind"], doc["metadata"]["name"])] = doc
    return docs


def test_manifests_validate_against_the_kubernetes_schemas():
    docs = documents()
    assert docs
    for (kind, name), doc in docs.items():
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            raise AssertionError(f"{kind}/{name}: {e.message} at {list(e.path)}") from None


def test_the_schema_check_rejects_an_unknown_field():
    # The validator is live: a misspelt field fails it.
    deployment = documents()[("Deployment", "callgate")]
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGets"] = {}
    try:
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError:
        return
    raise AssertionError("a misspelt field passed the schema check")


def test_kustomization_lists_every_manifest_but_the_secret_example():
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
    assert set(kust["resources"]) == files


def container():
    return documents()[("Deployment", "callgate")]["spec"]["template"]["spec"]["containers"][0]


def test_deployment_probes_replicas_and_security():
    dep = documents()[("Deployment", "callgate")]
    assert dep["spec"]["replicas"] >= 3
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = dep["spec"]["template"]["spec"]
    c = container()
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    for name, default in (("http", "DEFAULT_HTTP_ADDR"), ("grpc", "DEFAULT_GRPC_ADDR")):
        assert ports[name] == int(config_default(default).rsplit(":", 1)[1])
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532  # the image's USER
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False


def settings():
    """The environment the pod gets: the ConfigMap plus the Secret's keys."""
    docs = documents()
    env = dict(docs[("ConfigMap", "callgate-config")]["data"])
    env.update(docs[("Secret", "callgate-secrets")]["stringData"])
    refs = container()["envFrom"]
    assert {"configMapRef": {"name": "callgate-config"}} in refs
    assert {"secretRef": {"name": "callgate-secrets"}} in refs
    return env


def test_environment_names_are_callgate_settings_and_secrets_come_from_the_secret():
    env = settings()
    unknown = set(env) - config_env_vars() - {"RUST_LOG"}
    assert not unknown, f"not settings of callgate (src/config.rs): {unknown}"
    config_map = documents()[("ConfigMap", "callgate-config")]["data"]
    for secret in ("CALLGATE_REDIS_URL", "CALLGATE_WEBHOOK_TOKENS",
                   "CALLGATE_WHATSAPP_APP_SECRET", "CALLGATE_WHATSAPP_VERIFY_TOKEN"):
        assert secret in config_env_vars()
        assert secret not in config_map, f"{secret} belongs in the Secret"
        assert secret in documents()[("Secret", "callgate-secrets")]["stringData"]
    # No literal env values in the pod spec: they would bypass both.
    assert "env" not in container()
    # The API clients file is where CALLGATE_API_CLIENTS_FILE says, mounted from its Secret.
    path = env["CALLGATE_API_CLIENTS_FILE"]
    pod = documents()[("Deployment", "callgate")]["spec"]["template"]["spec"]
    mount = next(m for m in container()["volumeMounts"] if path.startswith(m["mountPath"] + "/"))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    secret = documents()[("Secret", volume["secret"]["secretName"])]
    assert path.rsplit("/", 1)[1] in secret["stringData"]


def test_termination_grace_covers_prestop_and_callgate_drain():
    grace = float(settings()["CALLGATE_SHUTDOWN_GRACE_SECS"])
    pod = documents()[("Deployment", "callgate")]["spec"]["template"]["spec"]
    pre_stop = container()["lifecycle"]["preStop"]["sleep"]["seconds"]
    total = pod["terminationGracePeriodSeconds"]
    assert pre_stop >= 1
    assert total >= pre_stop + grace + 2, (total, pre_stop, grace)


def quantity(q):
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "m": 1e-3, "": 1}
    m = re.fullmatch(r"([\d.]+)(Ki|Mi|Gi|m|)", str(q))
    assert m, q
    return float(m.group(1)) * units[m.group(2)]


def test_resources_are_sized_from_the_benchmarks():
    res = container()["resources"]
    for kind in ("cpu", "memory"):
        assert quantity(res["requests"][kind]) <= quantity(res["limits"][kind])
    bench = (ROOT / "BENCHMARKS.md").read_text()
    # "39.3 MiB (12.8 MiB before they connected)": RSS with 1,000 StreamGrants subscribers.
    m = re.search(r"([\d.]+) MiB \(([\d.]+) MiB before they connected\)", bench)
    assert m, "BENCHMARKS.md no longer states callgate's RSS with 1,000 subscribers"
    rss_busy = float(m.group(1)) * 2**20
    assert quantity(res["requests"]["memory"]) >= rss_busy
    assert quantity(res["limits"]["memory"]) >= 2 * rss_busy
    # Issue 16: a replica whose check cache is warm holds it in memory as well.
    m = re.search(r"RSS with a warm check cache: ([\d.]+) MiB", bench)
    assert m, "BENCHMARKS.md no longer states callgate's RSS with a warm check cache"
    rss_cached = float(m.group(1)) * 2**20
    assert quantity(res["requests"]["memory"]) >= rss_cached
    assert quantity(res["limits"]["memory"]) >= 2 * rss_cached
    # "callgate 19 µs of CPU per check": the request must serve thousands of checks a second.
    m = re.search(r"callgate ([\d.]+) µs of CPU per check", bench)
    assert m, "BENCHMARKS.md no longer states callgate's CPU per check"
    checks_per_second = quantity(res["requests"]["cpu"]) / (float(m.group(1)) * 1e-6)
    assert checks_per_second >= 10_000, checks_per_second


def test_pdb_and_one_service_per_port():
    docs = documents()
    labels = docs[("Deployment", "callgate")]["spec"]["template"]["metadata"]["labels"]
    pdb = docs[("PodDisruptionBudget", "callgate")]["spec"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    replicas = docs[("Deployment", "callgate")]["spec"]["replicas"]
    assert pdb.get("maxUnavailable", 0) < replicas or pdb.get("minAvailable", 0) < replicas
    ports = {p["name"]: p["containerPort"] for p in container()["ports"]}
    seen = set()
    for (kind, name), doc in docs.items():
        if kind != "Service":
            continue
        assert doc["spec"]["selector"].items() <= labels.items(), name
        for port in doc["spec"]["ports"]:
            assert port["targetPort"] in ports, (name, port)
            assert port["port"] == ports[port["targetPort"]]
            seen.add(port["targetPort"])
    assert seen == set(ports)


def test_the_kubernetes_readme_covers_redis_cluster():
    text = (K8S / "README.md").read_text()
    assert "Redis Cluster" in text and "noeviction" in text and "appendfsync always" in text


def test_kubernetes_validate_cli_agrees():
    # The same check as a person would run it.
    files = [str(p) for p in sorted(K8S.glob("*.yaml")) if p.name != "kustomization.yaml"]
    result = subprocess.run(
        ["kubernetes-validate", "--strict", "--quiet", "-k", K8S_VERSION, *files],
        capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
