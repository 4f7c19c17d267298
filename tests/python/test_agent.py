"""The agent process itself: settings from the environment, clean shutdown."""

import re


def test_silt_log_selects_the_log_level(agent_factory):
    # SILT_LOG is the agent's log filter (main.rs reads it with tracing's EnvFilter); setting it
    # must not stop start-up and must change what is logged.
    a = agent_factory(SILT_LOG="debug")
    assert a.alive()
    a.stop()
    assert re.search(r"\bDEBUG\b", a.log_text()), "SILT_LOG=debug produced no DEBUG lines"


def test_sigterm_exits_cleanly_and_says_so(agent):
    agent.stop()  # asserts exit code 0
    assert "shutting down: flushing buffered writes" in agent.log_text()
