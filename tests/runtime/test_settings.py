"""The settings base every service stands on: sources and their order, secret files, the log format
and the one models folder."""

from __future__ import annotations

import argparse
import io
import json
import logging
from pathlib import Path

import pytest

from bridge.settings import BridgeSettings
from cloud.settings import CLOUD_MODEL, WorkerSettings
from edge_agent.settings import AgentSettings
from runtime.logs import JsonFormatter
from runtime.service import add_common_options, prepare
from runtime.settings import DEFAULT_MODELS_DIR, ConfigError, models_dir

pytestmark = pytest.mark.usefixtures("restore_logging")  # commands' main() configure logging


def args_of(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_common_options(parser)
    return parser.parse_args(list(argv))


def test_secret_files_fill_nested_settings_and_rank_below_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "EDGECAP_BRIDGE_MQTT__PASSWORD").write_text("from-a-secret")
    (secrets / "EDGECAP_BRIDGE_CLIENT_ID").write_text("bridge-from-secret")
    config = tmp_path / "bridge.toml"
    config.write_text('client_id = "bridge-from-file"\n[mqtt]\nusername = "edgecap-bridge"\n')

    settings = BridgeSettings.load(config, secrets_dir=secrets)
    assert settings.mqtt.secret() == "from-a-secret"
    assert settings.mqtt.username == "edgecap-bridge"  # the TOML file still counts
    assert settings.client_id == "bridge-from-secret"  # a secret file beats the TOML file

    monkeypatch.setenv("EDGECAP_BRIDGE_CLIENT_ID", "bridge-from-env")
    assert BridgeSettings.load(config, secrets_dir=secrets).client_id == "bridge-from-env"


def test_a_missing_secrets_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="secrets directory not found"):
        BridgeSettings.load(secrets_dir=tmp_path / "nowhere")


def test_the_secrets_dir_option_reaches_the_settings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "EDGECAP_WORKER_STORE_URL").write_text("sqlite:////tmp/from-secret.db")
    assert prepare(WorkerSettings, args_of("--secrets-dir", str(tmp_path), "--check-config"), "worker") == 0
    assert json.loads(capsys.readouterr().out)["store_url"] == "sqlite:////tmp/from-secret.db"


def test_log_format_json_is_a_setting_of_each_service(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGECAP_WORKER_LOG_FORMAT", "json")
    settings = prepare(WorkerSettings, args_of(), "worker-test")
    assert isinstance(settings, WorkerSettings) and settings.log_format == "json"
    handlers = logging.getLogger().handlers
    assert handlers and all(isinstance(h.formatter, JsonFormatter) for h in handlers)

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(handlers[0].formatter)
    logging.getLogger("edgecap.test").addHandler(handler)
    try:
        logging.getLogger("edgecap.test").warning("one %s", "line")
    finally:
        logging.getLogger("edgecap.test").removeHandler(handler)
    line = json.loads(stream.getvalue())
    assert (line["service"], line["message"], line["level"]) == ("worker-test", "one line", "WARNING")

    monkeypatch.setenv("EDGECAP_WORKER_LOG_FORMAT", "xml")
    assert prepare(WorkerSettings, args_of(), "worker-test") == 2


def test_one_models_folder_for_every_service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGECAP_MODELS_DIR", raising=False)
    assert models_dir() == DEFAULT_MODELS_DIR
    monkeypatch.setenv("EDGECAP_MODELS_DIR", str(tmp_path))
    assert models_dir() == tmp_path
    agent = AgentSettings.load()
    assert agent.asr.model_dir == tmp_path / "tiny.en" / "onnx-int8"
    assert agent.vad.model_path == tmp_path / "vad" / "silero_vad.onnx"
    assert WorkerSettings.load().model_dir == tmp_path / CLOUD_MODEL  # each engine takes its subfolder


def test_invalid_settings_are_named_one_line_each_and_no_value_is_repeated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGECAP_AGENT_MQTT__PASSWORD", "hunter2-secret")
    monkeypatch.setenv("EDGECAP_AGENT_MQTT__PASSWORD_FILE", "/run/secrets/mqtt")
    monkeypatch.setenv("EDGECAP_AGENT_VAD__AGGRESSIVENESS", "9")
    with pytest.raises(ConfigError) as caught:
        AgentSettings.load()
    message = str(caught.value)
    assert "\n" not in message and "hunter2-secret" not in message
    assert message.startswith("invalid AgentSettings: ")
    assert "vad.aggressiveness: Input should be less than or equal to 3" in message
    assert "set mqtt.password or mqtt.password_file, not both" in message
