"""POST /jobs input: parse the body (JSON or YAML), validate it as a `vit.config.JobSpec`, and confine every
path a spec names to the service's data and storage directories. Refusals are InvalidInputError, in pydantic's
shape with `loc` = ["body", *field path]."""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from api.core.errors import InvalidInputError, invalid
from api.core.settings import Settings
from vit.config import SHARD_URL_SCHEMES, JobSpec

JSON_TYPES = ("application/json",)
# Documented; any other non-JSON type is read as YAML too, except the form types (api/server/request_guard.py).
YAML_TYPES = ("application/yaml", "text/yaml", "application/x-yaml")
# A spec nests a few levels deep; parsers recurse once per level, and a body of 10,000 brackets would exhaust
# Python's stack (a RecursionError: a 500, then a dropped connection). Checked before the recursive parse.
MAX_DEPTH = 32
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_JSON_BRACKET = re.compile(rb"[\[\]{}]")
# No spec field needs a longer integer; Python refuses to parse one of 4,300+ digits at all (a ValueError).
MAX_INT_DIGITS = 64
# A lone UTF-16 surrogate (JSON's "\ud800") decodes to a str that cannot be encoded back: not text.
_SURROGATE = re.compile("[\ud800-\udfff]")


class _BadNumber(str):
    """A number the parser met and that no field can take (NaN, an infinity, an overlong integer): kept as its
    text, so that check_values reports it at its field instead of the parser failing without a place."""


def parse_spec(body: bytes, content_type: str) -> JobSpec:
    return check_spec(load_document(body, content_type))


