"""Local captions: terminal (plain and live), SRT, WebVTT and JSONL, finals replacing drafts in place."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest
from support import wait_until

from contracts import Final, Transcript
from edge_agent.captions import CaptionError, CaptionSink, srt_time, vtt_time
from edge_agent.captions.terminal import CLEAR_LINE, DRAFT_STYLE, STATUS_STYLE


def transcript(text: str, at: float, model: str = "whisper-tiny.en-int8-onnx") -> Transcript:
    return Transcript(text=text, model_id=model, produced_at=at)


def final_for(segment_id: str, seq: int, start: float, end: float, text: str, version: int = 2) -> Final:
    return Final(agent_id="pi", segment_id=segment_id, seq=seq, started_at=start, ended_at=end, text=text,
                 source="cloud", version=version, transcript=transcript(text, end + 3.0, "whisper-large-v3"))


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_srt_and_vtt_times() -> None:
    assert srt_time(0) == "00:00:00,000"
    assert srt_time(3725.5) == "01:02:05,500"
    assert vtt_time(3725.5) == "01:02:05.500"
    assert vtt_time(-1.0) == "00:00:00.000" and vtt_time(0.0004) == "00:00:00.000"


def test_srt_and_vtt_exact_rendering(tmp_path: Path) -> None:
    sink = CaptionSink(tmp_path, terminal=False, origin=1000.0, write_interval_s=0)
    sink.draft("seg-b", 1, 1002.25, 1004.0, transcript("x --> y  and\n<b>fish & chips</b>", 1004.2))
    sink.draft("seg-a", 0, 1000.5, 1001.75, transcript(" Hello world. ", 1001.9))
    sink.draft("seg-c", 2, 3725.0, 3726.0, transcript("   ", 3726.1))  # nothing said: no cue
    sink.close()
    assert sink.srt_path.read_text(encoding="utf-8") == (
        "1\n00:00:00,500 --> 00:00:01,750\nHello world.\n\n"
        "2\n00:00:02,250 --> 00:00:04,000\nx -> y and <b>fish & chips</b>\n\n"
    )
    assert sink.vtt_path.read_text(encoding="utf-8") == (
        "WEBVTT\n\n"
        "seg-a\n00:00:00.500 --> 00:00:01.750\nHello world.\n\n"
        "seg-b\n00:00:02.250 --> 00:00:04.000\nx --&gt; y and &lt;b&gt;fish &amp; chips&lt;/b&gt;\n\n"
    )
    # the JSONL keeps every caption, the empty one included, in time order
    assert [r["segment_id"] for r in records(sink.jsonl_path)] == ["seg-a", "seg-b", "seg-c"]


def test_final_replaces_draft_in_place(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sink = CaptionSink(tmp_path, origin=100.0)
    sink.draft("a", 0, 100.5, 101.5, transcript(" helo wrld", 102.0))
    sink.draft("b", 1, 102.0, 103.0, transcript("second", 103.2))
    sink.flush()
    assert "helo wrld" in sink.srt_path.read_text()
    assert sink.final(final_for("a", 0, 100.5, 101.5, "Hello world."))
    sink.close()
    srt = sink.srt_path.read_text()
    assert "Hello world." in srt and "helo wrld" not in srt and "second" in srt
    assert srt.startswith("1\n00:00:00,500 --> 00:00:01,500\nHello world.\n")
    out = capsys.readouterr().out  # not a TTY: plain appended lines
    assert out.splitlines() == ["[00:00:00] (draft) helo wrld", "[00:00:02] (draft) second",
                                "[00:00:00] (final) Hello world."]


def test_draft_update_then_final_in_all_three_files(tmp_path: Path) -> None:
    sink = CaptionSink(tmp_path, terminal=False, origin=0.0, write_interval_s=0)
    sink.draft("s1", 7, 10.0, 12.0, transcript("the quick", 12.1))  # early draft on a pause
    shown_at = records(sink.jsonl_path)[0]["shown_at"]
    sink.draft("s1", 7, 10.0, 14.0, transcript("the quick brown fox", 14.1))  # the whole utterance
    (record,) = records(sink.jsonl_path)
    assert (record["text"], record["version"], record["source"], record["ended_at"]) == (
        "the quick brown fox", 1, "edge", 14.0)
    assert record["shown_at"] == shown_at and len(record["versions"]) == 1
    assert "00:00:10.000 --> 00:00:14.000\nthe quick brown fox" in sink.vtt_path.read_text()

    assert sink.final(final_for("s1", 7, 10.0, 14.0, "The quick brown fox."))
    (record,) = records(sink.jsonl_path)  # still one line: replaced in place
    assert (record["text"], record["version"], record["source"]) == ("The quick brown fox.", 2, "cloud")
    draft, cloud = record["versions"]
    assert draft == {"version": 1, "source": "edge", "text": "the quick brown fox",
                     "model_id": "whisper-tiny.en-int8-onnx", "produced_at": 14.1}
    assert (cloud["version"], cloud["source"], cloud["text"], cloud["model_id"], cloud["produced_at"]) == (
        2, "cloud", "The quick brown fox.", "whisper-large-v3", 17.0)
    assert cloud["received_at"] >= shown_at
    assert sink.srt_path.read_text() == "1\n00:00:10,000 --> 00:00:14,000\nThe quick brown fox.\n\n"
    assert sink.vtt_path.read_text() == "WEBVTT\n\ns1\n00:00:10.000 --> 00:00:14.000\nThe quick brown fox.\n\n"
    sink.close()
    events = records(sink.events_path)  # the append-only log keeps the whole history
    assert [(e["event"], e["version"], e["text"]) for e in events] == [
        ("draft", 1, "the quick"), ("draft", 1, "the quick brown fox"), ("final", 2, "The quick brown fox.")]
    assert not list(tmp_path.glob(".*.tmp"))


def test_final_after_a_restart_replaces_the_draft_from_before(tmp_path: Path) -> None:
    first = CaptionSink(tmp_path, terminal=False)
    first.draft("old-1", 0, 500.0, 502.0, transcript("before the crash", 502.1))
    first.draft("old-2", 1, 503.0, 504.0, transcript("also before", 504.1))
    first.close()
    srt_before = first.srt_path.read_text()
    with first.jsonl_path.open("a") as f:
        f.write('{"not": "a caption"}\nnot json at all\n')  # damage: counted and skipped

    second = CaptionSink(tmp_path, terminal=False, write_interval_s=0)
    assert len(second) == 2 and second.counters["bad_records"] == 2 and second.origin == 500.0
    assert second.final(final_for("old-1", 0, 500.0, 502.0, "Before the crash."))
    second.draft("new-1", 2, 600.0, 601.0, transcript("after the restart", 601.1))
    second.close()
    srt = second.srt_path.read_text()
    assert srt.startswith(srt_before.split("before the crash")[0])  # same numbering and times as before
    assert "Before the crash." in srt and "before the crash" not in srt and "00:01:40,000" in srt
    by_id = {r["segment_id"]: r for r in records(second.jsonl_path)}
    assert list(by_id) == ["old-1", "old-2", "new-1"]
    assert [v["text"] for v in by_id["old-1"]["versions"]] == ["before the crash", "Before the crash."]


def test_bad_finals_and_directories_never_crash(tmp_path: Path) -> None:
    sink = CaptionSink(tmp_path / "c", terminal=False, origin=0.0, write_interval_s=0)
    sink.draft("s", 0, 1.0, 2.0, transcript("draft", 2.1))
    assert not sink.final(final_for("never-seen", 9, 1.0, 2.0, "who?"))
    assert sink.final(final_for("s", 0, 1.0, 2.0, "version three", version=3))
    assert sink.final(final_for("s", 0, 1.0, 2.0, "older version two", version=2))  # lower: ignored
    assert sink.final(final_for("s", 0, 1.0, 2.0, "version three", version=3))  # at-least-once repeat
    assert sink.get("s").text == "version three"  # type: ignore[union-attr]
    assert (sink.counters["finals_unknown"], sink.counters["finals_stale"], sink.counters["finals_duplicate"],
            sink.counters["finals"]) == (1, 1, 1, 1)
    assert [v["version"] for v in records(sink.jsonl_path)[0]["versions"]] == [1, 3]

    # The directory vanishes under a running sink: counted, kept in memory, written once it is back.
    for p in (tmp_path / "c").iterdir():
        p.unlink()
    (tmp_path / "c").rmdir()
    sink.draft("t", 1, 3.0, 4.0, transcript("while the disk is gone", 4.1))
    assert sink.counters["write_errors"] >= 1
    (tmp_path / "c").mkdir()
    sink.flush()
    assert [r["segment_id"] for r in records(sink.jsonl_path)] == ["s", "t"]
    sink.close()

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(CaptionError, match="not writable"):
        CaptionSink(blocker / "captions")


def test_bursts_are_coalesced_and_written_without_close(tmp_path: Path) -> None:
    sink = CaptionSink(tmp_path, terminal=False, origin=0.0, write_interval_s=0.3)
    sink.draft("a", 0, 1.0, 2.0, transcript("first", 2.1))  # idle before: written at once
    sink.draft("b", 1, 3.0, 4.0, transcript("second", 4.1))  # within the interval: deferred
    assert [r["segment_id"] for r in records(sink.jsonl_path)] == ["a"]
    wait_until(lambda: len(records(sink.jsonl_path)) >= 2, 5, "the deferred write")
    assert [r["segment_id"] for r in records(sink.jsonl_path)] == ["a", "b"]
    sink.flush()  # waits for the timer's write to finish; nothing left to write
    assert sink.counters["writes"] == 2
    sink.close()


def test_thousands_of_captions_then_their_finals(tmp_path: Path) -> None:
    n = 5000
    sink = CaptionSink(tmp_path, terminal=False, origin=0.0)
    t0 = time.perf_counter()
    for i in range(n):
        sink.draft(f"seg-{i:05d}", i, 3.0 * i, 3.0 * i + 2.5,
                   transcript(f"draft number {i} of a long session with some words", 3.0 * i + 2.6))
    t1 = time.perf_counter()
    for i in range(n):
        assert sink.final(final_for(f"seg-{i:05d}", i, 3.0 * i, 3.0 * i + 2.5, f"Final number {i}."))
    sink.flush()
    t2 = time.perf_counter()
    sink.draft("seg-04999", n - 1, 3.0 * n, 3.0 * n + 2.5, transcript("one more change", 3.0 * n + 3))
    sink.flush()  # what one rewrite of all three files costs at this size
    t3 = time.perf_counter()
    sink.close()
    print(f"\n{n} drafts {t1 - t0:.2f} s, {n} finals {t2 - t1:.2f} s ({sink.counters['writes']} rewrites in all), "
          f"one rewrite of {n} captions {1000 * (t3 - t2):.0f} ms, jsonl {sink.jsonl_path.stat().st_size / 1e6:.1f} MB")
    rows = records(sink.jsonl_path)
    assert len(rows) == n and all(r["version"] == 2 and len(r["versions"]) == 2 for r in rows)
    assert sink.srt_path.read_text().count(" --> ") == n
    assert sink.vtt_path.read_text().rstrip().endswith("Final number 4999.")


def test_live_view_on_a_tty(tmp_path: Path) -> None:
    tty = FakeTty()
    sink = CaptionSink(tmp_path, stream=tty, origin=0.0, live_lines=2)
    sink.draft("a", 0, 1.0, 2.0, transcript("first draft", 2.1))
    first = tty.getvalue()
    assert first.startswith("\r") and "\x1b[" + "1A" not in first  # nothing drawn yet: nothing to go up over
    assert f"{CLEAR_LINE}{DRAFT_STYLE}[00:00:01] first draft\x1b[0m\n" in first

    sink.draft("b", 1, 5.0, 6.0, transcript("second draft", 6.1))
    sink.status("online · queue 1")
    mark = len(tty.getvalue())
    sink.final(final_for("a", 0, 1.0, 2.0, "First final."))
    redraw = tty.getvalue()[mark:]
    # back up over the three rows drawn (two captions + status), redraw them, clear what is below
    assert redraw.startswith("\r\x1b[3A") and redraw.endswith("\x1b[J")
    rows = redraw[len("\r\x1b[3A"):-len("\x1b[J")].split("\n")
    assert rows == [f"{CLEAR_LINE}[00:00:01] First final.",  # the final, in normal type, in place
                    f"{CLEAR_LINE}{DRAFT_STYLE}[00:00:05] second draft\x1b[0m",
                    f"{CLEAR_LINE}{STATUS_STYLE}online · queue 1\x1b[0m", ""]

    sink.draft("c", 2, 9.0, 10.0, transcript("third", 10.1))  # only the last two captions stay
    last = tty.getvalue().rsplit("\r", 1)[1]
    assert "First final." not in last and "second draft" in last and "third" in last
    sink.close()
    assert "(draft)" not in tty.getvalue()  # the plain format is for pipes and logs only
