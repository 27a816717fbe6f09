"""Tools: JSON Schema checks of parameters (a bad schema fails at registration), sync and
async tools, and timeouts."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from carmp import InvalidTool, ToolSpec
from carmp.runtime.tools import ToolRegistry

WAIT = 60.0  # bounded waits: far above what any tool here needs

SEARCH_SCHEMA = {"type": "object", "properties": {"q": {"type": "string"},
                                                  "limit": {"type": "integer", "minimum": 1}},
                 "required": ["q"], "additionalProperties": False}


def search(q: str, limit: int = 10) -> dict[str, Any]:
    return {"q": q, "limit": limit}


def test_parameters_are_checked_against_the_schema() -> None:
    spec = ToolSpec("search", search, SEARCH_SCHEMA)
    assert spec.problems({"q": "x", "limit": 2}) == []
    assert spec.problems({"limit": 0, "extra": 1}) == [
        "parameters: 'q' is a required property",
        "parameters: Additional properties are not allowed ('extra' was unexpected)",
        "parameters['limit']: 0 is less than the minimum of 1",
    ]
    assert ToolSpec("anything", search).problems({"whatever": [1]}) == []


def test_the_schema_draft_follows_its_dollar_schema() -> None:
    draft4 = {"$schema": "http://json-schema.org/draft-04/schema#", "type": "object",
              "properties": {"n": {"type": "number", "maximum": 5, "exclusiveMaximum": True}}}
    spec = ToolSpec("old", search, draft4)  # draft 4's boolean exclusiveMaximum is valid there
    assert spec.problems({"n": 5}) == ["parameters['n']: 5 is greater than or equal to the maximum of 5"]
    with pytest.raises(InvalidTool):
        ToolSpec("new", search, {**draft4, "$schema": "https://json-schema.org/draft/2020-12/schema"})


@pytest.mark.parametrize("name, fn, schema, said", [
    ("", search, None, "a tool name must be a non-empty str"),
    ("t", "not callable", None, "fn must be callable"),
    ("t", search, {"type": "no-such-type"}, "the schema is not a valid JSON Schema"),
    ("t", search, {"properties": {"q": {"minLength": -1}}}, "not a valid JSON Schema"),
    ("t", search, ["type", "object"], "schema must be a JSON Schema object"),
])
def test_a_bad_tool_is_refused_at_registration(name: str, fn: Any, schema: Any, said: str) -> None:
    registry = ToolRegistry()
    with pytest.raises(InvalidTool, match=said):
        registry.register(name, fn, schema)
    assert len(registry) == 0


def test_registering_a_name_again_replaces_the_tool() -> None:
    registry = ToolRegistry()
    registry.register("t", search)
    replacement = registry.register("t", lambda: "new", description="the new one")
    assert list(registry) == ["t"] and registry["t"] is replacement
    assert registry["t"].invoke({}, None) == "new"


def test_sync_and_async_tools_are_called_with_keyword_parameters() -> None:
    async def fetch(url: str) -> str:
        await asyncio.sleep(0)
        return f"got {url}"

    assert ToolSpec("search", search).invoke({"q": "x"}, None) == {"q": "x", "limit": 10}
    assert ToolSpec("search", search).invoke({"q": "x"}, WAIT) == {"q": "x", "limit": 10}
    spec = ToolSpec("fetch", fetch)
    assert spec.is_async and spec.invoke({"url": "u"}, None) == "got u"

    async def inside_a_running_loop() -> Any:
        return spec.invoke({"url": "v"}, WAIT)

    assert asyncio.run(inside_a_running_loop()) == "got v"


def test_a_tools_exception_reaches_the_caller() -> None:
    def broken() -> None:
        raise KeyError("nope")

    with pytest.raises(KeyError, match="nope"):
        ToolSpec("broken", broken).invoke({}, WAIT)


def test_a_sync_tool_past_its_timeout_is_abandoned_not_awaited() -> None:
    release, finished = threading.Event(), threading.Event()

    def stuck() -> str:
        release.wait(WAIT)
        finished.set()
        return "late"

    with pytest.raises(TimeoutError, match="'stuck' did not finish within 50 ms .*runs on"):
        ToolSpec("stuck", stuck).invoke({}, 0.05)
    assert not finished.is_set()
    release.set()
    assert finished.wait(WAIT)


def test_an_async_tool_past_its_timeout_is_cancelled() -> None:
    cancelled = threading.Event()

    async def stuck() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(TimeoutError, match="'stuck' did not finish within 50 ms .*cancelled"):
        ToolSpec("stuck", stuck).invoke({}, 0.05)
    assert cancelled.is_set()
