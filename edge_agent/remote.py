"""Configuration from the cloud, applied live: the privacy mute, heartbeat, VAD mode and log level.

An :class:`~contracts.AgentConfig` comes down the agent's retained config topic (the link hands it
over). Only a version greater than the last applied one is applied; stale ones, and the replays the
broker sends on every subscribe (the message is retained), are ignored and counted. Each setting
takes effect where it is used: the capture thread discards audio while muted (:meth:`feed`), the
heartbeat loop reads :attr:`RemoteConfig.heartbeat_s` at its next wait, the webrtc VAD switches
mode at its next frame, the root logger's level changes at once.

What was applied is merged (a message changes only the settings it carries) and persisted next to
the outbox, written atomically, and loaded at start: a restarted device is muted before its
network comes back. A corrupt file is logged and ignored; it never stops the agent.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter
from pathlib import Path
from typing import Any

from contracts import AgentConfig, DecodeError, decode, encode
from edge_agent.vad import Segmenter, VadEvent, WebrtcSegmenter

log = logging.getLogger(__name__)


def config_path(outbox_path: Path) -> Path:
    """Where the applied configuration is kept: ``<outbox path>.config.json``."""
    return outbox_path.with_name(outbox_path.name + ".config.json")


class RemoteConfig:
    """The configuration applied so far, and the switches the agent's threads read."""

    def __init__(self, agent_id: str, path: Path | None, *, heartbeat_s: float, vad: Segmenter | None = None) -> None:
        self.agent_id = agent_id
        self.path = path
        self.vad = vad
        self.heartbeat_s = heartbeat_s
        self.muted = threading.Event()  # set while muted: the capture thread discards audio
        self.muted_s = 0.0  # seconds of audio discarded while muted
        self.counters: Counter[str] = Counter()
        self.applied: AgentConfig | None = None  # everything applied so far, merged
        self._lock = threading.Lock()
        self._segment_open = False  # the VAD may hold a half segment (audio fed since the last flush)

    @property
    def version(self) -> int | None:
        """The last applied version (None: none yet)."""
        applied = self.applied
        return applied.version if applied is not None else None

    def state(self) -> tuple[int | None, bool]:
        """``(last applied version, muted)`` for the status heartbeat."""
        return self.version, self.muted.is_set()

    # --- applying ---------------------------------------------------------------------------

    def load(self) -> bool:
        """Apply the persisted configuration, if any; False when there is none or it is unusable."""
        if self.path is None or not self.path.exists():
            return False
        try:
            config = decode(self.path.read_bytes(), AgentConfig)
        except (OSError, DecodeError) as exc:
            self.counters["config_load_errors"] += 1
            log.error("ignoring the saved configuration %s: %s", self.path, exc)
            return False
        if config.agent_id != self.agent_id:
            self.counters["config_load_errors"] += 1
            log.error("ignoring the saved configuration %s: it is %s's, not this agent's", self.path, config.agent_id)
            return False
        return self.apply(config, persist=False)

    def apply(self, config: AgentConfig, *, persist: bool = True) -> bool:
        """Apply ``config`` if its version is newer than the last applied one; whether it was applied."""
        with self._lock:
            applied = self.applied
            if config.agent_id != self.agent_id:
                self.counters["config_wrong_agent"] += 1
                log.warning("ignoring config v%d for %s: this agent is %s", config.version, config.agent_id,
                            self.agent_id)
                return False
            if applied is not None and config.version <= applied.version:
                self.counters["config_stale"] += 1
                # the same version again is the retained message replayed on subscribe: expected
                log.log(logging.DEBUG if config.version == applied.version else logging.WARNING,
                        "ignoring config v%d: v%d is applied", config.version, applied.version)
                return False
            changes = config.settings()
            # a new log level takes effect before the line below if it lowers the level, after it if
            # it raises it: either way the line saying it was applied is written
            level = changes.get("log_level")
            raising = level is not None and logging.getLevelName(level) > logging.getLogger().getEffectiveLevel()
            for name, value in changes.items():
                if not (name == "log_level" and raising):
                    self._set(name, value)
            shown = ", ".join(f"{k}={v}" for k, v in changes.items()) or "no changes"
            log.info("config v%d applied: %s", config.version, shown)
            if raising:
                self._set("log_level", level)
            before = applied.settings() if applied is not None else {}
            self.applied = AgentConfig(
                agent_id=config.agent_id, version=config.version, issued_at=config.issued_at, **(before | changes)
            )
            self.counters["config_applied"] += 1
            if persist:
                self._persist(self.applied)
            return True

    def _set(self, name: str, value: Any) -> None:
        if name == "muted":
            if value:
                self.muted.set()
            else:
                self.muted.clear()
        elif name == "heartbeat_s":
            self.heartbeat_s = float(value)
        elif name == "vad_aggressiveness":
            if isinstance(self.vad, WebrtcSegmenter):
                self.vad.set_aggressiveness(value)
            else:
                engine = self.vad.type_key if self.vad is not None else "no"
                log.warning("vad_aggressiveness=%s ignored: the %s VAD engine has no such mode", value, engine)
        elif name == "log_level":
            logging.getLogger().setLevel(value)

    def _persist(self, config: AgentConfig) -> None:
        """Write the applied configuration atomically (tmp + fsync + rename); a failure is logged."""
        if self.path is None:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(encode(config))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:  # applied all the same: only a restart would forget it
            self.counters["config_persist_errors"] += 1
            log.error("could not save config v%d to %s: %s", config.version, self.path, exc)

    # --- the capture thread -----------------------------------------------------------------

    def feed(self, pcm: bytes, t0: float) -> list[VadEvent]:
        """The VAD events of one captured chunk (the capture thread calls this, not the VAD).

        While muted the chunk is discarded before the VAD and counted. The first muted chunk closes
        the segment the VAD holds open, so no half segment waits for audio after the mute (what it
        holds was captured before the mute and is captioned as usual).
        """
        vad = self.vad
        assert vad is not None, "RemoteConfig.feed needs the VAD"
        if not self.muted.is_set():
            self._segment_open = True
            return vad.process(pcm, t0)
        self.muted_s += len(pcm) / (2 * vad.sample_rate)
        if not self._segment_open:
            return []
        self._segment_open = False
        return list(vad.flush())
