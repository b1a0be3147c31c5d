"""``edgecap config set AGENT_ID …``: change settings of a running agent from the cloud.

    edgecap config set pi-kitchen --muted true
    edgecap config set pi-kitchen --heartbeat-s 5 --log-level DEBUG --kafka kafka-0:9092

The command produces one :class:`~contracts.AgentConfig` to ``edgecap.config``, keyed by the agent
id (one agent's configurations stay in order), and returns once Kafka confirmed it. The bridge
publishes it retained on the agent's ``config`` topic; the agent applies it if its ``version`` is
newer than the last one it applied. The version defaults to the time in microseconds, so it grows
across operators and restarts; ``--version`` sets it. Kafka comes from ``EDGECAP_CONFIG_KAFKA__…``
variables (``BOOTSTRAP_SERVERS``, ``EXTRA`` for TLS/SASL), a secrets directory (``--secrets-dir``)
or a TOML file (``--config``), like every service's settings; ``--kafka`` overrides the servers and
``--check-config`` shows the settings without sending anything. Building and sending a configuration
live in :mod:`cloud.agent_config`, shared with the dashboard (``POST /api/agents/{agent_id}/config``).
"""

from __future__ import annotations

import argparse
import logging
import sys

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from cloud.agent_config import LOG_LEVELS, ConfigNotSent, ConfigRefused, new_config, send_config
from contracts import encode
from runtime.service import add_common_options, prepare
from runtime.settings import KafkaSettings, ServiceSettings

log = logging.getLogger(__name__)


class ConfigCommandSettings(ServiceSettings):
    """Settings of ``edgecap config`` (env prefix ``EDGECAP_CONFIG_``)."""

    model_config = SettingsConfigDict(env_prefix="EDGECAP_CONFIG_", extra="forbid", env_nested_delimiter="__")

    kafka: KafkaSettings = Field(
        default_factory=lambda: KafkaSettings.model_validate({"client_id": "edgecap-config"}),
        description="Kafka connection.",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgecap config", description="Change settings of running agents.")
    sub = parser.add_subparsers(dest="command", required=True)
    set_ = sub.add_parser(
        "set", help="send settings to one agent", description="Send settings to one agent; unset ones stay as they are."
    )
    set_.add_argument("agent_id", metavar="AGENT_ID")
    set_.add_argument("--muted", choices=("true", "false"), help="privacy mute: nothing is captioned or sent")
    set_.add_argument("--heartbeat-s", type=float, help="status heartbeat interval in seconds (0 < s <= 3600)")
    set_.add_argument("--vad-aggressiveness", type=int, help="webrtcvad mode 0-3 (the silero engine ignores it)")
    set_.add_argument("--log-level", choices=LOG_LEVELS, type=str.upper, help="the agent's log level")
    set_.add_argument("--version", type=int, help="configuration version (default: the time in microseconds)")
    set_.add_argument("--kafka", metavar="HOST:PORT", help="Kafka bootstrap servers (default: from the settings)")
    set_.add_argument("--timeout-s", type=float, default=10.0, help="how long to wait for Kafka's confirmation")
    add_common_options(set_)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    def kafka_option(settings: ConfigCommandSettings) -> ConfigCommandSettings:
        """``--kafka`` replaces the bootstrap servers of the settings."""
        if not args.kafka:
            return settings
        kafka = settings.kafka.model_copy(update={"bootstrap_servers": args.kafka})
        return settings.model_copy(update={"kafka": kafka})

    settings = prepare(ConfigCommandSettings, args, "config", kafka_option)
    if isinstance(settings, int):
        return settings
    changes = {
        "muted": None if args.muted is None else args.muted == "true",
        "heartbeat_s": args.heartbeat_s,
        "vad_aggressiveness": args.vad_aggressiveness,
        "log_level": args.log_level,
    }
    if all(value is None for value in changes.values()):
        sys.stderr.write(
            "edgecap config set: nothing to set: give --muted, --heartbeat-s, --vad-aggressiveness or --log-level\n"
        )
        return 2
    try:
        config = new_config(args.agent_id, changes, version=args.version)
    except ConfigRefused as exc:
        sys.stderr.write(f"edgecap config set: {exc.detail}\n")
        return 2
    try:
        send_config(settings.kafka, config, timeout_s=args.timeout_s)
    except ConfigNotSent as exc:
        log.error("%s", exc)
        return 1
    sys.stdout.write(encode(config).decode("utf-8") + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
