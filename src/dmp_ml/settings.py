"""Settings: one object, read from a YAML file and ``DMP_ML_`` environment variables.

Precedence (highest first): explicit keyword arguments, environment variables
(``DMP_ML_PROPENSITY__HORIZON_DAYS=60``), the YAML file (``pipelines/default.yaml`` or the
file named by ``DMP_ML_CONFIG``), then the defaults below. Each section mirrors one block of
``pipelines/default.yaml``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from dmp_ml.errors import ConfigError

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "pipelines" / "default.yaml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ContractSettings(_Section):
    """Loading input files."""

    chunk_rows: int = Field(500_000, gt=0, description="Rows per batch when reading large files.")


class FeatureSettings(_Section):
    """Identity resolution and point-in-time features."""

    cookie_ttl_days: int = Field(90, gt=0)
    windows_days: list[int] = Field(default_factory=lambda: [7, 30, 90])
    half_life_days: float = Field(14.0, gt=0)
    top_k_categories: int = Field(10, ge=0)
    rate_prior_strength: float = Field(10.0, gt=0, description="Pseudo-sends for smoothed rates.")
    consent_purpose: str = "marketing"
    engine: str = Field("pandas", pattern="^(pandas|dask)$")
    dask_scheduler: str | None = None
    dask_partitions: int = Field(8, gt=0)


class PropensitySettings(_Section):
    """Propensity model training."""

    target_event: str = "purchase"
    horizon_days: int = Field(30, gt=0)
    n_snapshots: int = Field(4, ge=2)
    min_positives: int = Field(50, ge=1)
    min_negatives: int = Field(50, ge=1)
    learning_rate: float = Field(0.05, gt=0)
    num_leaves: int = Field(31, ge=2)
    min_child_samples: int = Field(50, ge=1)
    n_estimators: int = Field(600, ge=1)
    early_stopping_rounds: int = Field(50, ge=1)
    calibration: str = Field("isotonic", pattern="^(isotonic|sigmoid)$")
    n_reasons: int = Field(3, ge=1)
    seed: int = 0


class SendTimeSettings(_Section):
    """Send-time curves."""


class LookalikeSettings(_Section):
    """Embedding, FAISS index and seed expansion."""


class ServiceSettings(_Section):
    """The HTTP service."""

    port: int = Field(3000, gt=0, lt=65536)
    workers: int = Field(1, ge=1)
    threads_per_worker: int = Field(1, ge=1)
    max_score_ids: int = Field(10_000, gt=0)
    max_send_time_ids: int = Field(10_000, gt=0)
    max_seed_ids: int = Field(1_000_000, gt=0)


class Settings(BaseSettings):
    """Every tunable of dmp-ml, with its default."""

    model_config = SettingsConfigDict(
        env_prefix="DMP_ML_", env_nested_delimiter="__", extra="ignore", frozen=True
    )

    workdir: Path = Path("models")
    mlflow_tracking_uri: str | None = Field(
        None, description="Defaults to MLFLOW_TRACKING_URI, else sqlite:///<workdir>/mlflow.db."
    )
    api_token: str | None = None
    seed: int = 0
    contract: ContractSettings = ContractSettings()
    features: FeatureSettings = FeatureSettings()
    propensity: PropensitySettings = PropensitySettings()
    send_time: SendTimeSettings = SendTimeSettings()
    lookalike: LookalikeSettings = LookalikeSettings()
    service: ServiceSettings = ServiceSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, _YamlSource(settings_cls)

    def tracking_uri(self) -> str:
        """The MLflow URI: the setting, else ``MLFLOW_TRACKING_URI``, else SQLite in workdir."""
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        env = os.environ.get("MLFLOW_TRACKING_URI")
        if env:
            return env
        return f"sqlite:///{(Path(self.workdir) / 'mlflow.db').resolve()}"


class _YamlSource(PydanticBaseSettingsSource):
    """Reads the YAML file named by ``DMP_ML_CONFIG`` (default ``pipelines/default.yaml``)."""

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls)
        path = os.environ.get("DMP_ML_CONFIG")
        self._data = _read_yaml(Path(path)) if path else _read_yaml(DEFAULT_CONFIG, missing_ok=True)

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


def _read_yaml(path: Path, missing_ok: bool = False) -> dict[str, Any]:
    if not path.exists():
        if missing_ok:
            return {}
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def load_settings(config: str | Path | None = None, **overrides: Any) -> Settings:
    """Build the settings from ``config`` (a YAML path), the environment and ``overrides``."""
    previous = os.environ.get("DMP_ML_CONFIG")
    try:
        if config is not None:
            os.environ["DMP_ML_CONFIG"] = str(config)
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"invalid setting {where}: {first['msg']}") from exc
    finally:
        if config is not None:
            if previous is None:
                os.environ.pop("DMP_ML_CONFIG", None)
            else:
                os.environ["DMP_ML_CONFIG"] = previous
