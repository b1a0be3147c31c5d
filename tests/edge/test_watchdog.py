"""No thread of the agent dies quietly (issue 9 §3): a thread that raises stops the agent, which exits
with 70 for systemd to restart it, instead of capturing on with nobody captioning or sending."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from devtools import SAMPLES_DIR
from devtools.brokers import free_port
from runtime.service import EXIT_BROKEN, Watchdog


def test_a_thread_that_raises_is_recorded_and_one_that_returns_is_not() -> None:
    watchdog = Watchdog()
    done = threading.Event()
    watchdog.spawn("ends", done.set).join(5)
    assert done.is_set() and not watchdog.died.is_set() and watchdog.failure is None

    def broken() -> None:
        raise RuntimeError("a bug")

    watchdog.spawn("asr", broken).join(5)
    assert watchdog.died.is_set()
    assert watchdog.failure == "thread asr died: RuntimeError('a bug')"


@pytest.mark.models
@pytest.mark.parametrize("thread", ["asr", "mqtt-publish"])
def test_the_agent_exits_70_when_one_of_its_threads_dies(
    thread: str, tmp_path: Path, models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edge_agent.__main__ import main
    from edge_agent.agent import Agent
    from edge_agent.link import MqttLink

    def die(_self: object) -> None:
        raise RuntimeError(f"a bug in {thread}")

    if thread == "asr":
        monkeypatch.setattr(Agent, "_asr_loop", die)
    else:
        monkeypatch.setattr(MqttLink, "_publish_loop", die)
    config = tmp_path / "agent.toml"
    config.write_text(
        f'agent_id = "pi-watchdog"\n'
        f"[mqtt]\nport = {free_port()}\n"  # nothing listens: the agent would run on offline
        f'[input]\nsource = "file"\nfile = "{SAMPLES_DIR / "sample.wav"}"\nrealtime = true\n'
        f'[outbox]\npath = "{tmp_path / "outbox.sqlite3"}"\n'
        f'[captions]\ndir = "{tmp_path / "captions"}"\nterminal = false\n'
    )
    assert main(["--config", str(config)]) == EXIT_BROKEN
