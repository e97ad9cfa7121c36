"""What the API accepts: the JSON body, the job requests and bounded numbers, each with its message.

The pydantic models here are the single source of both the validation and the OpenAPI schema
(django-ninja generates the spec from them), so code and contract cannot drift apart.  Every
refusal names the field, the rule and what was sent; nothing here raises anything but
:class:`BodyError`, :class:`UnsupportedMediaType` or pydantic's ``ValidationError``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Annotated, Any, Literal, NoReturn

from django.conf import settings
from django.http import HttpRequest
from ninja import Schema
from ninja.parser import Parser
from pydantic import BeforeValidator, ConfigDict, Field, TypeAdapter

from jobs.models import JobKind

#: A job request is a few dozen bytes; anything much larger is not one.
MAX_BODY_BYTES = 16 * 1024
JSON_MEDIA_TYPE = "application/json"


class BodyError(ValueError):
    """The body is not a JSON document the API can read; the message says why."""


class UnsupportedMediaType(BodyError):
    """The body is not declared as JSON (415): browsers send forms cross-site without a preflight."""


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _refuse_constant(name: str) -> NoReturn:
    raise BodyError(f"the body is not valid JSON: {name} is not a JSON number")


def parse_json_body(content_type: str, body: bytes) -> Any:
    """The JSON value of a request body, or :class:`BodyError` with a message for the client."""
    if content_type != JSON_MEDIA_TYPE:
        shown = content_type or "none"
        raise UnsupportedMediaType(
            f"the body must be JSON sent as Content-Type: {JSON_MEDIA_TYPE}; got {shown}"
        )
    if len(body) > MAX_BODY_BYTES:
        raise BodyError(f"the body is {len(body)} bytes; a job request is at most {MAX_BODY_BYTES}")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BodyError(f"the body is not UTF-8 text: {exc}") from exc
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except BodyError:
        raise
    except json.JSONDecodeError as exc:
        raise BodyError(f"the body is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise BodyError("the body is not a job request: it nests too deeply") from exc
    except ValueError as exc:  # an integer longer than sys.get_int_max_str_digits() allows
        raise BodyError("the body is not a job request: it holds a number thousands of digits long") from exc


class JsonOnlyParser(Parser):
    """django-ninja's body parser: JSON only, with the limits above (ninja turns errors into 400s)."""

    def parse_body(self, request: HttpRequest) -> Any:
        content_type = request.content_type or ""
        declared = request.META.get("CONTENT_LENGTH") or "0"
        if content_type == JSON_MEDIA_TYPE and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            # Said before reading it (Django would refuse past DATA_UPLOAD_MAX_MEMORY_SIZE anyway).
            raise BodyError(f"the body is {declared} bytes; a job request is at most {MAX_BODY_BYTES}")
        return parse_json_body(content_type, request.body)


# --- Bounded numbers -------------------------------------------------------------------------
# A number in a query string is written as JSON writes one (ASCII digits only: int() would also
# take full-width or other Unicode digits, "1_000" or " 12 "), at most 64 characters.
_INTEGER_TEXT = re.compile(r"-?(0|[1-9][0-9]*)")
_NUMBER_TEXT = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")


def _number_from_text(text: str) -> int | float | None:
    if len(text) > 64 or not _NUMBER_TEXT.fullmatch(text):
        return None
    return int(text) if _INTEGER_TEXT.fullmatch(text) else float(text)


def bounded_check(
    name: str, low: float, high: float, *, whole: bool, from_text: bool
) -> Callable[[Any], int | float]:
    """A check that answers the one message for every way ``name`` can be wrong.

    JSON Schema counts ``104.0`` as an integer, so a whole float is accepted as one (``2.0`` and
    ``2e0`` in a query string too); a string is a number only in a query string (``from_text``),
    never in a JSON body.
    """
    what = "a whole number" if whole else "a number"
    span = f"from {low:g}" + (f" to {high:g}" if high < 10**6 else "")
    message = f"{name} must be {what} {span}"

    def check(value: Any) -> int | float:
        number = value
        if from_text and isinstance(value, str):
            number = _number_from_text(value)
        if isinstance(number, bool) or not isinstance(number, int | float):
            raise ValueError(f"{message}; got {_shown(value)}")
        if isinstance(number, float):
            if not math.isfinite(number) or (whole and not number.is_integer()):
                raise ValueError(f"{message}; got {_shown(value)}")
            number = int(number) if whole else number
        if not low <= number <= high:
            raise ValueError(f"{message}; got {_shown(value)}")
        checked: int | float = number
        return checked

    return check


def whole_number(name: str, low: int, high: int, *, from_text: bool = False) -> Any:
    # Field first: its bounds then constrain the integer (and show in the schema as minimum/maximum).
    check = bounded_check(name, low, high, whole=True, from_text=from_text)
    return Annotated[int, Field(ge=low, le=high), BeforeValidator(check)]


