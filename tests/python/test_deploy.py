"""The deployment files, checked for what can be checked without Docker or a cluster: they
parse, ports and images agree with each other and with the agent's settings, probes point at
endpoints the real agent serves, the Kubernetes objects select the agents' pods, and the
settings files given to agents use only keys the agent knows."""

import socket
import tomllib
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"


def _k8s_objects():
    out = {}
    for f in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(f.read_text()):
            if doc and "kind" in doc and doc["kind"] != "Kustomization":
                out.setdefault(doc["kind"], []).append(doc)
    return out


def _keys(table, prefix=""):
    for k, v in table.items():
        if isinstance(v, dict):
            yield from _keys(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}"


DEFAULT_KEYS = set(_keys(tomllib.loads((ROOT / "config" / "silt.toml").read_text())))
# Keys documented in config/silt.toml as comments (optional settings without a default).
OPTIONAL_KEYS = {
    "rack",
    "advertised_host",
    "advertised_port",
    "object_store.path",
    "metadata.path",
    "object_store.s3.endpoint",
    "object_store.s3.region",
    "object_store.s3.access_key_id",
    "object_store.s3.secret_access_key",
    "cache.dir",
}


def _check_settings(text, where):
    keys = set(_keys(tomllib.loads(text)))
    unknown = keys - DEFAULT_KEYS - OPTIONAL_KEYS
    assert not unknown, f"{where}: keys the agent does not know: {unknown}"
    return tomllib.loads(text)


def test_dockerfile_is_multi_stage_non_root_and_exposes_the_default_ports():
    lines = [l.strip() for l in (ROOT / "Dockerfile").read_text().splitlines()]
    froms = [l for l in lines if l.startswith("FROM ")]
    assert len(froms) >= 2, "multi-stage build"
    user = [l.split()[1] for l in lines if l.startswith("USER ")]
    assert user and user[-1] not in ("0", "root"), "runs as non-root"
    exposed = {int(p) for l in lines if l.startswith("EXPOSE ") for p in l.split()[1:]}
    settings = tomllib.loads((ROOT / "config" / "silt.toml").read_text())
    assert int(settings["listen"].rsplit(":", 1)[1]) in exposed
    assert int(settings["admin_listen"].rsplit(":", 1)[1]) in exposed
    assert "STOPSIGNAL SIGTERM" in lines
    assert any(l.startswith("ENTRYPOINT") and "silt" in l for l in lines)
    assert "target/" in (ROOT / ".dockerignore").read_text()


def test_compose_runs_minio_etcd_and_three_agents_consistently():
    c = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    services = c["services"]
    agents = {k: v for k, v in services.items() if k.startswith("agent-")}
    assert len(agents) == 3
    assert {"etcd", "minio"} <= set(services)
    for name, a in agents.items():
        assert (ROOT / "deploy" / a["build"]["context"] / a["build"]["dockerfile"]).exists()
        # The config path inside the image comes from `COPY config/ /etc/silt/`.
        cfg = a["command"][a["command"].index("--config") + 1]
        assert cfg.startswith("/etc/silt/")
        _check_settings((ROOT / "config" / Path(cfg).name).read_text(), cfg)
        host_port, container_port = a["ports"][0].split(":")
        assert container_port == "9092"
        assert a["environment"]["SILT_ADVERTISED_PORT"] == host_port, f"{name} advertises its host port"
        assert "/readyz" in " ".join(a["healthcheck"]["test"])
    advertised = {a["environment"]["SILT_ADVERTISED_PORT"] for a in agents.values()}
    assert len(advertised) == 3, "each agent advertises its own address"


