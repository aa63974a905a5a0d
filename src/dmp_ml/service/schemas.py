"""Request and response bodies of the HTTP service, and the error shapes in its schema.

Responses and the requests without configured caps are plain classes. The requests whose
list lengths come from ``service.max_*`` settings (and ``lookalike.max_reach``) are built by
:func:`request_models` for the settings a service starts with, so the OpenAPI schema states
the caps that service enforces.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
)

from dmp_ml.settings import Settings

ProfileId = Annotated[str, StringConstraints(min_length=1, max_length=256)]


def _whole_number(value: Any) -> Any:
    """JSON Schema counts 24.0 as an integer; strict mode still refuses "24" and true."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


WholeNumber = Annotated[int, BeforeValidator(_whole_number)]


def _plausible_year(value: datetime | None) -> datetime | None:
    if value is not None and not 2000 <= value.year <= 2100:
        raise ValueError("must be between the years 2000 and 2100")
    return value


def max_reach(settings: Settings) -> float:
    """The largest ``reach`` a lookalike request may ask for."""
    return float(getattr(settings.lookalike, "max_reach", 0.5))


class Body(BaseModel):
    """A strict JSON body: unknown fields and coerced types are refused."""

    model_config = ConfigDict(extra="forbid", strict=True)


# -------------------------------------------------------------- requests without settings


class QuietHours(Body):
    start: WholeNumber = Field(ge=0, le=23, description="First quiet local hour.")
    end: WholeNumber = Field(
        ge=0, le=23, description="First allowed local hour after the quiet ones."
    )


class SegmentPreviewRequest(Body):
    rule: dict[str, Any] = Field(
        description='Segment rule, e.g. {"all": [{"feature": "purchase_count_30d", "op": ">=", '
        '"value": 1}]}; {"segment": "<saved name>"} previews a saved segment.'
    )
    sample: WholeNumber = Field(20, ge=0, le=1000, description="Sample ids returned.")


class EventsRequest(BaseModel):
    # not strict: event values arrive as text or numbers and go through the data contract
    model_config = ConfigDict(extra="forbid")
    events: list[dict[str, Any]] = Field(min_length=1, max_length=100_000)


class RetargetRequest(Body):
    template: str = Field(description="viewed_not_bought, cart_abandoners, lapsed_buyers, ...")
    params: dict[str, Any] | None = None
    rank_by_propensity: bool = False
    limit: WholeNumber = Field(1000, ge=0, le=100_000, description="Profiles returned at most.")


# ------------------------------------------------------------------ requests with settings


@dataclass(frozen=True)
class RequestModels:
    """The request bodies whose caps come from the settings of one service."""

    score: type[Body]
    lookalike: type[Body]
    send_time: type[Body]
    forget: type[Body]
    affinity: type[Body]
    segment_affinity: type[Body]
    campaign: type[Body]


