"""Tools: the host's functions a proposal may call, each with a JSON Schema for its
parameters (CAR-SPEC 2.8).

A tool is called with its parameters as keyword arguments, `fn(**parameters)`, and
returns a JSON value (its output). Raising an exception is an ordinary failure (retried
under failure_behavior "retry"); raising TerminalToolError is a terminal one. `async def`
tools run on an event loop of their own (in a helper thread when the calling thread
already runs one).

Timeouts: an async tool is cancelled at its deadline. A sync tool with a timeout runs in
a helper thread and the caller stops waiting at the deadline, but Python cannot kill a
thread: a timed-out sync tool runs on in the background until it returns, and whatever
it does then is ignored.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from carmp.errors import InvalidTool

if TYPE_CHECKING:
    from jsonschema.protocols import Validator


@dataclass(frozen=True)
class ToolSpec:
    """A registered tool. `schema` is the JSON Schema of the parameters object (None:
    any parameters)."""

    name: str
    fn: Callable[..., Any]
    schema: dict[str, Any] | None = None
    description: str = ""
    is_async: bool = field(init=False)
    _validator: Validator | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if type(self.name) is not str or not self.name:
            raise InvalidTool(f"a tool name must be a non-empty str, got {self.name!r}")
        if not callable(self.fn):
            raise InvalidTool(f"tool {self.name!r}: fn must be callable, got {self.fn!r}")
        if not isinstance(self.description, str):
            raise InvalidTool(f"tool {self.name!r}: description must be a str, got "
                              f"{self.description!r}")
        object.__setattr__(self, "is_async", inspect.iscoroutinefunction(self.fn)
                           or inspect.iscoroutinefunction(getattr(self.fn, "__call__", None)))
        object.__setattr__(self, "_validator", None if self.schema is None
                           else _validator(self.name, self.schema))

    def problems(self, parameters: Mapping[str, Any]) -> list[str]:
        """Why the schema refuses `parameters`, one line per violation (empty: fine)."""
        if self._validator is None:
            return []
        errors = sorted(self._validator.iter_errors(parameters),
                        key=lambda e: ([str(p) for p in e.path], e.message))
        return [f"parameters{''.join(f'[{p!r}]' for p in error.path)}: {error.message}"
                for error in errors]

    def invoke(self, parameters: Mapping[str, Any], timeout: float | None) -> Any:
        """fn(**parameters), bounded by `timeout` seconds (TimeoutError past it)."""
        if self.is_async:
            def run_loop() -> Any:
                return asyncio.run(_bounded(self.fn(**parameters), timeout, self.name))
            return _in_thread(run_loop, None, self.name) if _loop_running() else run_loop()
        if timeout is None:
            return self.fn(**parameters)
        return _in_thread(lambda: self.fn(**parameters), timeout, self.name)


class ToolRegistry(Mapping[str, ToolSpec]):
    """One runtime's tools by name; registering a name again replaces the tool."""

    def __init__(self) -> None:
        self._tools: dict[str, ToolSpec] = {}

    def register(self, name: str, fn: Callable[..., Any], schema: dict[str, Any] | None = None,
                 description: str = "") -> ToolSpec:
        spec = ToolSpec(name, fn, schema, description)
        self._tools[name] = spec
        return spec

    def __getitem__(self, name: str) -> ToolSpec:
        return self._tools[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tools)

    def __len__(self) -> int:
        return len(self._tools)


def _validator(name: str, schema: object) -> Validator:
    import jsonschema  # only tools with a schema need it, and it takes a while to import

    if not isinstance(schema, dict):
        raise InvalidTool(f"tool {name!r}: schema must be a JSON Schema object (a dict), got "
                          f"{type(schema).__name__}")
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except jsonschema.exceptions.SchemaError as exc:
        raise InvalidTool(f"tool {name!r}: the schema is not a valid JSON Schema: "
                          f"{exc.message}; fix the schema and register the tool again") from None
    return cls(schema)


async def _bounded(call: Any, timeout: float | None, name: str) -> Any:
    try:
        return await asyncio.wait_for(call, timeout)
    except TimeoutError:
        raise TimeoutError(_timed_out(name, timeout, cancelled=True)) from None


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _in_thread(call: Callable[[], Any], timeout: float | None, name: str) -> Any:
    """call() in a helper thread, waiting at most `timeout` seconds for it."""
    outcome: list[Any] = []
    failure: list[BaseException] = []
    done = threading.Event()

    def run() -> None:
        try:
            outcome.append(call())
        except BaseException as exc:  # handed to the waiting caller
            failure.append(exc)
        finally:
            done.set()

    threading.Thread(target=run, name=f"carmp-tool-{name}", daemon=True).start()
    if not done.wait(timeout):
        raise TimeoutError(_timed_out(name, timeout, cancelled=False))
    if failure:
        raise failure[0]
    return outcome[0]


def _timed_out(name: str, timeout: float | None, *, cancelled: bool) -> str:
    fate = ("it was cancelled" if cancelled else
            "its thread cannot be killed and runs on, its result ignored")
    return f"tool {name!r} did not finish within {round((timeout or 0) * 1000)} ms ({fate})"
