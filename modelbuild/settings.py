"""Settings of ``edgecap models``: where prepared models live."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from runtime.settings import ServiceSettings


class ModelsSettings(ServiceSettings):
    """Settings of the offline model preparation tool."""

    model_config = SettingsConfigDict(env_prefix="EDGECAP_MODELS_", extra="forbid", env_nested_delimiter="__")

    dir: Path = Field(
        Path("~/.cache/edgecap/models").expanduser(),
        description="Folder holding one sub-folder per prepared model (<name>/hf, <name>/onnx-int8).",
    )
