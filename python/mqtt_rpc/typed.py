"""Payloads in and answers out as the application's own types: a pydantic model (or a dict)
becomes the request's JSON, and ``response_model=T`` turns the answer's ``result`` into a
``T``. pydantic is optional: it is imported only when a call asks for a ``response_model``."""

from __future__ import annotations

import functools
import json
from typing import Any, Dict, Union

from .errors import PayloadError, ReplyValidationError

Encoded = Union[str, bytes, bytearray]


def encode(payload: Any) -> Encoded:
    """The request body of ``payload``: a ``dict`` as JSON (with ``json.dumps``'s default
    separators, the bytes the hand-written client sent), a pydantic model with its own
    ``model_dump_json()``; ``str``, ``bytes`` and anything else pass as they are (the core
    checks them)."""
    if isinstance(payload, dict):
        try:
            return json.dumps(payload)
        except (TypeError, ValueError) as error:
            raise PayloadError(f"the payload dict is not JSON-serialisable: {error}") from error
    dump = getattr(payload, "model_dump_json", None)
    if dump is not None and not isinstance(payload, type):
        text = dump()
        if isinstance(text, str):
            return text
    return payload  # type: ignore[no-any-return]


def _pydantic() -> Any:
    try:
        import pydantic
    except ImportError:
        raise ImportError(
            "response_model needs pydantic 2: pip install 'mqtt-rpc[pydantic]' (or pydantic>=2)"
        ) from None
    return pydantic


@functools.lru_cache(maxsize=256)
def _cached_adapter(model: Any) -> Any:
    return _pydantic().TypeAdapter(model)


def _adapter(model: Any) -> Any:
    try:
        return _cached_adapter(model)
    except TypeError:  # an unhashable type expression: made each time
        return _pydantic().TypeAdapter(model)


def check_model(model: Any) -> None:
    """Raises the clear ImportError before anything is sent, when pydantic is missing."""
    if model is not None:
        _pydantic()


def validate(reply: Dict[str, Any], model: Any) -> Any:
    """The answer's ``result`` as a ``model`` (a pydantic model class, or any type a
    ``pydantic.TypeAdapter`` accepts: ``list[Camera]``, ``dict[str, int]``...)."""
    pydantic = _pydantic()
    if "result" not in reply:
        raise ReplyValidationError("the answer has no result member to validate", reply)
    result = reply["result"]
    try:
        if isinstance(model, type) and issubclass(model, pydantic.BaseModel):
            return model.model_validate(result)  # type: ignore[attr-defined]
        return _adapter(model).validate_python(result)
    except pydantic.ValidationError as error:
        name = getattr(model, "__name__", None) or repr(model)
        raise ReplyValidationError(
            f"the answer's result is not a valid {name}: {error.error_count()} error(s), first: "
            f"{_first_error(error)}",
            reply,
            error.errors(include_url=False),
        ) from error


def _first_error(error: Any) -> str:
    first = error.errors(include_url=False)[0]
    where = ".".join(str(part) for part in first.get("loc", ())) or "result"
    return f"{where}: {first.get('msg', '')}"