def test_kubernetes_objects_are_consistent():
    objs = _k8s_objects()
    assert "StatefulSet" not in objs, "agents are stateless"
    (dep,) = objs["Deployment"]
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    spec = dep["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] >= 10
    (ctr,) = spec["containers"]
    ports = {p["name"]: p["containerPort"] for p in ctr["ports"]}
    assert ports == {"kafka": 9092, "admin": 9644}
    assert ctr["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert ctr["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    env = {e["name"]: e for e in ctr["env"]}
    assert env["SILT_ADVERTISED_HOST"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    # The config file the agent is given exists in the ConfigMap and uses known keys.
    cfg_path = Path(ctr["args"][ctr["args"].index("--config") + 1])
    mount = next(m for m in ctr["volumeMounts"] if str(cfg_path).startswith(m["mountPath"]))
    vol = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    cm = next(c for c in objs["ConfigMap"] if c["metadata"]["name"] == vol["configMap"]["name"])
    settings = _check_settings(cm["data"][cfg_path.name], "ConfigMap")
    assert settings["node_id"] == -1, "a Deployment's agents allocate their ids"
    assert settings["metadata"]["kind"] == "etcd" and settings["object_store"]["kind"] == "s3"
    for svc in objs["Service"]:
        assert svc["spec"]["selector"].items() <= pod_labels.items()
        for p in svc["spec"]["ports"]:
            assert p["targetPort"] in ports
    (pdb,) = objs["PodDisruptionBudget"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    (hpa,) = objs["HorizontalPodAutoscaler"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] >= 2
    assert hpa["spec"]["metrics"], "scales on a load signal"
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    for r in kust["resources"]:
        assert (K8S / r).exists()


def test_keda_overlay_scales_the_deployment_on_the_load_signal_the_agent_exports(agent_factory):
    """deploy/kubernetes/keda replaces the base's CPU HPA with a KEDA ScaledObject on
    sum(silt_load_ratio): it targets the Deployment, deletes exactly the base's HPA, scales in
    one agent at a time (as the PodDisruptionBudget allows), and its metric is one a real agent
    serves (configured as the overlay's README says)."""
    keda = K8S / "keda"
    kust = yaml.safe_load((keda / "kustomization.yaml").read_text())
    assert kust["resources"][0] == "../"
    for r in kust["resources"][1:] + [p["path"] for p in kust["patches"]]:
        assert (keda / r).exists(), r
    objs = _k8s_objects()
    (dep,) = objs["Deployment"]
    (hpa,) = objs["HorizontalPodAutoscaler"]
    (delete,) = list(yaml.safe_load_all((keda / "hpa-delete.yaml").read_text()))
    assert delete["$patch"] == "delete"
    assert (delete["kind"], delete["metadata"]["name"]) == (hpa["kind"], hpa["metadata"]["name"])
    (so,) = list(yaml.safe_load_all((keda / "scaledobject.yaml").read_text()))
    assert so["kind"] == "ScaledObject"
    assert so["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]
    assert 2 <= so["spec"]["minReplicaCount"] < so["spec"]["maxReplicaCount"]
    down = so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
    assert [p["value"] for p in down["policies"]] == [1], "one agent at a time"
    (pdb,) = objs["PodDisruptionBudget"]
    assert pdb["spec"]["maxUnavailable"] == 1
    (trigger,) = so["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    assert 0 < float(trigger["metadata"]["threshold"]) <= 1
    metric = trigger["metadata"]["query"].split("(", 1)[1].split("{", 1)[0]
    port = _free_port()
    agent_factory(SILT_ADMIN_LISTEN=f"127.0.0.1:{port}")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        body = r.read().decode()
    assert f"# TYPE {metric} gauge" in body, metric
    value = next(l for l in body.splitlines() if l.startswith(metric + " "))
    assert float(value.split()[1]) >= 0
    # The settings the overlay tells operators to change exist.
    assert "load.capacity_bytes_per_sec" in DEFAULT_KEYS
    assert "load.capacity_bytes_per_sec" in (keda / "kustomization.yaml").read_text()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_probes_point_at_endpoints_the_agent_serves(agent_factory):
    port = _free_port()
    agent_factory(SILT_ADMIN_LISTEN=f"127.0.0.1:{port}")
    ctr = _k8s_objects()["Deployment"][0]["spec"]["template"]["spec"]["containers"][0]
    for probe in ("readinessProbe", "livenessProbe"):
        path = ctr[probe]["httpGet"]["path"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            assert r.status == 200, f"{probe} {path}"
    prom = (ROOT / "deploy" / "kubernetes" / "deployment.yaml").read_text()
    assert 'prometheus.io/path: /metrics' in prom
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        assert b"silt_partitions" in r.read()


def test_secured_kubernetes_variant_starts_an_agent_that_serves_sasl_ssl(agent_factory, tmp_path):
    """The overlay's settings, given to a real agent (pod IP, port and certificate paths replaced
    by local ones), serve SCRAM over TLS with ACLs on, and keep PLAINTEXT on loopback."""
    from confluent_kafka import Producer
    from confluent_kafka.admin import ScramCredentialInfo, ScramMechanism, UserScramCredentialUpsertion

    from helpers import admin
    from test_security import make_pki

    sec = K8S / "secured"
    kust = yaml.safe_load((sec / "kustomization.yaml").read_text())
    assert kust["resources"] == ["../"]
    patch = yaml.safe_load((sec / "deployment-patch.yaml").read_text())
    base = _k8s_objects()["Deployment"][0]
    assert patch["metadata"]["name"] == base["metadata"]["name"]
    (ctr,) = patch["spec"]["template"]["spec"]["containers"]
    assert ctr["name"] == base["spec"]["template"]["spec"]["containers"][0]["name"]
    svc = yaml.safe_load((sec / "service-patch.yaml").read_text())
    assert {p["targetPort"] for p in svc["spec"]["ports"]} <= {p["name"] for p in ctr["ports"]}
    env = {e["name"]: e.get("value") for e in ctr["env"]}
    assert env.pop("SILT_LISTEN").startswith("127.0.0.1:"), "PLAINTEXT stays on loopback"
    assert env.pop("POD_IP") is None
    pki = make_pki(tmp_path / "pki")
    port = _free_port()
    mount = next(m["mountPath"] for m in ctr["volumeMounts"] if m["name"] == "tls")
    settings = {}
    for k, v in env.items():
        v = v.replace("$(POD_IP)", "127.0.0.1").replace("0.0.0.0:9093", f"127.0.0.1:{port}")
        v = v.replace("advertised_port=9093", f"advertised_port={port}")
        v = v.replace(f"{mount}/tls.crt", str(pki / "server.pem")).replace(f"{mount}/tls.key", str(pki / "server.key"))
        settings[k] = v
    agent = agent_factory(**settings)
    a = admin(agent.bootstrap)
    for f in a.alter_user_scram_credentials([UserScramCredentialUpsertion(
            "admin", ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096), b"admin-pw")]).values():
        f.result(timeout=30)
    p = Producer({"bootstrap.servers": f"127.0.0.1:{port}", "security.protocol": "SASL_SSL",
                  "ssl.ca.location": str(pki / "ca.pem"), "sasl.mechanism": "SCRAM-SHA-512",
                  "sasl.username": "admin", "sasl.password": "admin-pw"})
    errors = []
    p.produce("secured-deploy", b"hello", on_delivery=lambda e, m: errors.append(e))
    assert p.flush(30) == 0 and errors == [None], errors
    md = p.list_topics(timeout=10)
    assert {(b.host, b.port) for b in md.brokers.values()} == {("127.0.0.1", port)}


def test_secured_compose_variant_exposes_only_tls_and_starts_agents_that_serve_it(agent_factory, tmp_path):
    """compose.secured.yaml overrides compose.yaml's agents: only the SASL_SSL listener and the
    admin port reach the host; each agent advertises its own host port; the settings start a
    real agent (paths and ports replaced by local ones) that serves SCRAM over TLS."""
    from confluent_kafka import Producer
    from confluent_kafka.admin import ScramCredentialInfo, ScramMechanism, UserScramCredentialUpsertion

    from helpers import admin
    from test_security import make_pki

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!override", lambda loader, node: loader.construct_sequence(node))
    sec = yaml.load((ROOT / "deploy" / "compose.secured.yaml").read_text(), Loader=Loader)
    base = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    agents = {k: v for k, v in sec["services"].items() if k.startswith("agent-")}
    assert set(agents) == {k for k in base["services"] if k.startswith("agent-")}
    seen = set()
    for name, a in agents.items():
        container_ports = {p.split(":")[1] for p in a["ports"]}
        assert container_ports == {"9093", "9644"}, f"{name}: PLAINTEXT 9092 must not reach the host"
        host_port = next(p.split(":")[0] for p in a["ports"] if p.endswith(":9093"))
        assert f"advertised_port={host_port}" in a["environment"]["SILT_LISTENERS"]
        seen.add(host_port)
        assert a["environment"]["SILT_LISTEN"].startswith("127.0.0.1:")
    assert len(seen) == 3
    env = dict(agents["agent-1"]["environment"])
    env.pop("SILT_LISTEN")
    pki = make_pki(tmp_path / "pki")
    port = _free_port()
    env["SILT_LISTENERS"] = env["SILT_LISTENERS"].replace("0.0.0.0:9093", f"127.0.0.1:{port}").replace(
        "advertised_port=19093", f"advertised_port={port}")
    env["SILT_TLS__CERT"] = str(pki / "server.pem")
    env["SILT_TLS__KEY"] = str(pki / "server.key")
    agent = agent_factory(**env)
    a = admin(agent.bootstrap)
    for f in a.alter_user_scram_credentials([UserScramCredentialUpsertion(
            "admin", ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096), b"pw")]).values():
        f.result(timeout=30)
    p = Producer({"bootstrap.servers": f"127.0.0.1:{port}", "security.protocol": "SASL_SSL",
                  "ssl.ca.location": str(pki / "ca.pem"), "sasl.mechanism": "SCRAM-SHA-512",
                  "sasl.username": "admin", "sasl.password": "pw"})
    errors = []
    p.produce("compose-secured", b"x", on_delivery=lambda e, m: errors.append(e))
    assert p.flush(30) == 0 and errors == [None], errors
