"""Local captions: shown the moment a draft exists, whether or not a network does.

Outputs, all in one directory: the terminal (a live view redrawn in place on a TTY, plain lines
elsewhere), ``captions.srt``, ``captions.vtt`` and ``captions.jsonl`` (one record per caption with
every version), each rewritten atomically so a final replaces its draft in place, and the
append-only ``captions.events.jsonl``.
"""

from contracts.subtitles import srt_time, vtt_time
from edge_agent.captions.caption import Caption, Version
from edge_agent.captions.files import CaptionError
from edge_agent.captions.sink import CaptionSink

__all__ = ["Caption", "CaptionError", "CaptionSink", "Version", "srt_time", "vtt_time"]
