"""End-to-end tests with the kcat command-line tool (librdkafka's simple consumer, no groups)."""

import json
import shutil
import subprocess

import pytest

from helpers import fetch_batches

KCAT = shutil.which("kcat") or "/usr/bin/kcat"


@pytest.fixture(scope="module", autouse=True)
def _kcat_present():
    assert shutil.which(KCAT), "kcat is not installed (apt-get install kcat)"


def kcat(*args, input=None, timeout=60):
    p = subprocess.run(
        [KCAT, *args],
        input=input,
        capture_output=True,
        timeout=timeout,
    )
    assert p.returncode == 0, f"kcat {' '.join(args)} exited {p.returncode}:\n{p.stderr.decode(errors='replace')}"
    return p.stdout


def test_produce_keys_and_headers_then_consume_formatted(agent, topic_name):
    n = 50
    lines = [f"key-{i}:value {i}: with colons" for i in range(n)]
    kcat(
        "-P", "-b", agent.bootstrap, "-t", topic_name, "-K", ":",
        "-H", "source=kcat", "-H", "dup=one", "-H", "dup=two",
        input=("\n".join(lines) + "\n").encode(),
    )
    out = kcat(
        "-C", "-b", agent.bootstrap, "-t", topic_name, "-o", "beginning", "-e", "-q",
        "-f", "%p|%o|%k|%s|%h|%S\n",
    )
    got = out.decode().splitlines()
    want = [
        f"0|{i}|key-{i}|value {i}: with colons|source=kcat,dup=one,dup=two|{len(f'value {i}: with colons')}"
        for i in range(n)
    ]
    assert got == want


def test_metadata_json_lists_partitions_and_leader(agent_factory, topic_name):
    a = agent_factory(SILT_TOPICS__NUM_PARTITIONS="3")
    # Auto-created on first use with the agent's default partition count.
    kcat("-P", "-b", a.bootstrap, "-t", topic_name, "-p", "2", input=b"hello\n")
    md = json.loads(kcat("-L", "-J", "-b", a.bootstrap, "-t", topic_name))
    assert md["brokers"] == [{"id": 0, "name": a.bootstrap}]
    assert md["controllerid"] == 0
    (t,) = [t for t in md["topics"] if t["topic"] == topic_name]
    assert "error" not in t, t
    assert sorted(p["partition"] for p in t["partitions"]) == [0, 1, 2]
    for p in t["partitions"]:
        assert p["leader"] == 0, p
        assert p["replicas"] == [{"id": 0}], p
        assert p["isrs"] == [{"id": 0}], p
    out = kcat("-C", "-b", a.bootstrap, "-t", topic_name, "-p", "2", "-o", "beginning", "-e", "-q", "-f", "%p/%o/%s\n")
    assert out.decode().splitlines() == ["2/0/hello"]


def test_zstd_produce_reads_back(agent, topic_name):
    n = 300
    lines = [f"z{i}\t" + ("zstd payload %d " % i) * 10 for i in range(n)]
    kcat(
        "-P", "-b", agent.bootstrap, "-t", topic_name, "-z", "zstd", "-K", "\t",
        "-X", "linger.ms=20",
        input=("\n".join(lines) + "\n").encode(),
    )
    err, hw, batches = fetch_batches(agent.bootstrap, topic_name)
    assert (err, hw) == (0, n)
    assert {attrs & 7 for _, _, attrs, _ in batches} == {4}, f"not stored as zstd batches: {batches}"
    out = kcat("-C", "-b", agent.bootstrap, "-t", topic_name, "-o", "beginning", "-e", "-q", "-J")
    msgs = [json.loads(l) for l in out.decode().splitlines()]
    assert [m["offset"] for m in msgs] == list(range(n))
    assert [m["key"] for m in msgs] == [f"z{i}" for i in range(n)]
    assert [m["payload"] for m in msgs] == [("zstd payload %d " % i) * 10 for i in range(n)]
    assert all(m["tstype"] == "create" and m["ts"] > 0 for m in msgs)


def test_auto_create_disabled_reports_unknown_topic(agent_factory, topic_name):
    a = agent_factory(SILT_TOPICS__AUTO_CREATE="false")
    md = json.loads(kcat("-L", "-J", "-b", a.bootstrap, "-t", topic_name))
    (t,) = [t for t in md["topics"] if t["topic"] == topic_name]
    assert "Unknown topic" in t.get("error", ""), t
    md = json.loads(kcat("-L", "-J", "-b", a.bootstrap))
    assert topic_name not in [t["topic"] for t in md["topics"]], "the topic was created although auto-create is off"
