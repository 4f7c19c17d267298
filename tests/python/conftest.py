"""Fixtures that run the real `silt agent` binary for the Python end-to-end tests.

The binary comes from TEST_SILT_BIN (see scripts/test). Every test that uses the `agent` fixture gets
its own agent on a free 127.0.0.1 port with a fresh data directory; the agent's stderr goes to
`<tmp>/agent.log`, and the tail of that log is attached to the report of a failing test.
"""

import ctypes
import os
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

READY_DEADLINE_S = 30.0
STOP_DEADLINE_S = 30.0
LOG_TAIL_LINES = 400


def _silt_bin() -> str:
    path = os.environ.get("TEST_SILT_BIN")
    if not path:
        pytest.fail(
            "TEST_SILT_BIN is not set: point it at the silt binary, e.g. "
            "TEST_SILT_BIN=$PWD/target/debug/silt .venv/bin/python -m pytest -q tests/python",
            pytrace=False,
        )
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        pytest.fail(f"TEST_SILT_BIN={path!r} is not an executable file (build it with cargo build)", pytrace=False)
    return path


try:  # resolved here: the child of a fork must not dlopen (other threads may hold its lock)
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):
    _prctl = None


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL the agent if the test process dies (Linux only)."""
    if _prctl is not None:
        PR_SET_PDEATHSIG = 1
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class AgentStartError(Exception):
    pass


# Agent builds (by path) found to predate the admin HTTP listener setting.
_NO_ADMIN_HTTP = set()


class Agent:
    """One `silt agent` process; restartable on the same data directory and port."""

    def __init__(self, binary: str, base_dir: Path, env: dict):
        self.binary = binary
        self.base_dir = base_dir
        self.data_dir = base_dir / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = base_dir / "agent.log"
        self.extra_env = dict(env)
        self.port = None
        self.proc = None
        self.starts = 0
        self.admin_http = binary not in _NO_ADMIN_HTTP  # older builds have no admin listener

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log_text(self, start: int = 0) -> str:
        """The agent log (every run), from byte `start` on."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(start)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    # -- lifecycle -------------------------------------------------------------------------

    def _spawn_once(self) -> None:
        # Every SILT_* variable is an agent setting and unknown ones stop start-up, so the
        # harness's own (TEST_SILT_BIN) must not leak into the agent's environment.
        env = {k: v for k, v in os.environ.items() if not k.startswith("SILT_")}
        env.update(
            {
                "SILT_LISTEN": f"127.0.0.1:{self.port}",
                "SILT_DATA_DIR": str(self.data_dir),
                "SILT_FLUSH__INTERVAL_MS": "20",
                "NO_COLOR": "1",
            }
        )
        if self.admin_http:
            # The admin HTTP listener defaults to a fixed port; agents running side by side
            # would collide on it, so every agent gets an ephemeral one.
            env["SILT_ADMIN_LISTEN"] = "127.0.0.1:0"
        env.update(self.extra_env)
        self.starts += 1
        log = open(self.log_path, "ab")
        log.write(f"\n===== test harness: start #{self.starts} on port {self.port} =====\n".encode())
        log.flush()
        offset = log.tell()
        try:
            self.proc = subprocess.Popen(
                [self.binary, "agent"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=self.base_dir,
                preexec_fn=_die_with_parent,
            )
        finally:
            log.close()
        ready_line = f"silt agent listening on 127.0.0.1:{self.port}"
        deadline = time.monotonic() + READY_DEADLINE_S
        while time.monotonic() < deadline:
            rc = self.proc.poll()
            if rc is not None:
                text = self.log_text(offset)
                self.proc = None
                raise AgentStartError(f"agent exited with code {rc} during start-up:\n{text[-4000:]}")
            if ready_line in self.log_text(offset) and _accepts(self.port):
                return
            time.sleep(0.02)
        self._hard_kill()
        raise AgentStartError(
            f"agent did not accept connections on {self.bootstrap} within {READY_DEADLINE_S}s:\n"
            f"{self.log_text(offset)[-4000:]}"
        )

    def start(self) -> "Agent":
        assert self.proc is None, "agent already running"
        last = None
        for _ in range(5):
            self.port = _free_port()
            try:
                self._spawn_once()
                return self
            except AgentStartError as e:
                last = e
                if "admin_listen" in str(e) and self.admin_http:
                    self.admin_http = False  # an older build without the admin listener
                    _NO_ADMIN_HTTP.add(self.binary)
                    continue
                if "Address already in use" not in str(e):  # else the port was taken in between
                    break
        pytest.fail(f"could not start the silt agent: {last}", pytrace=False)

    def restart(self) -> "Agent":
        """Starts again on the same port and data directory (after kill() or stop())."""
        if self.proc is not None:
            self.stop()
        deadline = time.monotonic() + READY_DEADLINE_S
        while True:
            try:
                self._spawn_once()
                return self
            except AgentStartError as e:
                if "Address already in use" in str(e) and time.monotonic() < deadline:
                    time.sleep(0.2)
                    continue
                pytest.fail(f"could not restart the silt agent: {e}", pytrace=False)

    def kill(self) -> None:
        """SIGKILL and wait."""
        assert self.proc is not None, "agent is not running"
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=STOP_DEADLINE_S)
        self.proc = None

    def stop(self) -> None:
        """SIGTERM, wait, and require a clean exit (code 0)."""
        assert self.proc is not None, "agent is not running"
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=STOP_DEADLINE_S)
        except subprocess.TimeoutExpired:
            self._hard_kill()
            pytest.fail(f"agent did not exit within {STOP_DEADLINE_S}s of SIGTERM", pytrace=False)
        self.proc = None
        assert rc == 0, f"agent exited with code {rc} after SIGTERM; log tail:\n{self.log_text()[-4000:]}"

    def _hard_kill(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            try:
                self.proc.wait(timeout=STOP_DEADLINE_S)
            except subprocess.TimeoutExpired:
                pass
            self.proc = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


# -- pytest plumbing ------------------------------------------------------------------------


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    agents = getattr(item, "_silt_agents", None)
    if agents and report.failed:
        for i, a in enumerate(agents):
            lines = a.log_text().splitlines()
            tail = "\n".join(lines[-LOG_TAIL_LINES:])
            more = f" (last {LOG_TAIL_LINES} of {len(lines)} lines)" if len(lines) > LOG_TAIL_LINES else ""
            report.sections.append((f"silt agent #{i} log {a.log_path}{more}", tail))


@pytest.fixture
def agent_factory(request, tmp_path):
    """Starts agents with extra SILT_* settings: agent_factory(SILT_TOPICS__NUM_PARTITIONS='3')."""
    binary = _silt_bin()
    started = []
    request.node._silt_agents = started

    def make(**env):
        a = Agent(binary, tmp_path / f"agent{len(started)}", env)
        started.append(a)
        return a.start()

    yield make
    for a in started:
        a._hard_kill()
    panics = [a.log_path for a in started if "panicked at" in a.log_text()]
    if panics:
        pytest.fail(f"the agent panicked; see {', '.join(map(str, panics))}", pytrace=False)


@pytest.fixture
def agent(agent_factory):
    """A running agent with default settings (auto-create on, 1 partition, 20 ms flushes)."""
    return agent_factory()


@pytest.fixture
def topic_name(request):
    """A unique, valid topic name for this test."""
    base = "".join(c if c.isalnum() else "-" for c in request.node.name)[:80]
    return f"{base}-{uuid.uuid4().hex[:8]}"


def wait_until(cond, timeout=30.0, interval=0.05, what="condition"):
    """Polls cond() until it returns a truthy value; fails after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
