"""The settings base every service builds its one settings object on, and shared connection groups.

A service's settings come from, highest priority first: keyword overrides, environment variables
(``EDGECAP_<SERVICE>_…``, nested groups joined by ``__``, e.g. ``EDGECAP_AGENT_MQTT__PORT``),
files in a secrets directory given with ``--secrets-dir`` (one file per setting, named like its
environment variable, e.g. ``EDGECAP_BRIDGE_MQTT__PASSWORD``: how a Kubernetes Secret is mounted),
and a TOML file given with ``--config``. Unknown keys are errors. Nothing else in edgecap reads the
environment: a value a process needs comes through its settings object.

Where prepared models live has one default for every process (services, tools, tests, benchmarks):
:func:`models_dir`, ``~/.cache/edgecap/models`` unless ``EDGECAP_MODELS_DIR`` says otherwise.
"""

from __future__ import annotations

import contextvars
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    NestedSecretsSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

_CONFIG_FILE: contextvars.ContextVar[Path | None] = contextvars.ContextVar("edgecap_config", default=None)
_SECRETS_DIR: contextvars.ContextVar[Path | None] = contextvars.ContextVar("edgecap_secrets", default=None)


class ConfigError(ValueError):
    """Settings that cannot be loaded or are invalid; the message says which and why."""


class Group(BaseModel):
    """A nested settings group."""

    model_config = ConfigDict(extra="forbid")


class MqttSettings(Group):
    """How to reach the MQTT broker."""

    host: str = Field("127.0.0.1", description="Broker host name or address.")
    port: int = Field(1883, ge=1, le=65535, description="Broker port.")
    username: str | None = Field(None, description="User name; an agent's must equal its agent_id.")
    password: SecretStr | None = Field(None, description="Password, if the broker asks for one.")
    password_file: Path | None = Field(None, description="A file holding the password (e.g. a mounted secret).")
    keepalive_s: int = Field(30, ge=5, description="MQTT keep-alive interval in seconds.")
    session_expiry_s: int = Field(
        7 * 24 * 3600, ge=0, description="How long the broker keeps a persistent session offline."
    )
    tls: bool = Field(False, description="Connect with TLS.")
    ca_file: Path | None = Field(None, description="CA certificate(s) to trust (unset: the system's CAs).")
    cert_file: Path | None = Field(None, description="Client certificate (PEM); an agent's CN must equal its agent_id.")
    key_file: Path | None = Field(None, description="Private key of the client certificate (PEM).")
    tls_insecure: bool = Field(False, description="Skip the server host name check (the chain is still checked).")

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.password is not None and self.password_file is not None:
            raise ValueError("set mqtt.password or mqtt.password_file, not both")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("mqtt.cert_file and mqtt.key_file go together")
        if not self.tls and (self.ca_file or self.cert_file or self.tls_insecure):
            raise ValueError("mqtt.ca_file, cert_file and tls_insecure need mqtt.tls = true")
        return self

    def secret(self) -> str | None:
        """The password, from ``password`` or read from ``password_file`` (trailing newline dropped)."""
        if self.password_file is not None:
            return self.password_file.read_text(encoding="utf-8").rstrip("\r\n")
        return self.password.get_secret_value() if self.password is not None else None


class KafkaSettings(Group):
    """How to reach Kafka."""

    bootstrap_servers: str = Field("127.0.0.1:9092", description="Comma-separated host:port list.")
    client_id: str = Field("edgecap", description="Client id shown in broker logs.")
    extra: dict[str, str | int | bool] = Field(
        default_factory=dict, description="Further librdkafka properties (security.protocol, sasl.*)."
    )

    def config(self, **overrides: Any) -> dict[str, Any]:
        """A confluent-kafka configuration dict."""
        return {"bootstrap.servers": self.bootstrap_servers, "client.id": self.client_id} | dict(
            self.extra
        ) | overrides


class ServiceSettings(BaseSettings):
    """Base of every service's settings object; build it with :meth:`load`."""

    model_config = {"extra": "forbid", "env_nested_delimiter": "__", "validate_default": True}

    log_format: Literal["text", "json"] = Field(
        "text", description="Log lines as text, or one JSON object per line (for log shippers)."
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        secrets_dir = _SECRETS_DIR.get()
        if secrets_dir is not None:
            sources.append(
                NestedSecretsSettingsSource(
                    file_secret_settings,
                    secrets_dir=secrets_dir,
                    secrets_dir_missing="error",
                    secrets_nested_delimiter="__",
                    secrets_case_sensitive=False,
                )
            )
        path = _CONFIG_FILE.get()
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    @classmethod
    def load(
        cls, config_file: str | Path | None = None, *, secrets_dir: str | Path | None = None, **overrides: Any
    ) -> Self:
        """Build and validate the settings; raises :class:`ConfigError` with a readable message."""
        path = Path(config_file) if config_file else None
        if path is not None and not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        secrets = Path(secrets_dir) if secrets_dir else None
        if secrets is not None and not secrets.is_dir():
            raise ConfigError(f"secrets directory not found: {secrets}")
        token, secrets_token = _CONFIG_FILE.set(path), _SECRETS_DIR.set(secrets)
        try:
            return cls(**overrides)
        except ValidationError as exc:
            raise ConfigError(f"invalid {cls.__name__}: {_readable(exc)}") from exc
        except ValueError as exc:  # TOML errors, unreadable secret files
            raise ConfigError(f"invalid {cls.__name__}: {exc}") from exc
        finally:
            _CONFIG_FILE.reset(token)
            _SECRETS_DIR.reset(secrets_token)


def _readable(exc: ValidationError) -> str:
    """One ``where: what`` per error, e.g. ``vad.engine: unknown VAD engine 'webrtcc'; known: …``
    (never the input itself: it may be a password)."""
    errors = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(part) for part in error["loc"]) or "settings"
        what = "not a known setting" if error["type"] == "extra_forbidden" else error["msg"]
        errors.append(f"{where}: {what.removeprefix('Value error, ')}")
    return "; ".join(errors)


DEFAULT_MODELS_DIR = Path("~/.cache/edgecap/models").expanduser()


class ModelsSettings(ServiceSettings):
    """Where prepared models live (``EDGECAP_MODELS_DIR``); the settings of ``edgecap models``."""

    model_config = SettingsConfigDict(env_prefix="EDGECAP_MODELS_", extra="forbid", env_nested_delimiter="__")

    dir: Path = Field(
        DEFAULT_MODELS_DIR,
        description="Folder holding one sub-folder per prepared model (<name>/hf, <name>/onnx-int8, vad/).",
    )


def models_dir() -> Path:
    """The models folder every process defaults to: ``EDGECAP_MODELS_DIR`` or ``~/.cache/edgecap/models``."""
    return ModelsSettings.load().dir.expanduser()
