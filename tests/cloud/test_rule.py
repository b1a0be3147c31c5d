"""The reconciliation rule, each of its reasons, the word alignment it records and the provenance the
store keeps (pure functions: no broker, no store)."""

from __future__ import annotations

import time

import pytest

from cloud.alignment import align, edits, normalize
from cloud.provenance import provenance
from cloud.rule import FINAL_VERSION, check, compression_ratio, deadline_final, reconcile
from cloud.settings import QualityChecks, WorkerSettings
from contracts import CloudTranscript, Final, Quality, Transcript, TranscriptSegment, Word, decode, encode
from devtools.wer import normalize as wer_normalize

CLOUD_MODEL = "whisper-tiny.en@ct2-int8:1a5afae06a4d"
EDGE_MODEL = "whisper-tiny.en-int8-onnx"
SURE = Quality(avg_logprob=-0.2, no_speech_prob=0.01, compression_ratio=1.1)


def cloud(text: str, quality: Quality | None = SURE, words: list[tuple[str, float]] | None = None) -> CloudTranscript:
    spans = []
    if words is not None:
        spans = [
            TranscriptSegment(
                start=0.0,
                end=float(len(words)),
                text=text,
                words=[Word(word=w, start=i, end=i + 1, probability=p) for i, (w, p) in enumerate(words)],
            )
        ]
    now = time.time()
    return CloudTranscript(
        agent_id="pi-1",
        segment_id="s-1",
        seq=0,
        started_at=now - 3,
        ended_at=now - 1,
        transcript=Transcript(text=text, model_id=CLOUD_MODEL, produced_at=now, quality=quality, segments=spans),
        worker="w",
    )


def test_the_cloud_text_stands_when_it_passes_every_check() -> None:
    final = reconcile(cloud(" The old farmer walked slowly. "), "the old farmer walk slowly")
    assert (final.text, final.source, final.reason, final.version) == (
        "The old farmer walked slowly.",
        "cloud",
        "cloud",
        FINAL_VERSION,
    )
    assert final.draft_text == "the old farmer walk slowly"


def test_without_a_draft_the_cloud_text_stands_unchecked() -> None:
    bad = Quality(avg_logprob=-3.0, no_speech_prob=0.9, compression_ratio=9.0)
    final = reconcile(cloud("la la la la la la la la la la", bad), None)
    assert (final.text, final.source, final.reason) == ("la la la la la la la la la la", "cloud", "no_draft")


@pytest.mark.parametrize(
    ("cloud_text", "quality", "draft", "reason"),
    [
        ("  ", SURE, "turn left at the lights", "cloud_empty"),
        ("...", SURE, "turn left at the lights", "cloud_empty"),  # no words, only punctuation
        ("the the the the the", Quality(avg_logprob=-0.3, no_speech_prob=0.0, compression_ratio=2.5), "the end",
         "compression_ratio"),
        ("Turn left at the lights.", Quality(avg_logprob=-1.2, no_speech_prob=0.2, compression_ratio=1.0),
         "turn left at the lights", "low_logprob"),
        ("Thank you for watching, please subscribe and share this video.", SURE, "yes", "word_count"),  # 10 vs 1
        ("Turn.", SURE, "turn left at the lights and then right at the church", "word_count"),  # 1 vs 11
    ],
)  # fmt: skip
def test_the_draft_stands_when_the_cloud_fails_a_check(
    cloud_text: str, quality: Quality, draft: str, reason: str
) -> None:
    final = reconcile(cloud(cloud_text, quality), f" {draft} ")
    assert (final.text, final.source, final.reason) == (draft, "edge", reason)
    assert final.transcript.text == cloud_text  # the cloud result weighed travels with the final


def test_checks_just_inside_their_thresholds_leave_the_cloud_text() -> None:
    at_limits = Quality(avg_logprob=-1.0, no_speech_prob=0.9, compression_ratio=2.4)  # Whisper: > 2.4, < -1.0
    assert check(cloud("Turn left.", at_limits).transcript, "turn left") == "cloud"
    # word counts: 3 more words than the draft's 1 is short of 4; twice the draft's 8 is not more than twice
    assert check(cloud("yes thank you very").transcript, "yes") == "cloud"
    assert check(cloud(" ".join(["word"] * 16)).transcript, " ".join(["word"] * 8)) == "cloud"
    assert check(cloud(" ".join(["word"] * 17)).transcript, " ".join(["word"] * 8)) == "word_count"
    assert check(cloud("one two three four").transcript, "one two three four five six seven eight") == "cloud"
    assert check(cloud("one two three").transcript, "one two three four five six seven") == "word_count"
    # an empty draft: the cloud's words stand (the word count needs a draft with words)
    assert check(cloud("A whole sentence the device missed entirely.").transcript, "") == "cloud"


