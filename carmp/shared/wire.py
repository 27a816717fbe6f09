"""JSON on the wire for carmp's value types: to_json/from_json written once over each
type's own to_dict/from_dict (agent types, pattern results, mailbox messages)."""

from __future__ import annotations

from typing import Any, Self

import orjson

from carmp.errors import InvalidAgentJson


class JsonOut:
    """to_json over a type's to_dict: results that only travel outwards."""

    __slots__ = ()

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def to_json(self) -> str:
        return orjson.dumps(self.to_dict()).decode()


class Wire(JsonOut):
    """to_json/from_json over a type's to_dict/from_dict."""

    __slots__ = ()

    @classmethod
    def from_dict(cls, data: Any) -> Self:
        raise NotImplementedError

    @classmethod
    def from_json(cls, text: str | bytes) -> Self:
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise InvalidAgentJson(f"{cls.__name__} JSON is not valid JSON: {exc}") from None
        return cls.from_dict(data)
