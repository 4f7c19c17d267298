"""The agent process itself: settings from the environment, clean shutdown."""

import re


def test_silt_log_selects_the_log_level(agent_factory):
    # SILT_LOG is the agent's log filter (docs/configuration.md); setting it must not stop
    # start-up, and warn must silence the info lines an agent logs at every start.
    a = agent_factory(SILT_LOG="warn")
    assert a.alive()
    a.stop()
    log = a.log_text()
    assert "silt agent listening on" in log
    assert not re.search(r"\bINFO\b", log), f"SILT_LOG=warn still logged INFO lines:\n{log[-2000:]}"


def test_sigterm_exits_cleanly_and_says_so(agent):
    agent.stop()  # asserts exit code 0
    assert "shutting down: flushing buffered writes" in agent.log_text()