def seconds(name: str, low: float, high: float) -> Any:
    check = bounded_check(name, low, high, whole=False, from_text=True)
    return Annotated[float, Field(ge=low, le=high), BeforeValidator(check)]


def _boolean(name: str) -> Callable[[Any], bool]:
    def check(value: Any) -> bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false; got {_shown(value)}")
        return value

    return check


Fail = Annotated[
    bool,
    BeforeValidator(_boolean("fail")),
    Field(description="Fail halfway on purpose (shows the error path and its callback)."),
]


# --- Job requests --------------------------------------------------------------------------
class RandomUsersRequest(Schema):
    model_config = ConfigDict(extra="forbid", strict=True, title="RandomUsersRequest")

    kind: Literal["random_users"]
    total: whole_number("total", settings.JOBS_USERS_MIN, settings.JOBS_USERS_MAX)  # type: ignore[valid-type]
    fail: Fail = False


class ExportUsersRequest(Schema):
    model_config = ConfigDict(extra="forbid", strict=True, title="ExportUsersRequest")

    kind: Literal["export_users"]
    fail: Fail = False


TimedWorkSeconds = seconds("seconds", 0, settings.JOBS_TIMED_WORK_MAX)


class TimedWorkRequest(Schema):
    """Sleep, then record the effect: the load and fault tests' job (a known, countable effect)."""

    model_config = ConfigDict(extra="forbid", strict=True, title="TimedWorkRequest")

    kind: Literal["timed_work"]
    seconds: TimedWorkSeconds  # type: ignore[valid-type]
    fail: Fail = False


AnyJobRequest = RandomUsersRequest | ExportUsersRequest | TimedWorkRequest
JobRequest = Annotated[AnyJobRequest, Field(discriminator="kind")]
_job_request = TypeAdapter(JobRequest)


def job_params(request: AnyJobRequest) -> tuple[JobKind, dict[str, Any]]:
    """The job's kind and the parameters stored with it (``fail`` only when asked for)."""
    params: dict[str, Any] = {}
    if isinstance(request, RandomUsersRequest):
        params["total"] = request.total
    if isinstance(request, TimedWorkRequest):
        params["seconds"] = request.seconds
    if request.fail:
        params["fail"] = True
    return JobKind(request.kind), params


def parse_job_request(content_type: str, body: bytes) -> tuple[JobKind, dict[str, Any]]:
    """The whole path of ``POST /api/jobs/`` without the web framework (benchmarks use it)."""
    from pydantic import ValidationError

    try:
        return job_params(_job_request.validate_python(parse_json_body(content_type, body)))
    except ValidationError as exc:
        raise BodyError(describe_errors(exc.errors(include_url=False))) from exc


# --- Messages --------------------------------------------------------------------------------
_SOURCES = {"body", "query", "path", "header", "cookie", "form"}
_KINDS = ", ".join(JobKind.values)


def describe_errors(errors: list[Any], body_param: str = "payload") -> str:
    """One sentence per problem, for pydantic errors of a request (ninja's or a TypeAdapter's)."""
    unknown: dict[str, list[str]] = {}
    sentences: list[str] = []
    for error in errors:
        loc = [str(part) for part in error.get("loc", ())]
        if loc and loc[0] in _SOURCES:
            source = loc.pop(0)
            if source == "body" and loc[:1] == [body_param]:
                loc.pop(0)
        kind = error.get("type", "")
        # The discriminated union names its branch first in the location.
        tag = loc.pop(0) if loc and loc[0] in JobKind.values and kind != "union_tag_invalid" else ""
        field = ".".join(loc)
        if kind == "extra_forbidden":
            unknown.setdefault(tag, []).append(field)
        elif kind == "union_tag_not_found":
            sentences.append(f"kind is required: one of {_KINDS}")
        elif kind == "union_tag_invalid":
            sentences.append(f"kind must be one of {_KINDS}; got {_shown(error.get('ctx', {}).get('tag'))}")
        elif kind in {"model_attributes_type", "dict_type", "model_type"} and not field:
            sentences.append('the body must be a JSON object, such as {"kind": "export_users"}')
        elif kind == "missing" and not field:
            sentences.append(
                f'the body is empty: send a JSON object such as {{"kind": "{JobKind.EXPORT_USERS}"}}'
            )
        elif kind == "missing" and field == "total":
            low, high = settings.JOBS_USERS_MIN, settings.JOBS_USERS_MAX
            sentences.append(f"total is required: a whole number from {low} to {high}")
        elif kind == "value_error":
            sentences.append(str(error.get("msg", "")).removeprefix("Value error, "))
        else:
            message = str(error.get("msg", "is not valid"))
            sentences.append(f"{field or 'the body'}: {message[:1].lower()}{message[1:]}")
    for tag, fields in unknown.items():
        names = ", ".join(_shown(name)[1:-1] for name in sorted(fields)[:10])
        more = f" and {len(fields) - 10} more" if len(fields) > 10 else ""
        sentences.append(f"unknown field(s) for {tag or 'this request'}: {names}{more}")
    return "; ".join(sentences) or "the request is not valid"
