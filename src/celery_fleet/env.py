"""Typed environment parsing for 12-factor settings.

Every reader takes the variable name, looks for ``NAME`` and then ``NAME_FILE``
(a path whose contents hold the value: how Kubernetes and Docker hand over
secrets), and raises ``ImproperlyConfigured`` naming the variable when the value
cannot be parsed.  Modelled on paperless-ngx's settings parsers and healthchecks'
``envsecret``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeAlias, TypeVar

from django.core.exceptions import ImproperlyConfigured

T = TypeVar("T")
# The reader's methods are named after the types they return; these keep the builtins in reach.
Str: TypeAlias = str
Int: TypeAlias = int
Float: TypeAlias = float
Bool: TypeAlias = bool

_TRUE = {"1", "true", "yes", "on", "y", "t"}
_FALSE = {"0", "false", "no", "off", "n", "f", ""}


class EnvReader:
    """Reads typed values from a mapping (``os.environ`` by default)."""

    def __init__(self, environ: Mapping[Str, Str] | None = None) -> None:
        self.environ: Mapping[Str, Str] = os.environ if environ is None else environ

    def raw(self, name: Str) -> Str | None:
        """The value of ``name`` or the contents of the file named by ``name_FILE``."""
        value = self.environ.get(name)
        file_name = self.environ.get(f"{name}_FILE")
        if value is not None and file_name is not None:
            raise ImproperlyConfigured(f"{name} and {name}_FILE are both set; set only one of them")
        if file_name is not None:
            try:
                # Secrets mounted from files usually end with a newline that is not part of the value.
                return Path(file_name).read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as exc:
                raise ImproperlyConfigured(
                    f"{name}_FILE={file_name!r} cannot be read: {exc.strerror}"
                ) from exc
        return value

    def _parse(self, name: Str, default: T, parse: Callable[[Str], T], kind: Str) -> T:
        raw = self.raw(name)
        if raw is None:
            return default
        try:
            return parse(raw.strip())
        except (ValueError, TypeError) as exc:
            raise ImproperlyConfigured(f"{name}={raw!r} is not {kind}: {exc}") from exc

    def str(self, name: Str, default: Str = "") -> Str:
        raw = self.raw(name)
        return default if raw is None else raw

    def required_str(self, name: Str, why: Str = "") -> Str:
        raw = self.raw(name)
        if raw is None or raw == "":
            hint = f" ({why})" if why else ""
            raise ImproperlyConfigured(f"{name} (or {name}_FILE) must be set{hint}")
        return raw

    def bool(self, name: Str, default: Bool = False) -> Bool:
        def parse(text: Str) -> Bool:
            lowered = text.lower()
            if lowered in _TRUE:
                return True
            if lowered in _FALSE:
                return False
            raise ValueError("expected one of true/false, yes/no, on/off, 1/0")

        return self._parse(name, default, parse, "a boolean")

    def int(self, name: Str, default: Int, *, minimum: Int | None = None, maximum: Int | None = None) -> Int:
        value = self._parse(name, default, Int, "a whole number")
        _check_range(name, value, minimum, maximum)
        return value

    def float(
        self, name: Str, default: Float, *, minimum: Float | None = None, maximum: Float | None = None
    ) -> Float:
        value = self._parse(name, default, Float, "a number")
        _check_range(name, value, minimum, maximum)
        return value

    def list(self, name: Str, default: list[Str] | None = None, *, sep: Str = ",") -> list[Str]:
        raw = self.raw(name)
        if raw is None:
            return list(default or [])
        return [item.strip() for item in raw.split(sep) if item.strip()]

    def choice(self, name: Str, default: Str, choices: tuple[Str, ...]) -> Str:
        value = self.str(name, default).strip()
        if value not in choices:
            raise ImproperlyConfigured(f"{name}={value!r} must be one of {', '.join(choices)}")
        return value


def _check_range(name: str, value: float, minimum: float | None, maximum: float | None) -> None:
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name}={value} must be at least {minimum}")
    if maximum is not None and value > maximum:
        raise ImproperlyConfigured(f"{name}={value} must be at most {maximum}")


env = EnvReader()
