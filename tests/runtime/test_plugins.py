"""One plugin pattern for every kind (VAD engines, edge ASR, cloud ASR): a registry by ``type_key``,
names checked by the settings, so ``--check-config`` refuses a misspelt engine and lists the known ones."""

from __future__ import annotations

import subprocess
import sys

import pytest
from support import REPO

from runtime.plugins import MissingPackage, Registry, UnknownPlugin, require

pytestmark = pytest.mark.usefixtures("restore_logging")  # commands' main() configure logging


class Engine:
    type_key = ""


def test_a_registry_lists_checks_and_returns_its_plugins() -> None:
    engines: Registry[Engine] = Registry("test engine")

    @engines.register
    class Fast(Engine):
        type_key = "fast"

    @engines.register
    class Accurate(Engine):
        type_key = "accurate"

    assert engines.names() == ["accurate", "fast"] and list(engines) == ["accurate", "fast"] and len(engines) == 2
    assert engines.get("fast") is Fast and "accurate" in engines and "slow" not in engines
    assert engines.check("accurate") == "accurate"
    with pytest.raises(UnknownPlugin, match=r"^unknown test engine 'slow'; known: accurate, fast$"):
        engines.get("slow")


def test_a_duplicate_or_missing_type_key_is_refused() -> None:
    engines: Registry[Engine] = Registry("test engine")

    @engines.register
    class First(Engine):
        type_key = "same"

    class Second(Engine):
        type_key = "same"

    with pytest.raises(ValueError, match="two test engines claim type_key 'same': First, Second"):
        engines.register(Second)
    assert engines.get("same") is First
    with pytest.raises(TypeError, match="Nameless has no type_key"):
        engines.register(type("Nameless", (Engine,), {}))


def test_a_missing_package_names_the_extra_to_install() -> None:
    with pytest.raises(MissingPackage, match=r"pip install 'edgecap\[edge\]'"):
        require("edgecap_no_such_package", "edge", "the test engine")


def test_every_kind_registers_its_engines() -> None:
    from cloud.asr import ENGINES as CLOUD_ASR
    from cloud.asr import TranscriptionEngine
    from edge_agent.asr import ENGINES as EDGE_ASR
    from edge_agent.asr import OnnxWhisper, SpeechRecognizer
    from edge_agent.vad import ENGINES as VAD
    from edge_agent.vad import Segmenter, SileroSegmenter, WebrtcSegmenter

    assert VAD.names() == ["silero", "webrtc"]
    assert VAD.get("webrtc") is WebrtcSegmenter and VAD.get("silero") is SileroSegmenter
    assert EDGE_ASR.names() == ["onnx"] and EDGE_ASR.get("onnx") is OnnxWhisper
    assert CLOUD_ASR.names() == ["ctranslate2", "transformers"]
    for registry, base in ((VAD, Segmenter), (EDGE_ASR, SpeechRecognizer), (CLOUD_ASR, TranscriptionEngine)):
        for name in registry:
            assert issubclass(registry.get(name), base) and registry.get(name).type_key == name


def test_listing_the_engines_imports_no_inference_package() -> None:
    code = """
import sys
import cloud.asr, edge_agent.asr, edge_agent.vad
inference = {"torch", "transformers", "onnxruntime", "tokenizers", "webrtcvad", "ctranslate2", "faster_whisper"}
heavy = sorted({m.split(".")[0] for m in sys.modules} & inference)
assert not heavy, heavy
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr + result.stdout


@pytest.mark.parametrize(
    ("variable", "value", "known"),
    [
        ("EDGECAP_AGENT_VAD__ENGINE", "webrtcc", "unknown VAD engine 'webrtcc'; known: silero, webrtc"),
        ("EDGECAP_AGENT_ASR__ENGINE", "onx", "unknown ASR engine 'onx'; known: onnx"),
    ],
)
def test_agent_check_config_refuses_an_unknown_engine(
    variable: str, value: str, known: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from edge_agent.__main__ import main

    assert main(["--check-config"]) == 0
    capsys.readouterr()
    monkeypatch.setenv(variable, value)
    assert main(["--check-config"]) == 2
    captured = capsys.readouterr()
    assert known in captured.err and "Traceback" not in captured.err and captured.out == ""


def test_worker_check_config_refuses_an_unknown_engine(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from cloud.__main__ import main

    monkeypatch.setenv("EDGECAP_WORKER_ENGINE", "transformer")
    assert main(["transcribe", "--check-config"]) == 2
    captured = capsys.readouterr()
    assert "unknown transcription engine 'transformer'; known: ctranslate2, transformers" in captured.err
    assert "Traceback" not in captured.err and captured.out == ""
