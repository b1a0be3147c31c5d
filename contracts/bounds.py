"""The limits of every wire message's fields, in one place.

A message that decodes must be storable as it is, in SQLite and in PostgreSQL, and must make sense
to its receiver: integers fit a signed 64-bit column, texts fit their columns and hold no NUL
(PostgreSQL's ``text`` cannot), lists and strings have a length a service can afford, times lie in
a window around the receiver's clock. :mod:`contracts.messages` applies these limits to the fields
(they appear in the JSON schema) and :func:`contracts.decode` refuses anything beyond them with
:attr:`~contracts.Reason.INVALID`, naming the field and the limit. The store's column types
(:mod:`cloud.store`) are sized from the same numbers.
"""

from __future__ import annotations

MAX_INT = 2**63 - 1
"""Largest integer of any field (``seq``, versions, counts): a signed 64-bit integer, what both
SQLite's ``INTEGER`` and PostgreSQL's ``BIGINT`` hold."""

EARLIEST_TIME = 0.0
"""The earliest time a message may carry: the Unix epoch. Fixed, not relative to the receiver's
clock, because records are re-read from Kafka long after they were written. Not a calendar date
either (such as 2020-01-01): a device whose clock was never set (no RTC, no network yet) still
captures real speech, and its captions are kept and sort last rather than being refused."""

FUTURE_MARGIN_S = 86_400.0
"""How far past the receiver's clock a time may lie (one day), checked when a message is built or
decoded. It tolerates clocks that are wrong by a time zone (up to 14 h) and refuses years ahead,
which would sort a device's captions above every other one for good."""

MAX_TEXT_CHARS = 10_000
"""A caption's text (a transcript, a span of it, a final, a draft). Whisper writes at most 448
tokens per 30 s window, a few thousand characters at most."""

MAX_WORD_CHARS = 200
"""One word of a transcript."""

MAX_NAME_CHARS = 200
"""A model id or a worker name (the store's ``model_id`` columns are this long)."""

MAX_LANGUAGE_CHARS = 35
"""A language tag (``en``, ``zh-Hant-TW``): the length RFC 5646 asks every implementation to hold."""

MAX_DETAIL_CHARS = 1_000
"""The human sentence of a refusal (a receipt's rejection, a dead letter); longer ones are cut."""

MAX_SOURCE_CHARS = 1_000
"""Where a dead letter came from (an MQTT or Kafka topic, or the key it was read under)."""

MAX_WORDS = 2_000
"""Words of one transcript span."""

MAX_SPANS = 1_000
"""Spans (segments) of one transcript."""

MAX_RECEIPT_IDS = 10_000
"""Segment ids in one receipt, accepted and rejected each (the bridge sends one at 100 by default)."""

SAMPLE_RATES_HZ = (8_000, 48_000)
"""Lowest and highest audio sample rate (the bridge narrows it to its configured rates)."""

MAX_CHANNELS = 2
"""Audio channels: mono or stereo."""

AUDIO_CODECS = ("opus", "flac", "pcm_s16le")
"""Audio codecs of a segment: Opus in Ogg, FLAC, raw PCM16 little-endian (the default, for old
producers)."""

OPUS_SAMPLE_RATES_HZ = (8_000, 12_000, 16_000, 24_000, 48_000)
"""The only sample rates Opus encodes and decodes natively."""

MAX_AUDIO_SAMPLES = 48_000 * 600
"""Samples per channel a segment's audio may declare (``samples``): ten minutes at the highest
rate (the bridge narrows the duration to its ``max_audio_s``)."""

MAX_IMAGE_SIDE = 8_192
"""Pixels on either side of an image (the bridge narrows it further)."""

MAX_SITE_CHARS = 64
"""A device's site name."""

MAX_REGIONS = 64
"""Motion regions of one frame (the agent merges more into fewer)."""

MAX_BOXES = 1_000
"""Detections in one frame."""

NO_NUL = r"^[^\x00]*$"
"""Pattern of every free text: anything but NUL, which PostgreSQL's ``text`` cannot store."""


def clip(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters (marked with an ellipsis) and without NUL: how
    a service fits a sentence it did not write (an exception, a topic) into a bounded field."""
    text = text.replace("\x00", "\\x00")
    return text if len(text) <= limit else text[: limit - 1] + "…"
