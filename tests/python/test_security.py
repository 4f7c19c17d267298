"""End-to-end security tests: TLS, SASL (PLAIN, SCRAM-SHA-256/512), mTLS and ACLs, with real
clients (confluent-kafka, kafka-python, kcat) against the real agent binary.

Every agent here has a PLAINTEXT listener on loopback (`DEFAULT`, the harness's bootstrap) whose
`User:ANONYMOUS` is a super user (the "local tools" pattern of docs/security.md): users and ACLs
are created through it with the standard admin APIs. Clients under test connect through a
second listener (SASL_SSL, SASL_PLAINTEXT or SSL). Certificates are made per test with openssl.
"""

import shutil
import socket
import ssl
import struct
import subprocess
import time
import uuid

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ConfigResource,
    NewTopic,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialDeletion,
    UserScramCredentialUpsertion,
)

from helpers import admin, create_topic, metric

OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"
KCAT = shutil.which("kcat") or "/usr/bin/kcat"
PASSWORD = "s3cret-pw"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _openssl(*args, cwd):
    p = subprocess.run([OPENSSL, *args], cwd=cwd, capture_output=True)
    assert p.returncode == 0, f"openssl {' '.join(args)}: {p.stderr.decode(errors='replace')}"


def make_pki(d, server_cn="localhost"):
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate CN=alice."""
    d.mkdir(parents=True, exist_ok=True)
    if not (d / "ca.pem").exists():
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
                 "-days", "2", "-subj", "/CN=Silt Test CA", cwd=d)
    (d / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key.new", "-out", "server.csr",
             "-subj", f"/CN={server_cn}", cwd=d)
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.pem.new", "-days", "2", "-extfile", "san.ext", cwd=d)
    # Replace both at once (as a rotation would): key first, then the certificate.
    (d / "server.key.new").replace(d / "server.key")
    (d / "server.pem.new").replace(d / "server.pem")
    if not (d / "client.pem").exists():
        # v3 with client-auth usage: rustls (webpki) refuses v1 certificates.
        (d / "client.ext").write_text("basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n")
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "client.key", "-out", "client.csr",
                 "-subj", "/O=Example/CN=alice", cwd=d)
        _openssl("x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", "client.pem", "-days", "2", "-extfile", "client.ext", cwd=d)
    return d


class Secured:
    """An agent with a second listener of the given protocol, and its admin handle."""

    def __init__(self, agent, port, pki, protocol):
        self.agent = agent
        self.port = port
        self.pki = pki
        self.protocol = protocol
        self.admin = admin(agent.bootstrap)

    @property
    def secure(self):
        return f"127.0.0.1:{self.port}"

    def client_conf(self, user="alice", password=PASSWORD, mechanism="SCRAM-SHA-256", **extra):
        c = {"bootstrap.servers": self.secure, "security.protocol": self.protocol, "socket.timeout.ms": 10000}
        if "SSL" in self.protocol:
            c["ssl.ca.location"] = str(self.pki / "ca.pem")
        if "SASL" in self.protocol:
            c.update({"sasl.mechanism": mechanism, "sasl.username": user, "sasl.password": password})
        c.update(extra)
        return c

    def add_user(self, user, password=PASSWORD):
        fs = self.admin.alter_user_scram_credentials([
            UserScramCredentialUpsertion(user, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_256, 4096), password.encode()),
            UserScramCredentialUpsertion(user, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192), password.encode()),
        ])
        for f in fs.values():
            f.result(timeout=30)

    def allow(self, rtype, name, principal, op, pattern=ResourcePatternType.LITERAL, perm=AclPermissionType.ALLOW):
        b = AclBinding(rtype, name, pattern, principal, "*", op, perm)
        for f in self.admin.create_acls([b]).values():
            f.result(timeout=30)
        return b

    def revoke(self, binding):
        f = AclBindingFilter(binding.restype, binding.name, binding.resource_pattern_type, binding.principal,
                             binding.host, binding.operation, binding.permission_type)
        for fut in self.admin.delete_acls([f]).values():
            assert len(fut.result(timeout=30)) >= 1

    def metric(self, name):
        return metric(self.agent, name)


@pytest.fixture
def secured(agent_factory, tmp_path):
    def make(protocol="SASL_SSL", client_auth="none", principal_from="dn", **env):
        pki = make_pki(tmp_path / "pki")
        port = _free_port()
        settings = {
            "SILT_LISTENERS": f'[{{name="SECURE",listen="127.0.0.1:{port}",security_protocol="{protocol}"}}]',
            "SILT_TLS__CERT": str(pki / "server.pem"),
            "SILT_TLS__KEY": str(pki / "server.key"),
            "SILT_TLS__CLIENT_CA": str(pki / "ca.pem"),
            "SILT_TLS__CLIENT_AUTH": client_auth,
            "SILT_TLS__PRINCIPAL_FROM": principal_from,
            "SILT_SASL__FAILURE_DELAY_MS": "200",
            "SILT_AUTHORIZATION__ENABLED": "true",
            "SILT_AUTHORIZATION__SUPER_USERS": '["User:ANONYMOUS"]',
        }
        settings.update(env)
        a = agent_factory(**settings)
        return Secured(a, port, pki, protocol)

    return make


def _produce(conf, topic, values, timeout=30):
    p = Producer(conf)
    errors = []
    for v in values:
        p.produce(topic, value=v, on_delivery=lambda e, m: errors.append(e))
    left = p.flush(timeout)
    assert left == 0, f"{left} records undelivered"
    return [e for e in errors if e is not None]


def _consume_group(conf, topic, group, n, timeout=45):
    c = Consumer({**conf, "group.id": group, "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe([topic])
    got, errors = [], []
    deadline = time.time() + timeout
    try:
        while len(got) < n and time.time() < deadline:
            m = c.poll(0.5)
            if m is None:
                continue
            if m.error():
                errors.append(m.error())
                if m.error().code() in (KafkaError.GROUP_AUTHORIZATION_FAILED, KafkaError.TOPIC_AUTHORIZATION_FAILED):
                    break
                continue
            got.append(m.value())
        if got:
            c.commit(asynchronous=False)
    finally:
        c.close()
    return got, errors


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"])
def test_sasl_ssl_produce_consume_group_and_admin_with_each_mechanism(secured, topic_name, mechanism):
    s = secured("SASL_SSL")
    s.add_user("alice")
    create_topic(s.agent.bootstrap, topic_name, partitions=2)
    s.allow(ResourceType.TOPIC, topic_name, "User:alice", AclOperation.ALL)
    s.allow(ResourceType.GROUP, "g-", "User:alice", AclOperation.READ, pattern=ResourcePatternType.PREFIXED)
    conf = s.client_conf(mechanism=mechanism)
    values = [f"{mechanism}-{i}".encode() for i in range(200)]
    assert _produce({**conf, "enable.idempotence": True}, topic_name, values) == []
    got, errors = _consume_group(conf, topic_name, f"g-{uuid.uuid4().hex[:6]}", len(values))
    assert sorted(got) == sorted(values), errors
    # An admin call over the secured listener: Metadata lists the secured listener's address.
    sasl_admin = admin(s.secure, **{k: v for k, v in conf.items() if k != "bootstrap.servers"})
    md = sasl_admin.list_topics(timeout=15)
    assert topic_name in md.topics
    assert {(b.host, b.port) for b in md.brokers.values()} == {("127.0.0.1", s.port)}


def test_wrong_password_unknown_user_and_missing_handshake_are_refused(secured, topic_name):
    s = secured("SASL_SSL")
    s.add_user("alice")
    failed_before = s.metric('silt_sasl_authentications_total{result="failed"}')
    for user, pw in [("alice", "wrong"), ("mallory", PASSWORD)]:
        errors = []
        p = Producer(s.client_conf(user=user, password=pw, error_cb=errors.append))
        p.produce(topic_name, b"x")
        p.flush(3)
        assert any(e.code() == KafkaError._AUTHENTICATION and "invalid credentials" in e.str() for e in errors), errors
    assert s.metric('silt_sasl_authentications_total{result="failed"}') >= failed_before + 2
    log = s.agent.log_text()
    assert "SASL authentication failed" in log and "wrong password" in log and "no such user" in log


def test_missing_acls_get_kafkas_errors_and_hide_topics(secured, topic_name):
    s = secured("SASL_PLAINTEXT")
    s.add_user("bob")
    create_topic(s.agent.bootstrap, topic_name)
    other = topic_name + "-hidden"
    create_topic(s.agent.bootstrap, other)
    s.allow(ResourceType.TOPIC, topic_name, "User:bob", AclOperation.READ)
    conf = s.client_conf(user="bob")
    # WRITE missing: every delivery fails with TOPIC_AUTHORIZATION_FAILED.
    errs = _produce(conf, topic_name, [b"a", b"b"])
    assert [e.code() for e in errs] == [KafkaError.TOPIC_AUTHORIZATION_FAILED] * 2
    # Metadata of all topics shows only what bob may DESCRIBE (READ implies it).
    bob_admin = admin(s.secure, **{k: v for k, v in conf.items() if k != "bootstrap.servers"})
    md = bob_admin.list_topics(timeout=15)
    assert topic_name in md.topics and other not in md.topics
    # READ on the topic but no ACL on the group: GROUP_AUTHORIZATION_FAILED.
    _, errors = _consume_group(conf, topic_name, "no-acl-group", 1, timeout=20)
    assert any(e.code() == KafkaError.GROUP_AUTHORIZATION_FAILED for e in errors), errors
    # A KIP-848 member with DESCRIBE on its group (FindCoordinator passes) but not READ: its
    # ConsumerGroupHeartbeat is refused, which librdkafka makes fatal for the consumer.
    s.allow(ResourceType.GROUP, "describe-only-848", "User:bob", AclOperation.DESCRIBE)
    c = Consumer({**conf, "group.id": "describe-only-848", "group.protocol": "consumer"})
    c.subscribe([topic_name])
    errors = []
    deadline = time.time() + 20
    while not errors and time.time() < deadline:
        m = c.poll(0.2)
        if m is not None and m.error():
            errors.append(m.error())
    c.close()
    assert errors and "ConsumerGroupHeartbeat" in errors[0].str() and "Group authorization failed" in errors[0].str(), errors
    # Creating topics needs CREATE.
    fs = bob_admin.create_topics([NewTopic(topic_name + "-new", 1)])
    with pytest.raises(KafkaException) as e:
        list(fs.values())[0].result(timeout=15)
    assert e.value.args[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    # Altering users or ACLs needs ALTER on the cluster.
    fs = bob_admin.create_acls([AclBinding(ResourceType.TOPIC, other, ResourcePatternType.LITERAL, "User:bob", "*",
                                           AclOperation.ALL, AclPermissionType.ALLOW)])
    with pytest.raises(KafkaException) as e:
        list(fs.values())[0].result(timeout=15)
    assert e.value.args[0].code() == KafkaError.CLUSTER_AUTHORIZATION_FAILED
    assert s.metric("silt_authorization_denied_total") >= 4


def test_transactions_need_write_on_the_transactional_id(secured, topic_name):
    """A transactional producer needs WRITE on its transactional id (and on the topic), as in
    Kafka: without it InitProducerId gets TRANSACTIONAL_ID_AUTHORIZATION_FAILED; with it the
    transaction commits and a read_committed reader with READ sees it."""
    s = secured("SASL_PLAINTEXT")
    s.add_user("dave")
    create_topic(s.agent.bootstrap, topic_name)
    tid = f"tx-{uuid.uuid4().hex[:6]}"
    s.allow(ResourceType.TOPIC, topic_name, "User:dave", AclOperation.WRITE)
    s.allow(ResourceType.TOPIC, topic_name, "User:dave", AclOperation.READ)
    s.allow(ResourceType.GROUP, "dave-", "User:dave", AclOperation.READ, pattern=ResourcePatternType.PREFIXED)
    conf = s.client_conf(user="dave")
    p = Producer({**conf, "transactional.id": tid})
    with pytest.raises(KafkaException) as e:
        p.init_transactions(20)
    assert e.value.args[0].code() == KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED, e.value
    s.allow(ResourceType.TRANSACTIONAL_ID, tid, "User:dave", AclOperation.WRITE)
    p = Producer({**conf, "transactional.id": tid})
    p.init_transactions(30)
    p.begin_transaction()
    p.produce(topic_name, value=b"granted", partition=0)
    p.commit_transaction(30)
    c = Consumer({**conf, "group.id": "dave-reader", "isolation.level": "read_committed",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe([topic_name])
    got, deadline = [], time.time() + 30
    while not got and time.time() < deadline:
        m = c.poll(0.5)
        if m is not None and not m.error():
            got.append(m.value())
    c.close()
    assert got == [b"granted"]


def test_config_changes_and_partition_growth_need_their_acls(secured, topic_name):
    """ALTER_CONFIGS on the topic for config changes, ALTER for new partitions, ALTER_CONFIGS on
    the cluster for broker configs, as in Kafka."""
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, NewPartitions
    s = secured("SASL_PLAINTEXT")
    s.add_user("erin")
    create_topic(s.agent.bootstrap, topic_name, partitions=2)
    s.allow(ResourceType.TOPIC, topic_name, "User:erin", AclOperation.DESCRIBE_CONFIGS)
    conf = s.client_conf(user="erin")
    a = admin(s.secure, **{k: v for k, v in conf.items() if k != "bootstrap.servers"})

    def alter():
        r = ConfigResource(ConfigResource.Type.TOPIC, topic_name, incremental_configs=[
            ConfigEntry("retention.ms", "1000", incremental_operation=AlterConfigOpType.SET)])
        return list(a.incremental_alter_configs([r]).values())[0]

    with pytest.raises(KafkaException) as e:
        alter().result(timeout=15)
    assert e.value.args[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    with pytest.raises(KafkaException) as e:
        a.create_partitions([NewPartitions(topic_name, 3)])[topic_name].result(timeout=15)
    assert e.value.args[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    s.allow(ResourceType.TOPIC, topic_name, "User:erin", AclOperation.ALTER_CONFIGS)
    s.allow(ResourceType.TOPIC, topic_name, "User:erin", AclOperation.ALTER)
    alter().result(timeout=15)
    a.create_partitions([NewPartitions(topic_name, 3)])[topic_name].result(timeout=15)


def test_a_revoked_acl_bites_on_a_live_connection(secured, topic_name):
    s = secured("SASL_PLAINTEXT")
    s.add_user("carol")
    create_topic(s.agent.bootstrap, topic_name)
    grant = s.allow(ResourceType.TOPIC, topic_name, "User:carol", AclOperation.WRITE)
    p = Producer({**s.client_conf(user="carol"), "linger.ms": 0, "retries": 0, "message.timeout.ms": 5000})
    errs = []
    p.produce(topic_name, b"before", on_delivery=lambda e, m: errs.append(e))
    assert p.flush(15) == 0 and errs == [None]
    s.revoke(grant)
    deadline = time.time() + 10
    while True:  # every agent follows the ACLs by a watch: within moments
        errs.clear()
        p.produce(topic_name, b"after", on_delivery=lambda e, m: errs.append(e))
        p.flush(15)
        if errs and errs[0] is not None:
            break
        assert time.time() < deadline, "the revoked ACL still allowed writes after 10 s"
        time.sleep(0.2)
    assert errs[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED


def test_users_are_described_and_deleted_with_the_admin_api(secured):
    s = secured("SASL_SSL")
    s.add_user("dave")
    desc = s.admin.describe_user_scram_credentials(["dave"])
    infos = desc["dave"].result(timeout=15).scram_credential_infos
    assert sorted((i.mechanism, i.iterations) for i in infos) == [
        (ScramMechanism.SCRAM_SHA_256, 4096), (ScramMechanism.SCRAM_SHA_512, 8192)]
    for f in s.admin.alter_user_scram_credentials(
            [UserScramCredentialDeletion("dave", ScramMechanism.SCRAM_SHA_256)]).values():
        f.result(timeout=15)
    # SCRAM-SHA-256 no longer logs dave in; SCRAM-SHA-512 still does.
    errors = []
    p = Producer(s.client_conf(user="dave", error_cb=errors.append))
    p.produce("x", b"x")
    p.flush(3)
    assert any(e.code() == KafkaError._AUTHENTICATION for e in errors), errors
    md = Producer(s.client_conf(user="dave", mechanism="SCRAM-SHA-512")).list_topics(timeout=15)
    assert md.brokers
    with pytest.raises(KafkaException):
        s.admin.describe_user_scram_credentials(["nobody"])["nobody"].result(timeout=15)


def test_kafka_python_scram_sha_512_over_sasl_ssl(secured, topic_name):
    from kafka import KafkaConsumer, KafkaProducer

    s = secured("SASL_SSL")
    s.add_user("erin")
    create_topic(s.agent.bootstrap, topic_name)
    s.allow(ResourceType.TOPIC, topic_name, "User:erin", AclOperation.ALL)
    s.allow(ResourceType.GROUP, "kp-group", "User:erin", AclOperation.READ)
    common = dict(bootstrap_servers=s.secure, security_protocol="SASL_SSL", ssl_cafile=str(s.pki / "ca.pem"),
                  sasl_mechanism="SCRAM-SHA-512", sasl_plain_username="erin", sasl_plain_password=PASSWORD)
    prod = KafkaProducer(acks="all", **common)
    for i in range(50):
        prod.send(topic_name, f"kp-{i}".encode())
    prod.flush(30)
    prod.close()
    cons = KafkaConsumer(topic_name, group_id="kp-group", auto_offset_reset="earliest",
                         consumer_timeout_ms=15000, **common)
    got = []
    for m in cons:
        got.append(m.value)
        if len(got) == 50:
            break
    cons.commit()
    cons.close()
    assert sorted(got) == sorted(f"kp-{i}".encode() for i in range(50))


def test_kcat_scram_sha_256_over_sasl_ssl(secured, topic_name):
    s = secured("SASL_SSL")
    s.add_user("frank")
    create_topic(s.agent.bootstrap, topic_name)
    s.allow(ResourceType.TOPIC, topic_name, "User:frank", AclOperation.ALL)
    opts = ["-b", s.secure, "-X", "security.protocol=SASL_SSL", "-X", f"ssl.ca.location={s.pki / 'ca.pem'}",
            "-X", "sasl.mechanism=SCRAM-SHA-256", "-X", "sasl.username=frank", "-X", f"sasl.password={PASSWORD}"]
    lines = [f"line {i}" for i in range(30)]
    p = subprocess.run([KCAT, "-P", "-t", topic_name, *opts], input=("\n".join(lines) + "\n").encode(),
                       capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    c = subprocess.run([KCAT, "-C", "-t", topic_name, "-o", "beginning", "-e", "-q", *opts],
                       capture_output=True, timeout=60)
    assert c.returncode == 0, c.stderr.decode(errors="replace")
    assert c.stdout.decode().splitlines() == lines


def test_mtls_principal_comes_from_the_client_certificate(secured, topic_name):
    s = secured("SSL", client_auth="required", principal_from="cn")
    create_topic(s.agent.bootstrap, topic_name)
    s.allow(ResourceType.TOPIC, topic_name, "User:alice", AclOperation.ALL)
    conf = s.client_conf(**{"ssl.certificate.location": str(s.pki / "client.pem"),
                            "ssl.key.location": str(s.pki / "client.key")})
    assert _produce(conf, topic_name, [b"m1", b"m2"]) == []
    # The same certificate may not write another topic.
    create_topic(s.agent.bootstrap, topic_name + "-other")
    errs = _produce(conf, topic_name + "-other", [b"m3"])
    assert [e.code() for e in errs] == [KafkaError.TOPIC_AUTHORIZATION_FAILED]
    # Without a client certificate the handshake is refused.
    errors = []
    p = Producer(s.client_conf(error_cb=errors.append))
    p.produce(topic_name, b"x")
    p.flush(3)
    assert errors and all(e.code() in (KafkaError._SSL, KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN) for e in errors), errors
    assert s.metric("silt_tls_handshake_failures_total") >= 1


def test_principal_mapping_rules_name_certificate_principals(secured, topic_name):
    """Kafka's ssl.principal.mapping.rules (tls.principal_rules): the first rule matching the
    whole DN names the principal; a certificate that no rule matches is refused."""
    s = secured("SSL", client_auth="required",
                SILT_TLS__PRINCIPAL_RULES='["RULE:^CN=([^,]+),OU=Svc$/$1/", "RULE:^CN=([^,]+),O=Example$/$1/U"]')
    create_topic(s.agent.bootstrap, topic_name)
    s.allow(ResourceType.TOPIC, topic_name, "User:ALICE", AclOperation.WRITE)
    cert = {"ssl.certificate.location": str(s.pki / "client.pem"), "ssl.key.location": str(s.pki / "client.key")}
    assert _produce(s.client_conf(**cert), topic_name, [b"as ALICE"]) == []

    s2 = secured("SSL", client_auth="required", SILT_TLS__PRINCIPAL_RULES='["RULE:^CN=([^,]+),OU=Svc$/$1/"]')
    errors = []
    p = Producer(s2.client_conf(error_cb=errors.append, **cert))
    p.produce(topic_name, b"x")
    p.flush(3)
    assert errors, "a certificate no rule maps is refused"
    assert "no tls.principal_rules rule matches it" in s2.agent.log_text()


def _raw(port, api_key, version, body=b""):
    header = struct.pack(">hhi", api_key, version, 1) + struct.pack(">h", 3) + b"raw"
    frame = header + body
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(struct.pack(">i", len(frame)) + frame)
    return s


def test_unauthenticated_clients_can_send_only_the_sasl_apis(secured):
    s = secured("SASL_PLAINTEXT", SILT_SASL__AUTH_TIMEOUT_MS="1500")
    # ApiVersions is answered before authentication.
    sock = _raw(s.port, 18, 0)
    size = struct.unpack(">i", sock.recv(4))[0]
    assert size > 6
    sock.close()
    # Every other API key closes the connection without an answer.
    for key in range(0, 70):
        if key in (17, 18, 36):
            continue
        sock = _raw(s.port, key, 0, b"\x00" * 16)
        try:
            data = sock.recv(4)
        except (ConnectionResetError, socket.timeout):
            data = b""
        finally:
            sock.close()
        assert data == b"", f"api key {key} got an answer before authentication"
    # A client that connects and never authenticates (idle, or trickling a frame) is closed
    # after sasl.auth_timeout_ms, long before connections.idle_timeout_ms.
    for trickle in (False, True):
        sock = socket.create_connection(("127.0.0.1", s.port), timeout=10)
        started = time.time()
        try:
            if trickle:
                for b in struct.pack(">i", 100) + b"\x00\x12":
                    sock.send(bytes([b]))
                    time.sleep(0.2)
            data = sock.recv(4)
        except ConnectionResetError:
            data = b""
        finally:
            sock.close()
        assert data == b"" and time.time() - started < 8, (trickle, data, time.time() - started)
    assert "not authenticated within sasl.auth_timeout_ms" in s.agent.log_text()
    assert s.agent.alive()


def test_tls_certificate_rotation_needs_no_restart(secured):
    s = secured("SSL", SILT_TLS__RELOAD_INTERVAL_MS="200")

    def served_cn():
        ctx = ssl.create_default_context(cafile=str(s.pki / "ca.pem"))
        with socket.create_connection(("127.0.0.1", s.port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as t:
                return dict(x[0] for x in t.getpeercert()["subject"])["commonName"]

    assert served_cn() == "localhost"
    make_pki(s.pki, server_cn="rotated.localhost")
    deadline = time.time() + 10
    while served_cn() != "rotated.localhost":
        assert time.time() < deadline, "the rotated certificate was not served within 10 s"
        time.sleep(0.2)
    assert "TLS certificate reloaded" in s.agent.log_text()


def _b64url(b):
    import base64

    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


class TokenIssuer:
    """An RS256 JWT issuer made with openssl: a key, its JWKS file, and signed tokens."""

    def __init__(self, d):
        import json

        d.mkdir(parents=True, exist_ok=True)
        self.d = d
        _openssl("genrsa", "-out", "jwt.key", "2048", cwd=d)
        out = subprocess.run([OPENSSL, "rsa", "-in", "jwt.key", "-noout", "-modulus"], cwd=d,
                             capture_output=True, check=True).stdout.decode()
        n = bytes.fromhex(out.strip().split("=", 1)[1])
        (d / "jwks.json").write_text(json.dumps(
            {"keys": [{"kty": "RSA", "kid": "test-key", "alg": "RS256", "n": _b64url(n), "e": "AQAB"}]}))
        self.jwks = d / "jwks.json"

    def token(self, **claims):
        import json

        header = _b64url(json.dumps({"alg": "RS256", "kid": "test-key", "typ": "JWT"}).encode())
        payload = _b64url(json.dumps(claims).encode())
        signed = f"{header}.{payload}".encode()
        sig = subprocess.run([OPENSSL, "dgst", "-sha256", "-sign", "jwt.key"], cwd=self.d, input=signed,
                             capture_output=True, check=True).stdout
        return f"{header}.{payload}.{_b64url(sig)}"


def test_oauthbearer_tokens_signed_by_the_issuer_log_in_and_others_do_not(secured, topic_name, tmp_path):
    issuer = TokenIssuer(tmp_path / "jwt")
    s = secured("SASL_SSL", SILT_SASL__MECHANISMS='["SCRAM-SHA-256","OAUTHBEARER"]',
                SILT_SASL__OAUTHBEARER__JWKS_FILE=str(issuer.jwks),
                SILT_SASL__OAUTHBEARER__ISSUER="https://issuer.test", SILT_SASL__OAUTHBEARER__AUDIENCE="silt")
    create_topic(s.agent.bootstrap, topic_name)
    s.allow(ResourceType.TOPIC, topic_name, "User:svc-orders", AclOperation.WRITE)

    def conf(token, errors):
        return {"bootstrap.servers": s.secure, "security.protocol": "SASL_SSL",
                "ssl.ca.location": str(s.pki / "ca.pem"), "sasl.mechanism": "OAUTHBEARER",
                "oauth_cb": lambda _cfg: (token, time.time() + 300), "error_cb": errors.append,
                "message.timeout.ms": 10000}

    now = int(time.time())
    good = issuer.token(sub="svc-orders", iss="https://issuer.test", aud="silt", exp=now + 300)
    errors = []
    assert _produce(conf(good, errors), topic_name, [b"with a token"]) == []
    # Admin calls with the token: the client asks for one on poll().
    made = f"{topic_name}-admin"
    s.allow(ResourceType.TOPIC, made, "User:svc-orders", AclOperation.CREATE)
    s.allow(ResourceType.TOPIC, made, "User:svc-orders", AclOperation.DESCRIBE_CONFIGS)
    a = AdminClient(conf(good, errors))
    a.poll(1)
    for f in a.create_topics([NewTopic(made, num_partitions=1, replication_factor=1)]).values():
        f.result(timeout=30)
    described = a.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, made)])
    configs = list(described.values())[0].result(timeout=30)
    assert "retention.ms" in configs
    for bad in [
        issuer.token(sub="svc-orders", iss="https://issuer.test", aud="silt", exp=now - 120),  # expired
        issuer.token(sub="svc-orders", iss="https://other.test", aud="silt", exp=now + 300),  # issuer
        issuer.token(sub="svc-orders", iss="https://issuer.test", aud="nope", exp=now + 300),  # audience
        TokenIssuer(tmp_path / "other").token(sub="svc-orders", iss="https://issuer.test", aud="silt",
                                              exp=now + 300),  # another key
    ]:
        errors = []
        p = Producer(conf(bad, errors))
        p.produce(topic_name, b"x")
        p.flush(3)
        assert any(e.code() == KafkaError._AUTHENTICATION for e in errors), errors
    log = s.agent.log_text()
    for why in ["the token expired", "wrong issuer", "wrong audience", "the signature does not verify"]:
        assert why in log, why


def test_sessions_expire_and_librdkafka_reauthenticates_in_place(secured, topic_name):
    """KIP-368: with sasl.max_reauth_ms, librdkafka and kafka-python re-authenticate on their
    connections and keep producing; a client that does not re-authenticate has its connection
    closed at its next request after expiry."""
    from kafka import KafkaProducer

    s = secured("SASL_PLAINTEXT", SILT_SASL__MAX_REAUTH_MS="2000")
    s.add_user("gina")
    create_topic(s.agent.bootstrap, topic_name)
    s.allow(ResourceType.TOPIC, topic_name, "User:gina", AclOperation.WRITE)
    logins_before = s.metric('silt_sasl_authentications_total{result="succeeded"}')
    p = Producer({**s.client_conf(user="gina"), "linger.ms": 5})
    errors = []
    deadline = time.time() + 7
    sent = 0
    while time.time() < deadline:
        p.produce(topic_name, f"r{sent}".encode(), on_delivery=lambda e, m: errors.append(e))
        sent += 1
        p.poll(0.05)
    assert p.flush(30) == 0
    assert [e for e in errors if e is not None] == [] and len(errors) == sent
    assert s.metric('silt_sasl_authentications_total{result="succeeded"}') >= logins_before + 3, \
        "librdkafka re-authenticated every ~2 s"
    before = s.metric('silt_sasl_authentications_total{result="succeeded"}')
    kp = KafkaProducer(bootstrap_servers=s.secure, security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN",
                       sasl_plain_username="gina", sasl_plain_password=PASSWORD, acks="all",
                       reconnect_backoff_ms=50, retries=5)
    kp.send(topic_name, b"first").get(timeout=30)
    time.sleep(2.5)
    kp.send(topic_name, b"after expiry").get(timeout=30)
    kp.close()
    assert s.metric('silt_sasl_authentications_total{result="succeeded"}') >= before + 2
    # A raw client that authenticates once and never again.
    sock = socket.create_connection(("127.0.0.1", s.port), timeout=10)

    def call(api, version, body, corr):
        frame = struct.pack(">hhi", api, version, corr) + struct.pack(">h", 3) + b"raw" + body
        sock.sendall(struct.pack(">i", len(frame)) + frame)
        head = sock.recv(4)
        if len(head) < 4:
            return None
        size = struct.unpack(">i", head)[0]
        buf = b""
        while len(buf) < size:
            buf += sock.recv(size - len(buf))
        return buf

    assert call(17, 1, struct.pack(">h", 5) + b"PLAIN", 1) is not None
    token = b"\0gina\0" + PASSWORD.encode()
    resp = call(36, 1, struct.pack(">i", len(token)) + token, 2)
    assert resp is not None and struct.unpack(">h", resp[4:6])[0] == 0, resp
    assert call(3, 1, struct.pack(">i", -1), 3) is not None, "answered while the login holds"
    time.sleep(2.5)
    try:
        late = call(3, 1, struct.pack(">i", -1), 4)
    except ConnectionResetError:
        late = None
    sock.close()
    assert late is None, "answered after the login expired"
    assert "authentication of User:gina expired" in s.agent.log_text()



def test_admin_port_over_tls_takes_changes_from_client_certificates(agent_factory, tmp_path):
    """admin_tls: the admin port speaks TLS; reads need nothing, a change needs the token or a
    client certificate from tls.client_ca whose principal is a super user (mTLS)."""
    import http.client

    pki = make_pki(tmp_path / "pki")
    a = agent_factory(SILT_ADMIN_TLS="true", SILT_TLS__CERT=str(pki / "server.pem"),
                      SILT_TLS__KEY=str(pki / "server.key"), SILT_TLS__CLIENT_CA=str(pki / "ca.pem"),
                      SILT_ADMIN_TOKEN="tok-123456",
                      SILT_AUTHORIZATION__SUPER_USERS='["User:CN=alice,O=Example"]')
    port = int(next(l.rsplit(":", 1)[1].strip().rstrip(")") for l in a.log_text().splitlines()
                    if "admin http on" in l))

    def call(method, path, cert=False, token=None):
        ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
        if cert:
            ctx.load_cert_chain(str(pki / "client.pem"), str(pki / "client.key"))
        c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        c.request(method, path, headers=headers)
        r = c.getresponse()
        body = r.read().decode()
        c.close()
        return r.status, body

    assert call("GET", "/healthz") == (200, "ok\n")
    status, _ = call("GET", "/metrics")
    assert status == 200
    assert call("PUT", "/loglevel?filter=debug")[0] == 401, "no token, no certificate"
    assert call("PUT", "/loglevel?filter=debug", cert=True)[0] == 200, "a client certificate"
    assert call("PUT", "/loglevel?filter=info", token="tok-123456")[0] == 200, "the token"
    # Plain HTTP is not served on a TLS admin port.
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        raw.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            got = raw.recv(100)
        except ConnectionResetError:
            got = b""
        assert not got.startswith(b"HTTP/1.1 200"), got


def test_oauthbearer_keys_come_from_a_jwks_url_and_rotate(secured, topic_name, tmp_path):
    """sasl.oauthbearer.jwks_url: the agent fetches the issuer's keys at start and again every
    jwks_refresh_ms; after the issuer rotates its key, new tokens log in and old ones do not."""
    import functools
    import http.server
    import threading

    first = TokenIssuer(tmp_path / "k1")
    served = tmp_path / "served"
    served.mkdir()
    (served / "jwks.json").write_text(first.jwks.read_text())
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a, **k: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/jwks.json"
        s = secured("SASL_SSL", SILT_SASL__MECHANISMS='["OAUTHBEARER"]', SILT_SASL__OAUTHBEARER__JWKS_URL=url,
                    SILT_SASL__OAUTHBEARER__JWKS_REFRESH_MS="300")
        create_topic(s.agent.bootstrap, topic_name)
        s.allow(ResourceType.TOPIC, topic_name, "User:svc", AclOperation.WRITE)

        def works(token):
            errors = []
            conf = {"bootstrap.servers": s.secure, "security.protocol": "SASL_SSL",
                    "ssl.ca.location": str(s.pki / "ca.pem"), "sasl.mechanism": "OAUTHBEARER",
                    "oauth_cb": lambda _c: (token, time.time() + 300), "error_cb": errors.append,
                    "message.timeout.ms": 5000}
            p = Producer(conf)
            p.produce(topic_name, b"x")
            p.flush(6)
            return not any(e.code() == KafkaError._AUTHENTICATION for e in errors)

        exp = int(time.time()) + 300
        assert works(first.token(sub="svc", exp=exp))
        second = TokenIssuer(tmp_path / "k2")
        (served / "jwks.json").write_text(second.jwks.read_text())
        deadline = time.time() + 15
        while not works(second.token(sub="svc", exp=exp)):
            assert time.time() < deadline, "the rotated key was not fetched"
        assert not works(first.token(sub="svc", exp=exp)), "the retired key still logs in"
    finally:
        httpd.shutdown()
