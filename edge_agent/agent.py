"""The edge agent's lifecycle, top to bottom: capture → VAD → local ASR → captions → outbox → MQTT.

Capture runs in its own thread and only feeds the VAD, so inference never holds up the audio:
finished utterances go through an unbounded queue to the ASR thread, which shows the draft at once
and commits segment + draft to the outbox; the MQTT link drains the outbox whenever it can.
Configuration from the cloud (mute, heartbeat, VAD mode, log level) is applied live by
:class:`~edge_agent.remote.RemoteConfig`, loaded from disk before capture starts.

Every thread of the agent (its own and the link's publish loop) runs under one
:class:`~runtime.service.Watchdog`: a thread that dies of an unexpected error stops the agent,
which exits with ``EXIT_BROKEN`` (70) for systemd to restart it, never running on half alive.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from contracts import AgentConfig, Detections, Final, Segment, Transcript, Up, encode, mqtt_topic
from edge_agent.asr import ModelNotPrepared, create_recognizer
from edge_agent.captions import CaptionError, CaptionSink
from edge_agent.capture import SAMPLE_RATE, CaptureError, open_source
from edge_agent.drafting import Drafter
from edge_agent.frames import FrameCapture
from edge_agent.health import Health
from edge_agent.link import IdentityError, MqttLink
from edge_agent.outbox import Outbox, OutboxUnavailable
from edge_agent.quota import OutboxFull
from edge_agent.remote import RemoteConfig, config_path
from edge_agent.settings import AgentSettings
from edge_agent.vad import SpeechSegment, VadModelMissing, create_segmenter
from runtime.audiocodec import to_audio
from runtime.plugins import MissingPackage
from runtime.service import Watchdog

log = logging.getLogger(__name__)

# What a misconfigured device raises from Agent.start(): reported as one clear line, no traceback.
STARTUP_ERRORS = (CaptureError, ModelNotPrepared, VadModelMissing, CaptionError, IdentityError, MissingPackage)

_END = object()


class Agent:
    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.stop_event = threading.Event()
        self.input_done = threading.Event()
        self._segments: queue.Queue[object] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self.watchdog = Watchdog()
        self.captioned = 0

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        s = self.settings
        self.source = open_source(s.input)
        self.vad = create_segmenter(s.vad, SAMPLE_RATE)
        self.asr = create_recognizer(s.asr)
        self.asr.warmup()
        self.captions = CaptionSink(
            s.captions.dir,
            terminal=s.captions.terminal,
            live_lines=s.captions.live_lines,
            write_interval_s=s.captions.write_interval_s,
        )
        self.health = Health()
        self.outbox = Outbox(s.outbox.path, quota=s.outbox.quota())
        self.remote = RemoteConfig(s.agent_id, config_path(s.outbox.path), heartbeat_s=s.heartbeat_s, vad=self.vad)
        self.remote.load()  # a device muted remotely stays muted across a restart, network or not
        self.link = MqttLink(
            s.agent_id,
            s.mqtt,
            self.outbox,
            on_final=self._on_final,
            on_config=self._on_config,
            on_detections=self._on_detections,
            config_state=self.remote.state,
            input_done=self.input_done.is_set,
            resend_after_s=s.outbox.resend_after_s,
            max_in_flight=s.outbox.max_in_flight,
            resend_max_s=s.outbox.resend_max_s,
            health=self.health,
            watchdog=self.watchdog,
            site=s.site,
        )
        self.link.start()
        self.drafter = Drafter(
            self.asr,
            self.captions,
            self._caption,
            early_window_s=s.vad.early_window_s if s.vad.pause_ms else None,
            commit_window_s=s.asr.window_s if s.asr.window_s < 30 else None,
            expected_seq=self.outbox.next_seq,
            on_inference=self.health.record_inference,
        )
        self._spawn("asr", self._asr_loop)
        self._spawn("capture", self._capture_loop)
        self._spawn("heartbeat", self._heartbeat_loop)
        if s.frames.enabled:
            self.frames = FrameCapture(s.agent_id, s.frames, self.outbox, on_commit=self.link.notify,
                                       muted=self.remote.muted.is_set)  # privacy mute drops frames too
            self._spawn("frames", lambda: self.frames.run(self.stop_event))
        log.info("agent %s started (outbox depth %d)", s.agent_id, self.outbox.depth())

    def stop(self) -> None:
        """Undo start() in reverse; safe after a start() that failed half-way."""
        self.stop_event.set()
        self._segments.put(_END)
        for thread in reversed(self._threads):
            thread.join(10)
        link = getattr(self, "link", None)
        if link is not None:
            link.stop()
        for part in ("outbox", "captions", "source"):
            resource = getattr(self, part, None)
            if resource is not None:
                resource.close()
        remote = getattr(self, "remote", None)
        muted = f", {remote.muted_s:.1f} s muted" if remote is not None and remote.muted_s else ""
        log.info("agent stopped: %d captioned%s, link %s", self.captioned, muted, dict(link.counters) if link else {})

    def drained(self) -> bool:
        """Input finished, every utterance captioned, and every segment receipted."""
        return self.input_done.is_set() and self._segments.empty() and self.outbox.depth() == 0

    def _spawn(self, name: str, target: Callable[[], object]) -> None:
        self._threads.append(self.watchdog.spawn(name, target))

    # --- threads ----------------------------------------------------------------------------

    def _capture_loop(self) -> None:
        """Feed the VAD and queue its events (pauses, finished segments): no inference here. While
        muted, audio is discarded before the VAD (:meth:`RemoteConfig.feed`)."""
        for pcm, t0 in self.source.chunks(self.stop_event):
            for event in self.remote.feed(pcm, t0):
                self._segments.put(event)
        for segment in self.vad.flush():
            self._segments.put(segment)
        self._segments.put(_END)
        log.info("input finished")

    def _asr_loop(self) -> None:
        """Early drafts at pauses, then one committed draft per segment (``edge_agent.drafting``)."""
        self.drafter.run(self._segments, _END)
        self.input_done.set()
        log.info("captioning finished: %s", dict(self.drafter.counters))
        self.link.publish_status()  # say so now, not at the next heartbeat (edgecap demo waits for it)

    def _caption(self, speech: SpeechSegment, draft: Transcript | None) -> tuple[int, str]:
        """Commit a finished segment with its draft (the drafter shows the caption)."""
        seq, segment_id = self._commit(speech, draft)
        self.captioned += 1
        return seq, segment_id

    def _commit(self, speech: SpeechSegment, draft: object) -> tuple[int, str]:
        """Store the segment in the outbox and wake the link; the seq, or -1 when the outbox quota
        refused it (policy ``refuse_new_audio``: the caption is still shown locally)."""
        segment_id = speech.segment_id  # chosen by the VAD at onset: early captions already use it
        agent_id = self.settings.agent_id
        # encoded here, in the ASR thread, once: the quota counts the encoded bytes
        try:
            audio = to_audio(speech.pcm, SAMPLE_RATE, 1, self.settings.audio_codec)
        except Exception:  # never lose a segment to its encoder: PCM16 always works
            log.exception("encoding segment %s as %s failed: sent as pcm_s16le", segment_id, self.settings.audio_codec)
            audio = to_audio(speech.pcm, SAMPLE_RATE, 1, "pcm_s16le")

        def build(seq: int) -> bytes:
            return encode(
                Segment(
                    agent_id=agent_id,
                    segment_id=segment_id,
                    seq=seq,
                    started_at=speech.started_at,
                    ended_at=speech.ended_at,
                    audio=audio,
                    draft=draft,  # type: ignore[arg-type]
                )
            )

        try:
            seq = self.outbox.append(segment_id, mqtt_topic(agent_id, Up.SEGMENTS), build, audio_bytes=len(audio.data))
        except (OutboxFull, OutboxUnavailable) as exc:  # quota, or a full disk: counted by the outbox
            log.warning("segment %s kept only as a local caption: %s", segment_id, exc)
            return -1, segment_id
        self.link.notify()
        return seq, segment_id

    def _on_final(self, final: Final) -> None:
        self.captions.final(final)

    def _on_detections(self, found: Detections) -> None:
        """What the cloud found in a frame (``frames.summary``): logged."""
        boxes = ", ".join(f"{b.label} {b.score:.2f}" for b in found.boxes) or "nothing"
        log.info("frame %s (seq %d): %s", found.segment_id, found.seq, boxes)

    def _on_config(self, config: AgentConfig) -> None:
        """A configuration from the cloud (MQTT network thread): apply it, then report it at once."""
        if self.remote.apply(config):
            self.link.publish_status()

    def _heartbeat_loop(self) -> None:
        """The retained status every ``heartbeat_s`` (remote configuration may change it): queue,
        quota, CPU, RSS, ASR real-time factor, applied config version, mute."""
        while not self.stop_event.wait(self.remote.heartbeat_s):
            try:
                self.link.publish_status()
                online = "online" if self.link.connected.is_set() else "offline"
                muted = " · muted" if self.remote.muted.is_set() else ""
                held = self.outbox.quarantined_count()
                held_text = f" · {held} quarantined" if held else ""
                failed = f" · {self.outbox.append_failed} not stored (disk)" if self.outbox.append_failed else ""
                self.captions.status(f"{online} · outbox {self.outbox.depth()}{held_text}{failed}{muted}")
            except Exception:  # a heartbeat must never stop the agent
                log.exception("publishing the status failed")

