"""The edge agent's lifecycle, top to bottom: capture → VAD → local ASR → captions → outbox → MQTT.

Capture runs in its own thread and only feeds the VAD, so inference never holds up the audio:
finished utterances go through an unbounded queue to the ASR thread, which shows the draft at once
and commits segment + draft to the outbox; the MQTT link drains the outbox whenever it can.
"""

from __future__ import annotations

import logging
import queue
import threading

import numpy as np

from contracts import Audio, Final, Segment, Up, encode, mqtt_topic, new_segment_id
from edge_agent.asr import ENGINES as ASR_ENGINES
from edge_agent.captions import CaptionSink
from edge_agent.capture import SAMPLE_RATE, FileSource
from edge_agent.link import MqttLink
from edge_agent.outbox import Outbox
from edge_agent.settings import AgentSettings
from edge_agent.vad import VAD_ENGINES, SpeechSegment

log = logging.getLogger(__name__)

_END = object()


class Agent:
    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.stop_event = threading.Event()
        self.input_done = threading.Event()
        self._segments: queue.Queue[object] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self.captioned = 0

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        s = self.settings
        if s.input.file is None:
            raise ValueError("no input: set input.file (microphone capture arrives with the agent issue)")
        self.source = FileSource(s.input.file, realtime=s.input.realtime, chunk_ms=s.input.chunk_ms)
        vad_cls = VAD_ENGINES[s.vad.engine]
        self.vad = vad_cls(
            sample_rate=SAMPLE_RATE,
            aggressiveness=s.vad.aggressiveness,
            pre_roll_ms=s.vad.pre_roll_ms,
            hangover_ms=s.vad.hangover_ms,
            min_speech_ms=s.vad.min_speech_ms,
            max_segment_s=s.vad.max_segment_s,
        )
        self.asr = ASR_ENGINES[s.asr.engine](s.asr.model_dir, threads=s.asr.threads, language=s.asr.language)
        self.asr.warmup()
        self.captions = CaptionSink(s.captions.dir, terminal=s.captions.terminal)
        self.outbox = Outbox(s.outbox.path)
        self.link = MqttLink(
            s.agent_id,
            s.mqtt,
            self.outbox,
            on_final=self._on_final,
            resend_after_s=s.outbox.resend_after_s,
            max_in_flight=s.outbox.max_in_flight,
        )
        self.link.start()
        self._spawn("asr", self._asr_loop)
        self._spawn("capture", self._capture_loop)
        self._spawn("heartbeat", self._heartbeat_loop)
        log.info("agent %s started (outbox depth %d)", s.agent_id, self.outbox.depth())

    def stop(self) -> None:
        self.stop_event.set()
        self._segments.put(_END)
        for thread in reversed(self._threads):
            thread.join(10)
        self.link.stop()
        self.outbox.close()
        log.info("agent stopped: %d captioned, link %s", self.captioned, dict(self.link.counters))

    def drained(self) -> bool:
        """Input finished, every utterance captioned, and every segment receipted."""
        return self.input_done.is_set() and self._segments.empty() and self.outbox.depth() == 0

    def _spawn(self, name: str, target: object) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)  # type: ignore[arg-type]
        thread.start()
        self._threads.append(thread)

    # --- threads ----------------------------------------------------------------------------

    def _capture_loop(self) -> None:
        for pcm, t0 in self.source.chunks(self.stop_event):
            for segment in self.vad.feed(pcm, t0):
                self._segments.put(segment)
        for segment in self.vad.flush():
            self._segments.put(segment)
        self._segments.put(_END)
        log.info("input finished")

    def _asr_loop(self) -> None:
        while True:
            item = self._segments.get()
            if item is _END:
                self.input_done.set()
                return
            assert isinstance(item, SpeechSegment)
            try:
                self._caption(item)
            except Exception:  # one bad segment must not stop captioning
                log.exception("captioning a segment failed; it is kept without a draft")
                self._commit(item, None)

    def _caption(self, speech: SpeechSegment) -> None:
        audio = np.frombuffer(speech.pcm, dtype=np.int16).astype(np.float32) / 32768.0
        draft = self.asr.transcribe(audio)
        seq, segment_id = self._commit(speech, draft)
        self.captions.draft(segment_id, seq, speech.started_at, speech.ended_at, draft)
        self.captioned += 1

    def _commit(self, speech: SpeechSegment, draft: object) -> tuple[int, str]:
        segment_id = new_segment_id()
        agent_id = self.settings.agent_id

        def build(seq: int) -> bytes:
            return encode(
                Segment(
                    agent_id=agent_id,
                    segment_id=segment_id,
                    seq=seq,
                    started_at=speech.started_at,
                    ended_at=speech.ended_at,
                    audio=Audio(sample_rate=SAMPLE_RATE, data=speech.pcm),
                    draft=draft,  # type: ignore[arg-type]
                )
            )

        seq = self.outbox.append(segment_id, mqtt_topic(agent_id, Up.SEGMENTS), build)
        self.link.notify()
        return seq, segment_id

    def _on_final(self, final: Final) -> None:
        self.captions.final(final)

    def _heartbeat_loop(self) -> None:
        while not self.stop_event.wait(self.settings.heartbeat_s):
            self.link.publish_status()

