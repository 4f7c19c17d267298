"""Every Python-driven client over every way of logging in: kafka-python and kcat over SASL_SSL
with PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 and OAUTHBEARER (a JWT signed by a test key), and over
mTLS — each one making admin calls (kcat: metadata), producing, and consuming in a consumer group.
kcat cannot be handed a signed token (Debian's librdkafka 2.0.2 is built without OIDC and kcat
has no token callback): its OAUTHBEARER case checks that the unsecured JWT librdkafka makes
itself is refused. (confluent-kafka is covered in test_security.py, the rdkafka crate in
crates/silt/tests/it/tls_clients.rs.)"""

import subprocess
import time
import uuid

import pytest
from confluent_kafka.admin import AclOperation, ResourcePatternType, ResourceType

from test_security import KCAT, PASSWORD, TokenIssuer, secured  # noqa: F401 (fixture)

WAYS = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", "MTLS"]


class Login:
    """An agent with a secured listener for one way of logging in, and the principal it gives."""

    def __init__(self, secured, tmp_path, way):
        self.way = way
        if way == "MTLS":
            self.s = secured("SSL", client_auth="required", principal_from="cn")
            self.principal = "alice"  # the client certificate's CN
        elif way == "OAUTHBEARER":
            self.issuer = TokenIssuer(tmp_path / "jwt")
            self.s = secured("SASL_SSL", SILT_SASL__MECHANISMS='["SCRAM-SHA-256","OAUTHBEARER"]',
                             SILT_SASL__OAUTHBEARER__JWKS_FILE=str(self.issuer.jwks),
                             SILT_SASL__OAUTHBEARER__ISSUER="https://issuer.test",
                             SILT_SASL__OAUTHBEARER__AUDIENCE="silt")
            self.principal = "svc-orders"
            self.token = self.issuer.token(sub=self.principal, iss="https://issuer.test", aud="silt",
                                           exp=int(time.time()) + 600)
        else:
            self.s = secured("SASL_SSL")
            self.s.add_user("erin")
            self.principal = "erin"
        user = f"User:{self.principal}"
        self.s.allow(ResourceType.TOPIC, "sec-", user, AclOperation.ALL, pattern=ResourcePatternType.PREFIXED)
        self.s.allow(ResourceType.GROUP, "g-", user, AclOperation.READ, pattern=ResourcePatternType.PREFIXED)
        self.s.allow(ResourceType.BROKER, "kafka-cluster", user, AclOperation.CREATE)

    @property
    def ca(self):
        return str(self.s.pki / "ca.pem")


def _kafka_python_conf(login):
    from kafka.net.sasl.oauth import AbstractTokenProvider

    c = {"bootstrap_servers": login.s.secure, "ssl_cafile": login.ca}
    if login.way == "MTLS":
        return {**c, "security_protocol": "SSL", "ssl_certfile": str(login.s.pki / "client.pem"),
                "ssl_keyfile": str(login.s.pki / "client.key")}
    c["security_protocol"] = "SASL_SSL"
    if login.way == "OAUTHBEARER":
        token = login.token

        class Provider(AbstractTokenProvider):
            def token(self):
                return token

        return {**c, "sasl_mechanism": "OAUTHBEARER", "sasl_oauth_token_provider": Provider()}
    return {**c, "sasl_mechanism": login.way, "sasl_plain_username": "erin", "sasl_plain_password": PASSWORD}


@pytest.mark.parametrize("way", WAYS)
def test_kafka_python_admin_produce_and_group_consume(secured, tmp_path, way):
    from kafka import KafkaConsumer, KafkaProducer
    from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient, NewTopic

    login = Login(secured, tmp_path, way)
    conf = _kafka_python_conf(login)
    topic, group = f"sec-kp-{uuid.uuid4().hex[:6]}", f"g-kp-{uuid.uuid4().hex[:6]}"
    admin = KafkaAdminClient(**conf)
    admin.create_topics([NewTopic(topic, 2, 1)])
    described = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)], config_filter="all")
    assert "retention.ms" in repr(described), described
    admin.close()

    prod = KafkaProducer(acks="all", **conf)
    values = [f"{way}-{i}".encode() for i in range(40)]
    for v in values:
        prod.send(topic, v)
    prod.flush(30)
    prod.close()
    cons = KafkaConsumer(topic, group_id=group, auto_offset_reset="earliest", enable_auto_commit=False,
                         consumer_timeout_ms=20000, **conf)
    got = []
    for m in cons:
        got.append(m.value)
        if len(got) == len(values):
            break
    cons.commit()
    committed = sum(cons.committed(tp) or 0 for tp in cons.assignment())
    cons.close()
    assert sorted(got) == sorted(values)
    assert committed == len(values)


def _kcat(args, stdin=None, timeout=60):
    p = subprocess.run([KCAT, *args], input=stdin, capture_output=True, timeout=timeout)
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    return p.stdout.decode()


@pytest.mark.parametrize("way", WAYS)
def test_kcat_metadata_produce_and_group_consume(secured, tmp_path, way):
    login = Login(secured, tmp_path, way)
    opts = ["-b", login.s.secure, "-X", f"ssl.ca.location={login.ca}"]
    if way == "MTLS":
        opts += ["-X", "security.protocol=SSL", "-X", f"ssl.certificate.location={login.s.pki / 'client.pem'}",
                 "-X", f"ssl.key.location={login.s.pki / 'client.key'}"]
    elif way == "OAUTHBEARER":
        # librdkafka's own unsecured JWT (alg "none"): never accepted.
        opts += ["-X", "security.protocol=SASL_SSL", "-X", "sasl.mechanism=OAUTHBEARER",
                 "-X", "enable.sasl.oauthbearer.unsecure.jwt=true",
                 "-X", f"sasl.oauthbearer.config=principal={login.principal}"]
        p = subprocess.run([KCAT, "-L", *opts, "-m", "5"], capture_output=True, timeout=60)
        assert p.returncode != 0
        failures = [line for line in login.s.agent.log_text().splitlines() if "SASL authentication failed" in line]
        assert failures and all('mechanism="OAUTHBEARER"' in line for line in failures), failures
        assert all("an unsigned token" in line for line in failures), failures
        return
    else:
        opts += ["-X", "security.protocol=SASL_SSL", "-X", f"sasl.mechanism={way}", "-X", "sasl.username=erin",
                 "-X", f"sasl.password={PASSWORD}"]
    topic, group = f"sec-kcat-{uuid.uuid4().hex[:6]}", f"g-kcat-{uuid.uuid4().hex[:6]}"
    lines = [f"{way} line {i}" for i in range(30)]
    # Produce (auto-creating the topic: the principal may CREATE), then list it (metadata).
    _kcat(["-P", "-t", topic, *opts], stdin=("\n".join(lines) + "\n").encode())
    listed = _kcat(["-L", "-t", topic, *opts])
    assert f'topic "{topic}"' in listed, listed
    # A balanced consumer in a group, to the end of the topic.
    out = _kcat(["-G", group, "-e", "-q", "-X", "auto.offset.reset=earliest", *opts, topic], timeout=90)
    assert sorted(out.splitlines()) == sorted(lines)