def request_models(settings: Settings) -> RequestModels:
    """The capped request bodies for ``settings`` (list lengths, ``reach``)."""
    svc = settings.service
    reach_cap = max_reach(settings)

    class ScoreRequest(Body):
        profile_ids: list[ProfileId] = Field(min_length=1, max_length=svc.max_score_ids)
        explain: bool = Field(False, description="Add the top reasons (SHAP) per profile.")

    class LookalikeRequest(Body):
        model_config = ConfigDict(
            json_schema_extra={
                "oneOf": [  # exactly one of size and reach
                    {
                        "required": ["size"],
                        "properties": {"size": {"type": "integer"}, "reach": {"type": "null"}},
                    },
                    {
                        "required": ["reach"],
                        "properties": {"reach": {"type": "number"}, "size": {"type": "null"}},
                    },
                ]
            }
        )

        seed_ids: list[ProfileId] = Field(min_length=1, max_length=svc.max_seed_ids)
        size: WholeNumber | None = Field(None, gt=0, description="Audience size; or give `reach`.")
        reach: float | None = Field(
            None, gt=0, le=reach_cap, description="Share of the eligible population; or `size`."
        )
        exclude_ids: list[ProfileId] = Field(default_factory=list, max_length=svc.max_seed_ids)
        explain: bool = Field(False, description="Add the features that set the seed apart.")

    class SendTimeRequest(Body):
        profile_ids: list[ProfileId] = Field(min_length=1, max_length=svc.max_send_time_ids)
        window_start: datetime | None = Field(
            None, strict=False, description="ISO 8601; naive means UTC; null: the bundle's as_of."
        )
        window_hours: WholeNumber = Field(24, ge=1, le=168)
        quiet_hours: QuietHours | None = Field(
            None, description="Local hours [start, end) to avoid."
        )
        timezone: str | None = Field(
            None, max_length=64, description="IANA zone replacing every recipient's zone."
        )

        @field_validator("window_start")
        @classmethod
        def _plausible(cls, value: datetime | None) -> datetime | None:
            return _plausible_year(value)

    class ForgetRequest(Body):
        profile_ids: list[ProfileId] = Field(min_length=1, max_length=svc.max_score_ids)

    class AffinityRequest(Body):
        profile_ids: list[ProfileId] = Field(min_length=1, max_length=svc.max_score_ids)
        top: WholeNumber = Field(3, ge=1, le=50, description="Top categories per profile.")

    class AudienceSpec(Body):
        """Exactly one of rule, segment, seed_ids (+ size / reach), profile_ids, retarget."""

        rule: dict[str, Any] | None = Field(None, description="A segment rule.")
        segment: str | None = Field(None, description="A saved segment's name.")
        seed_ids: list[ProfileId] | None = Field(
            None, max_length=svc.max_seed_ids, description="Lookalike seed ids."
        )
        size: WholeNumber | None = Field(None, gt=0, description="Lookalike size (default 1000).")
        reach: float | None = Field(None, gt=0, le=reach_cap)
        profile_ids: list[ProfileId] | None = Field(None, max_length=svc.max_seed_ids)
        retarget: str | None = Field(None, description="A retargeting template's name.")
        params: dict[str, Any] | None = Field(None, description="The template's parameters.")

    class SegmentAffinityRequest(AudienceSpec):
        top: WholeNumber = Field(5, ge=1, le=50, description="Top categories of the segment.")

    class CampaignRequest(Body):
        name: str = Field(min_length=1, max_length=64)
        audience: AudienceSpec
        holdout: float | None = Field(None, gt=0, lt=1)
        target_event: str | None = None
        horizon_days: WholeNumber | None = Field(None, ge=1, le=3650)
        launch: datetime | None = Field(
            None, strict=False, description="ISO 8601; naive means UTC; null: the data cutoff."
        )

        @field_validator("launch")
        @classmethod
        def _plausible(cls, value: datetime | None) -> datetime | None:
            return _plausible_year(value)

    return RequestModels(
        score=ScoreRequest,
        lookalike=LookalikeRequest,
        send_time=SendTimeRequest,
        forget=ForgetRequest,
        affinity=AffinityRequest,
        segment_affinity=SegmentAffinityRequest,
        campaign=CampaignRequest,
    )


def audience_spec(body: BaseModel) -> dict[str, Any]:
    """An audience body (rule, segment, seeds, ids or template) as the library's spec dict."""
    return {k: v for k, v in body.model_dump(exclude={"top"}).items() if v is not None}


# ------------------------------------------------------------------------------- responses


class ScoreItem(BaseModel):
    profile_id: str
    score: float | None
    percentile: float | None
    history_days: int | None = Field(None, description="First event to the bundle's as_of.")
    events_used: int | None = Field(None, description="Events the features rest on.")
    days_since_last_event: int | None = None
    reasons: list[dict[str, Any]] | None = None


SCORE_BASIS = ("history_days", "events_used", "days_since_last_event")


class ScoreResponse(BaseModel):
    model_version: str
    as_of: str | None
    results: list[ScoreItem]
    unknown_ids: list[str]


class AudienceItem(BaseModel):
    profile_id: str
    score: float | None


class LookalikeResponse(BaseModel):
    model_version: str
    audience: list[AudienceItem]
    diagnostics: dict[str, Any]
    unknown_seed_ids: list[str] = Field(description="The first 100; the count is in diagnostics.")


class SendTimeItem(BaseModel):
    profile_id: str
    send_at: str | None = Field(description="UTC; null when the window is all quiet hours.")
    hour_of_week: int | None
    probability: float | None
    basis: str | None
    timezone: str | None = None
    timezone_source: str | None = None
    local_send_at: str | None = None
    alternatives: list[dict[str, Any]]


class SendTimeResponse(BaseModel):
    model_version: str
    window_start: str | None
    window_hours: int
    results: list[SendTimeItem]
    unknown_ids: list[str]


class ErrorResponse(BaseModel):
    error: str
    field: str | None = None


class ReloadResponse(BaseModel):
    reloaded: bool
    version: str
    previous_version: str | None
    path: str


ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "Missing or wrong bearer token."},
    413: {"model": ErrorResponse, "description": "Body over `service.max_request_bytes`."},
    422: {"model": ErrorResponse, "description": "Invalid request; `field` names the field."},
}
"""The errors every API route may answer."""

WRITES: dict[int | str, dict[str, Any]] = {
    403: {"model": ErrorResponse, "description": "No API token set."},
    503: {"model": ErrorResponse, "description": "The workdir cannot be written (read-only)."},
    507: {"model": ErrorResponse, "description": "No space left where the workdir is."},
}
"""The further errors of the routes that write to the workdir."""