def load_document(body: bytes, content_type: str) -> Any:
    """The body as JSON (for a JSON content type) or as YAML without aliases; 422 when it is neither."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    # YAML is a superset of JSON, so any other type is read as YAML (form types never get here: a 415).
    document = _load_json(body) if media_type in JSON_TYPES else _load_yaml(body)
    check_values(document, ())
    return document


def check_values(value: Any, loc: tuple[str | int, ...]) -> None:
    """422 at the first value no field can hold and that would fail later as a 500: a non-finite float (JSON has
    none to write back, optimizers fail on one), an overlong integer, a string with a lone surrogate (no
    encoding writes it). The document is at most MAX_DEPTH levels deep, so the recursion is bounded."""
    if isinstance(value, _BadNumber):
        if value.lstrip("+-").isdigit():
            raise invalid(
                loc,
                f"an integer of {len(value.lstrip('+-'))} digits; at most {MAX_INT_DIGITS}",
                "int_too_long",
            )
        raise invalid(loc, f"{value} is not a finite number", "finite_number")
    if isinstance(value, float) and not math.isfinite(value):
        raise invalid(loc, f"{value} is not a finite number", "finite_number")
    if isinstance(value, str) and _SURROGATE.search(value):
        raise invalid(loc, "contains a lone UTF-16 surrogate (not text)", "string_unicode")
    if isinstance(value, dict):
        for key, item in value.items():
            check_values(key, loc)
            check_values(item, (*loc, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            check_values(item, (*loc, index))


def _json_int(text: str) -> int | _BadNumber:
    return int(text) if len(text.lstrip("-")) <= MAX_INT_DIGITS else _BadNumber(text)


def _json_float(text: str) -> float | _BadNumber:
    number = float(text)
    return number if math.isfinite(number) else _BadNumber(text)


def check_spec(data: Any) -> JobSpec:
    """`data` validated as a JobSpec the service can run; 422 naming each bad field otherwise."""
    if not isinstance(data, dict):
        raise invalid((), "a spec is a mapping with at least `kind: pretrain` or `kind: finetune`")
    try:
        spec = JobSpec.model_validate(data)
    except ValidationError as error:
        # Through JSON so that ctx values (exceptions raised by validators) become plain strings.
        details = json.loads(error.json(include_url=False))
        for detail in details:
            detail["loc"] = ["body", *detail["loc"]]
        raise InvalidInputError(details) from None
    return spec


def _load_json(body: bytes) -> Any:
    _check_json_depth(body)
    try:
        return json.loads(body, parse_int=_json_int, parse_float=_json_float, parse_constant=_BadNumber)
    except json.JSONDecodeError as error:
        raise invalid(
            (error.pos,),
            f"invalid JSON at line {error.lineno} column {error.colno}: {error.msg}",
            "json_invalid",
        ) from None
    except UnicodeDecodeError:
        raise invalid((), "the body is not UTF-8 text", "json_invalid") from None


def _check_json_depth(body: bytes) -> None:
    """Count bracket depth over the bytes with strings blanked out: no recursion, whatever the nesting."""
    depth = 0
    skeleton = _JSON_STRING.sub(b'""', body)  # JSON strings hold no raw newline: line numbers are kept
    for bracket in _JSON_BRACKET.finditer(skeleton):
        depth += 1 if bracket[0] in b"[{" else -1
        if depth > MAX_DEPTH:
            line = skeleton.count(b"\n", 0, bracket.start()) + 1
            raise invalid((), f"nested deeper than {MAX_DEPTH} levels (at line {line})", "too_deep")


class _TooDeep(yaml.composer.ComposerError):
    """Nesting past MAX_DEPTH: the same error type ("too_deep") as for JSON."""


class _SpecLoader(yaml.SafeLoader):
    """Safe YAML without aliases: `*name` shares one object many times over, so a few hundred bytes can stand for
    billions of values that validation and the error report would then walk (a "billion laughs" body).

    And no deeper than MAX_DEPTH: PyYAML's scanner and parser are state machines, only the composer recurses
    (once per level, flow `[[[` and block indentation alike), so counting its levels stops the recursion early."""

    depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not allowed in a spec", self.peek_event().start_mark
            )
        if self.depth >= MAX_DEPTH:
            raise _TooDeep(None, None, f"nested deeper than {MAX_DEPTH} levels", self.peek_event().start_mark)
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_yaml_int(self, node: Any) -> Any:
        digits = str(node.value).replace("_", "").lstrip("+-")
        return _BadNumber(node.value) if len(digits) > MAX_INT_DIGITS else super().construct_yaml_int(node)


_SpecLoader.add_constructor("tag:yaml.org,2002:int", _SpecLoader.construct_yaml_int)


def _load_yaml(body: bytes) -> Any:
    try:
        return yaml.load(body, Loader=_SpecLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error)
        kind = "too_deep" if isinstance(error, _TooDeep) else "yaml_invalid"
        raise invalid((), f"invalid YAML{where}: {problem}", kind) from None


def confine_paths(
    spec: JobSpec, settings: Settings, *, may_read_job: Callable[[int], bool] | None = None
) -> JobSpec:
    """The spec with data.root and init.weights resolved (symlinks followed; relative to the data directory)
    and checked: datasets inside the data directory (a dataset with download: true writes there, never into
    run directories), weights inside the data or storage directory. No spec makes the service read elsewhere.
    With `may_read_job` (a non-admin's submit), weights under storage must lie in the run directory of a job
    it allows; any other is answered as missing, so another owner's run does not even show it exists."""
    updates: dict[str, Any] = {}
    if spec.data.dataset == "shards" and (spec.data.root or "").startswith(SHARD_URL_SCHEMES):
        _check_data_url(spec.data.root or "", settings)  # no path: the trainer fetches it as it is
    elif spec.data.root is not None:
        root = _confined(spec.data.root, settings, ("data", "root"), storage_too=False)
        updates["data"] = spec.data.model_copy(update={"root": root})
    if spec.init is not None and spec.init.weights is not None:
        weights = _confined(spec.init.weights, settings, ("init", "weights"))
        # os.path.exists, not Path.exists: a name too long for the file system is "no such file", not an OSError.
        if not os.path.exists(weights) or not _in_readable_run(weights, settings, may_read_job):
            # Refused now: accepted, the job could only fail seconds later when its trainer looks.
            raise invalid(
                ("init", "weights"),
                f"no weights at {weights} (a weights file, checkpoint or run directory under the data or storage "
                "directory); to start from a job of this service, set init.from_job instead",
                "weights_not_found",
            )
        updates["init"] = spec.init.model_copy(update={"weights": weights})
    return spec.model_copy(update=updates) if updates else spec


def _check_data_url(url: str, settings: Settings) -> None:
    """Shards over HTTP(S) only from a prefix the operator allowed (VITQ_DATA_URLS): a job must not make the
    workers fetch from anywhere they can reach (an internal service, a cloud metadata address)."""
    allowed = settings.data_url_prefixes
    if not any(url.startswith(prefix) for prefix in allowed):
        where = f"one of {', '.join(allowed)}" if allowed else "none is allowed on this service"
        raise invalid(
            ("data", "root"),
            f"shards may be read from URLs under the prefixes in VITQ_DATA_URLS ({where})",
            "url_not_allowed",
        )


def _in_readable_run(path: str, settings: Settings, may_read_job: Callable[[int], bool] | None) -> bool:
    storage = Path(os.path.realpath(settings.resolved_storage))
    resolved = Path(path)
    if may_read_job is None or not resolved.is_relative_to(storage):
        return True
    parts = resolved.relative_to(storage).parts  # jobs/<id>/... is the run directory of job <id>
    return len(parts) >= 2 and parts[0] == "jobs" and parts[1].isdigit() and may_read_job(int(parts[1]))


def _confined(path: str, settings: Settings, loc: tuple[str, ...], *, storage_too: bool = True) -> str:
    if "\0" in path:  # no file name holds one; os.path.realpath would raise ValueError (a 500)
        raise invalid(loc, "must not contain a NUL character", "path_not_allowed")
    directories = [settings.resolved_data_dir, settings.resolved_storage][: 2 if storage_too else 1]
    allowed = [Path(os.path.realpath(d)) for d in directories]
    resolved = Path(os.path.realpath(settings.resolved_data_dir / path))
    if not any(resolved.is_relative_to(directory) for directory in allowed):
        inside = " or ".join(str(d) for d in allowed)
        raise invalid(loc, f"must be inside {inside}", "path_not_allowed")
    return str(resolved)
