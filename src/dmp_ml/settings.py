"""Settings: one object, read from YAML files and ``DMP_ML_`` environment variables.

Precedence (highest first): explicit keyword arguments (the CLI's options), environment
variables (``DMP_ML_PROPENSITY__HORIZON_DAYS=60``), the YAML file named by ``config`` (the
``--config`` option, or ``DMP_ML_CONFIG``), the packaged ``dmp_ml/config/default.yaml``, then
the defaults below. Sections merge key by key across these sources, so a YAML file or a variable
need only name what it changes. Each section mirrors one block of ``default.yaml``; an unknown
key anywhere is an error. The YAML ships inside the package so an installed wheel runs from any
folder.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from dmp_ml import layout
from dmp_ml.errors import ConfigError

CONFIG_DIR = Path(str(resources.files("dmp_ml") / "config"))
"""The packaged configuration: ``default.yaml`` and ``mappings/*.yaml``."""
DEFAULT_CONFIG = CONFIG_DIR / "default.yaml"
MAPPINGS_DIR = CONFIG_DIR / "mappings"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ContractSettings(_Section):
    """Loading input files."""

    chunk_rows: int = Field(
        524_288,
        gt=0,
        description="Rows per batch when reading large files (2**19: a Parquet row group of "
        "pyarrow's default 2**20 rows is then read whole, which costs less than cutting it).",
    )
    future_tolerance_minutes: float = Field(
        60.0,
        ge=0,
        description="Events later than now plus this are quarantined as future_time "
        "(clock skew between systems); they never move the feature clock.",
    )
    max_field_bytes: int = Field(
        128 * 1024, gt=0, description="A text field longer than this quarantines its row."
    )
    max_abs_value: float = Field(
        1e15, gt=0, description="A |value| above this is quarantined as value_out_of_range."
    )


class FeatureSettings(_Section):
    """Identity resolution and point-in-time features."""

    cookie_ttl_days: int = Field(90, gt=0)
    profile_ttl_days: int | None = Field(None, gt=0)
    windows_days: list[int] = Field(default_factory=lambda: [7, 30, 90])
    half_life_days: float = Field(14.0, gt=0)
    top_k_categories: int = Field(30, ge=0)
    rate_prior_strength: float = Field(10.0, gt=0, description="Pseudo-sends for smoothed rates.")
    consent_purpose: str = "marketing"
    engine: str = Field("pandas", pattern="^(pandas|dask)$")
    dask_scheduler: str | None = None
    dask_partitions: int = Field(8, gt=0)
    vocab_min_share: float = Field(
        0.01, ge=0, le=1, description="Share of events an extra event type/channel needs."
    )
    vocab_max_extra: int = Field(20, ge=0, description="At most this many extra types/channels.")
    passive_event_types: list[str] = Field(
        default_factory=lambda: ["email_send", "ad_impression"],
        description="Events the marketer pushes: not engagement (activity, hour of week).",
    )


class PropensitySettings(_Section):
    """Propensity model training."""

    target_event: str = "purchase"
    horizon_days: int = Field(30, gt=0)
    n_snapshots: int = Field(4, ge=2)
    min_positives: int = Field(50, ge=1)
    min_negatives: int = Field(50, ge=1)
    learning_rate: float = Field(0.05, gt=0)
    num_leaves: int = Field(7, ge=2, description="Small trees: best on demo and Online Retail.")
    min_child_samples: int = Field(100, ge=1, description="Upper bound on a leaf's rows.")
    min_child_fractions: list[float] = Field(
        [0.005, 0.02, 0.05],
        min_length=1,
        description="Candidate leaf sizes as shares of the training rows, chosen by validation.",
    )
    n_estimators: int = Field(600, ge=1)
    early_stopping_rounds: int = Field(50, ge=1)
    calibration: str = Field("isotonic", pattern="^(isotonic|sigmoid)$")
    calibration_folds: int = Field(
        5, ge=2, description="Cross-fitting folds for the after-calibration validation metrics."
    )
    n_reasons: int = Field(3, ge=1)
    seed: int = 0
    n_threads: int = Field(
        1, ge=0, description="LightGBM threads; 0 = all cores (slow when cores are busy)."
    )


def _candidates(*values: float, what: str) -> Any:
    """A list field of values chosen from on held-out data (at least one)."""
    return Field(default_factory=lambda: list(values), min_length=1, description=what)


class SendTimeSettings(_Section):
    """Send-time curves (see dmp_ml.models.send_time.SendTimeModel for the meaning of each)."""

    # candidates searched on the internal held-out period (a one-element list fixes the value)
    prior_strength_candidates: list[float] = _candidates(
        1.0,
        3.0,
        10.0,
        30.0,
        100.0,
        300.0,
        what="Profile -> cohort shrinkage, in pseudo engagement events per week.",
    )
    cohort_strength_candidates: list[float] = _candidates(
        30.0,
        300.0,
        3000.0,
        what="Cohort (time zone) -> global shrinkage, pseudo engagement events per week.",
    )
    day_pooling_candidates: list[float] = _candidates(
        0.1, 0.3, 1.0, what="Weight of the same hour on the other six days when smoothing (0..1)."
    )
    bandwidth_candidates: list[float] = _candidates(
        1.0, 1.5, 2.5, what="Circular Gaussian smoothing over neighbouring hours: sd in hours."
    )
    activity_weight_candidates: list[float] = _candidates(
        0.5,
        1.0,
        2.0,
        4.0,
        8.0,
        what="Weight of one non-email engagement hour relative to one email response.",
    )
    sharpness_candidates: list[float] = _candidates(
        0.8,
        1.0,
        1.25,
        1.5,
        2.0,
        what="Power applied to the posterior curve (contrast calibration; 1 = none).",
    )
    holdout_days: float = Field(21.0, gt=0, description="Internal held-out period for selection.")
    guard_windows: int = Field(
        3,
        ge=1,
        description="Consecutive holdout_days periods before as_of on which the guard compares "
        "the curves with the plain baselines (pooled).",
    )
    guard_profiles: int = Field(
        20_000, ge=1, description="The guard adds no period once it has this many held-out pairs."
    )
    evaluation_days: int = Field(
        28, gt=0, description="Train pipeline: last days before as_of scored by the offline eval."
    )
    machine_open_seconds: float = Field(
        120.0, ge=0, description="An open/click this soon after its send is a likely machine open."
    )
    machine_open_weight: float = Field(0.1, ge=0, le=1)
    rate_prior_strength: float = Field(
        5.0, gt=0, description="Pseudo-sends shrinking a profile's response rate."
    )
    n_alternatives: int = Field(3, ge=0, le=167)
    default_quiet_hours: list[int] | None = Field(
        None,
        description="Local [start, end) hours never used when a request gives none, e.g. [22, 7].",
    )
    basis_profile_min_weight: float = Field(
        0.3, ge=0, le=1, description="Share of the curve from the profile's own data for 'profile'."
    )
    tz_min_events: int = Field(8, ge=1, description="Engagement hours needed to infer a zone.")
    tz_min_posterior: float = Field(0.8, gt=0, le=1)
    tz_candidates: list[str] | None = Field(
        None, description="Zones considered for inference; null: the known zones of the data."
    )
    non_engagement_events: list[str] = Field(
        default_factory=lambda: [
            "ad_impression",
            "email_bounce",
            "email_unsubscribe",
            "email_delivered",
        ],
        description="Event types that are not engagement (email_send is exposure).",
    )

    def model_post_init(self, context: Any, /) -> None:
        quiet = self.default_quiet_hours
        if quiet is not None and (
            len(quiet) != 2 or not all(0 <= h <= 23 for h in quiet) or quiet[0] == quiet[1]
        ):
            raise ConfigError(
                "invalid setting send_time.default_quiet_hours: expected [start, end], two "
                f"different hours from 0 to 23, got {quiet}"
            )
        if any(not 0 <= v <= 1 for v in self.day_pooling_candidates):
            raise ConfigError(
                "invalid setting send_time.day_pooling_candidates: values must be in [0, 1]"
            )
        for name in (
            "prior_strength_candidates",
            "cohort_strength_candidates",
            "bandwidth_candidates",
            "activity_weight_candidates",
            "sharpness_candidates",
        ):
            if any(v <= 0 for v in getattr(self, name)):
                raise ConfigError(f"invalid setting send_time.{name}: values must be positive")


class LookalikeSettings(_Section):
    """Embedding, FAISS index and seed expansion."""

    threads: int = Field(
        0, ge=0, description="FAISS/BLAS/LightGBM threads; 0: every core (a request: BLAS on one)."
    )
    # embedding
    clip: float = Field(5.0, gt=0, description="Bound of the robust z-score (median/IQR).")
    max_levels: int = Field(10, ge=0, description="Most frequent levels one-hot per category.")
    min_level_count: int = Field(20, ge=1, description="Rarer levels encode as 'other'.")
    pca_components: int | None = Field(None, gt=0, description="PCA dims; null: no reduction.")
    # index
    exact_max_profiles: int = Field(
        200_000, ge=0, description="Populations up to this size get an exact flat index."
    )
    index_factory: str = Field(
        "IVF{nlist},Flat", description="FAISS factory beyond; {nlist} = round(sqrt(n))."
    )
    recall_target: float = Field(0.95, gt=0, le=1, description="recall@100 vs exact, at build.")
    tune_queries: int = Field(200, gt=0)
    nprobe: int | None = Field(None, gt=0, description="Fixed IVF nprobe; null: tuned.")
    ef_search: int | None = Field(None, gt=0, description="Fixed HNSW efSearch; null: tuned.")
    # expansion
    kmeans_min_seed: int = Field(50, ge=1, description="Smaller seeds use one centroid.")
    seeds_per_centroid: int = Field(50, ge=1, description="k = ceil(seed / this) ...")
    max_centroids: int = Field(16, ge=1, description="... capped here.")
    seed_weighted_metric: bool = Field(
        True, description="Query with discriminant directions, not plain centroids."
    )
    similarity_temperature: float = Field(
        0.2, gt=0, description="Soft maximum over centroids; large: one mean direction."
    )
    index_min_work: int = Field(
        200_000_000,
        ge=0,
        description="Expansion searches the index (instead of scoring every profile exactly) "
        "once profiles x seed centroids exceeds this.",
    )
    candidate_factor: float = Field(
        5.0, ge=1, description="Candidates the classifier re-ranks per returned profile."
    )
    min_seed: int = Field(100, ge=1, description="Seed size from which the classifier re-ranks.")
    classifier_weight: float = Field(1.0, ge=0, le=1, description="Blend weight, large seeds.")
    blend_half_seed: int = Field(300, ge=1, description="Seed size at half that weight.")
    pu_negatives: int = Field(2500, gt=0, description="Unlabeled profiles sampled for the PU fit.")
    pu_n_estimators: int = Field(150, ge=1)
    pu_learning_rate: float = Field(0.1, gt=0)
    pu_num_leaves: int = Field(7, ge=2)
    pu_min_child_samples: int = Field(20, ge=1)
    pu_max_bin: int = Field(
        63, ge=2, description="Histogram bins per feature of the PU classifier (fewer: faster)."
    )
    reference_size: int = Field(5000, gt=0, description="Population sample scores refer to.")
    max_reach: float = Field(0.5, gt=0, le=1, description="Largest reach a request may ask.")
    # diagnostics
    holdout_fraction: float = Field(0.2, gt=0, lt=1, description="Seed share held out.")
    holdout_folds: int = Field(
        3,
        ge=1,
        description="Disjoint held-out parts of the seed (each holdout_fraction), held out in "
        "turn; quality estimate and guard pool them.",
    )
    min_holdout_seeds: int = Field(5, ge=1, description="No quality estimate below this.")
    holdout_sample: int = Field(
        5000, gt=0, description="Profiles scored to place held-out seeds in a large population."
    )
    min_effect_size: float = Field(0.2, gt=0, description="Standardized difference to report.")
    distinct_auc: float = Field(0.6, gt=0.5, le=1, description="Held-out AUC of a distinct seed.")
    n_distinguishing: int = Field(5, ge=0)
    seed: int = 0


class AffinitySettings(_Section):
    """Channel and content affinity (see :mod:`dmp_ml.models.affinity`)."""

    category_prior_strength: float = Field(
        2.0, gt=0, description="Pseudo-events shrinking a category score toward the population."
    )
    channel_prior_strength: float = Field(
        5.0, gt=0, description="Pseudo-events shrinking a channel mix toward the population."
    )
    max_channels: int = Field(20, ge=1, description="Channels kept by name; the rest: other.")
    segment_min_profiles: int = Field(5, ge=1, description="Members behind a segment category.")
    top_categories: int = Field(3, ge=1, le=50, description="Categories per profile by default.")


class CampaignSettings(_Section):
    """Campaign holdouts and readouts (see :mod:`dmp_ml.campaigns`)."""

    holdout: float = Field(0.1, gt=0, lt=1, description="Share of the audience held out.")
    target_event: str = "purchase"
    horizon_days: int = Field(30, gt=0)
    min_per_bin: int = Field(
        30, ge=5, description="Holdout profiles needed per propensity bin for uplift by decile."
    )


class ServiceSettings(_Section):
    """The HTTP service."""

    port: int = Field(3000, gt=0, lt=65536)
    workers: int = Field(1, ge=1)
    threads_per_worker: int = Field(1, ge=1)
    max_score_ids: int = Field(10_000, gt=0)
    max_send_time_ids: int = Field(10_000, gt=0)
    max_seed_ids: int = Field(1_000_000, gt=0)
    max_request_bytes: int = Field(
        32 * 1024 * 1024, gt=0, description="Largest request body; a larger one is refused (413)."
    )
    host: str = Field("127.0.0.1", description="Interface to bind; 0.0.0.0 in a container.")
    max_concurrent_lookalikes: int = Field(
        1, ge=1, description="Lookalike expansions run at once per worker; others queue."
    )
    reload_poll_seconds: float = Field(
        5.0, ge=0, description="How often each worker checks the bundle pointer; 0: never."
    )
    bento_model: str | None = Field(
        None,
        description="Serve this BentoML model (`dmp-ml promote`), e.g. dmp-ml-bundle:latest, "
        "instead of the workdir's live bundle; the workdir still holds the erasure list.",
    )


class RefreshSettings(_Section):
    """Near-real-time refresh: when the deltas over the base bundle are folded into a new base."""

    max_deltas: int = Field(
        4,
        ge=1,
        description="Past this many deltas over the base, a compaction folds them into a new "
        "base (after the batch is live). Each load replays every delta (more: slower reloads; "
        "fewer: more whole re-publishes).",
    )
    max_delta_bytes: int = Field(
        256 * 1024 * 1024,
        gt=0,
        description="Past this size of the deltas over the base, a compaction folds them.",
    )


class Settings(BaseSettings):
    """Every tunable of dmp-ml, with its default (see the module doc for where values come from)."""

    model_config = SettingsConfigDict(
        env_prefix="DMP_ML_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    config: Path | None = Field(
        None,
        description="YAML file read over the packaged default.yaml (--config, DMP_ML_CONFIG); "
        "null: the packaged file alone.",
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
    refresh: RefreshSettings = RefreshSettings()
    affinity: AffinitySettings = AffinitySettings()
    campaigns: CampaignSettings = CampaignSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        files = [DEFAULT_CONFIG]
        config = _config_file(init_settings, env_settings)
        if config is not None:
            if not config.is_file():
                raise ConfigError(f"config file not found: {config}")
            files.append(config)
        # later files win; nested sections merge key by key
        return init_settings, env_settings, _YamlFiles(settings_cls, files)

    def tracking_uri(self) -> str:
        """The MLflow URI: the setting, else ``MLFLOW_TRACKING_URI``, else SQLite in workdir."""
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        env = os.environ.get("MLFLOW_TRACKING_URI")
        if env:
            return env
        return f"sqlite:///{layout.mlflow_db(self.workdir).resolve()}"


def _config_file(
    init_settings: PydanticBaseSettingsSource, env_settings: PydanticBaseSettingsSource
) -> Path | None:
    """The ``config`` keyword argument, else ``DMP_ML_CONFIG`` (as the env source reads it)."""
    given = None
    if isinstance(init_settings, InitSettingsSource):
        given = init_settings.init_kwargs.get("config")
    if given is None and isinstance(env_settings, EnvSettingsSource):
        given = env_settings.env_vars.get("dmp_ml_config")
    return Path(given) if given else None


class _YamlFiles(YamlConfigSettingsSource):
    """The YAML files, later ones over earlier ones; a broken file is one :class:`ConfigError`."""

    def __init__(self, settings_cls: type[BaseSettings], files: list[Path]) -> None:
        super().__init__(settings_cls, yaml_file=files, deep_merge=True)

    def _read_file(self, file_path: Path) -> dict[str, Any]:
        try:
            data = super()._read_file(file_path)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            problem = getattr(exc, "problem", None) or " ".join(str(exc).split())
            raise ConfigError(
                f"config file {file_path} is not valid YAML{where}: {problem}"
            ) from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {file_path} cannot be read: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"config file {file_path} must hold a mapping at the top level")
        if "config" in data:
            raise ConfigError(f"config file {file_path}: 'config' names a file; set it outside")
        return data


def load_settings(config: str | Path | None = None, **overrides: Any) -> Settings:
    """Build the settings from ``config`` (a YAML path), the environment and ``overrides``.

    Raises
    ------
    ConfigError
        The file is missing or not YAML, or a value is invalid or unknown (named in the
        message, e.g. ``invalid setting propensity.horizon_days: ...``).
    """
    try:
        if config is not None:
            return Settings(config=Path(config), **overrides)
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"invalid setting {where}: {first['msg']}") from exc