def test_thresholds_are_settings() -> None:
    strict = QualityChecks(min_avg_logprob=-0.1)
    final = reconcile(cloud("Turn left."), "turn left", strict)
    assert (final.source, final.reason) == ("edge", "low_logprob")
    settings = WorkerSettings(checks={"max_compression_ratio": 3.0}, final_deadline_s=5)  # type: ignore[arg-type]
    assert settings.checks.max_compression_ratio == 3.0 and settings.checks.min_avg_logprob == -1.0
    assert WorkerSettings().final_deadline_s == 60


def test_compression_ratio_is_computed_when_the_engine_gives_none() -> None:
    loop = " ".join(["I'm going to the store."] * 12)
    assert compression_ratio(loop) > 2.4 > compression_ratio("I'm going to the store to buy milk.")
    final = reconcile(cloud(loop, quality=None), "i'm going to the store")
    assert (final.source, final.reason) == ("edge", "compression_ratio")
    assert reconcile(cloud("Going to the store.", quality=None), "going to the store").reason == "cloud"


def test_a_final_with_a_reason_round_trips_and_old_finals_decode() -> None:
    final = reconcile(cloud("Hello."), "hello")
    assert decode(encode(final), Final) == final
    old = encode(final).replace(b',"reason":"cloud"', b"")
    assert b"reason" not in old and decode(old, Final).reason is None


def test_deadline_final_is_the_draft() -> None:
    draft = Transcript(text=" turn left ", model_id=EDGE_MODEL, produced_at=time.time())
    header = cloud("x").header()
    final = deadline_final(header, draft)
    assert (final.text, final.source, final.reason, final.version, final.draft_text) == (
        "turn left",
        "edge",
        "deadline",
        FINAL_VERSION,
        "turn left",
    )
    assert final.transcript.model_id == EDGE_MODEL and final.header() == header


def test_normalization_is_the_one_wer_uses() -> None:
    for text in ("Hello, World!", "Don't  stop — it's well-known.", "‘quoted’ words_here", "Ünïcode ﬁ ligature"):
        assert normalize(text) == wer_normalize(text)


def test_alignment_pairs_words_with_their_operation() -> None:
    pairs = align("the old farmer walk slowly home", "The old farmer walked, slowly.")
    assert [(p["draft"], p["cloud"], p["op"]) for p in pairs] == [
        ("the", "the", "equal"),
        ("old", "old", "equal"),
        ("farmer", "farmer", "equal"),
        ("walk", "walked", "substitute"),
        ("slowly", "slowly", "equal"),
        ("home", None, "delete"),
    ]
    assert edits(pairs) == 2
    assert [p["op"] for p in align("", "two words")] == ["insert", "insert"]
    assert [p["op"] for p in align("two words", "")] == ["delete", "delete"]
    assert align("", "") == []


def test_provenance_of_a_cloud_final() -> None:
    final = reconcile(cloud("Turn left now.", words=[(" Turn", 0.9), (" left", 0.8), (" now.", 0.4)]), "turn right now")
    made = provenance(final, "turn right now", EDGE_MODEL)
    assert made.words == [
        {"word": "Turn", "model_id": CLOUD_MODEL, "probability": 0.9},
        {"word": "left", "model_id": CLOUD_MODEL, "probability": 0.8},
        {"word": "now.", "model_id": CLOUD_MODEL, "probability": 0.4},
    ]
    assert made.alignment is not None and [p["op"] for p in made.alignment] == ["equal", "substitute", "equal"]
    assert (made.edits, made.final_words, made.disagreement) == (1, 3, pytest.approx(1 / 3))


def test_provenance_of_a_standing_draft_and_of_a_deadline_final() -> None:
    final = reconcile(cloud("", words=None), "turn left")
    made = provenance(final, "turn left", EDGE_MODEL)
    assert made.words == [
        {"word": "turn", "model_id": EDGE_MODEL, "probability": None},
        {"word": "left", "model_id": EDGE_MODEL, "probability": None},
    ]
    assert made.alignment is not None and [p["op"] for p in made.alignment] == ["delete", "delete"]
    assert (made.edits, made.final_words, made.disagreement) == (0, 2, 0.0)  # the final is the draft

    draft = Transcript(text="turn left", model_id=EDGE_MODEL, produced_at=time.time())
    late = provenance(deadline_final(cloud("x").header(), draft), "turn left", EDGE_MODEL)
    assert (late.alignment, late.edits, late.disagreement) == (None, None, None)  # no cloud text weighed yet
    assert [w["model_id"] for w in late.words] == [EDGE_MODEL, EDGE_MODEL]

    empty = provenance(reconcile(cloud("Hello."), ""), "", EDGE_MODEL)  # the draft heard nothing
    assert (empty.edits, empty.final_words, empty.disagreement) == (1, 1, 1.0)
