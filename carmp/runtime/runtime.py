"""Runtime: CAR's proposal executor (CAR-SPEC 2.8), one per agent, in any process.

`execute(proposal)` (a Proposal, or its wire form as a dict or JSON text):

1. proposal_received. The WHOLE proposal is checked before anything runs: fields, ids,
   dependencies, cycles, references (Proposal.plan), tools (registered?) and parameters
   without references (against the tool's JSON Schema). Any problem: one action_rejected
   event per problem, and InvalidProposal listing them all; nothing ran, nothing was
   written.
2. Levels run in order. A level with no abort-on-failure action (failure_behavior abort)
   runs its actions concurrently on threads (at most LEVEL_THREADS at once); any other
   level runs them one by one, in the calling thread.
3. Per action: skipped (action_skipped) when an action it depends on did not succeed;
   references resolved; parameters that held references checked against the schema
   (action_rejected); action_validated; policy admission, `policies.admit(action, state)`
   with the resolved parameters (policy_violation per violation, then action_rejected; the
   tool is not called); for an idempotent tool_call, the idempotency cache (a hit is
   action_deduplicated); then action_executing and the run: a tool call bounded by
   timeout_ms, a state_write, a state_read (output: the value) or an assertion (fails
   unless the key holds `expected`; output: the value). An ordinary failure under
   failure_behavior "retry" is retried up to max_retries times after a backoff of
   retry_base * 2**(retry - 1) seconds (0.1, 0.2, 0.4 ... by default), each announced by
   action_retrying. Then action_succeeded, or action_failed.
4. State effects of a successful action: a state_write writes its key, and every action
   writes its `expected_effects` ({key: value}; a value may reference the action's own
   output, "$<own id>.output"), each write tagged with the action id and announced by
   state_changed. A deduplicated action commits its effects too (its first run's writes
   may have been rolled back since).
5. Outcome of a failed or rejected action: with failure_behavior "skip", action_skipped,
   and the actions depending on it are skipped; otherwise, and always for a terminal
   failure (TerminalToolError), the proposal aborts: actions not yet run are skipped, the
   proposal's own writes are undone where no one changed them since (see
   carmp.runtime.writes), and state_rollback reports the restored keys and the conflicts.
   Failures that no retry can fix are not retried: a missing referenced field, an output
   that is not JSON, a refused state write.

Each runtime has its own tools and idempotency cache (CAR): two runtimes of one infra do
not deduplicate against each other, unless shared_idempotency=True puts the cache in the
shared state store (carmp.runtime.idempotency), for every runtime that opts in.

Standalone, `Runtime()` makes a private StateStore and EventLog (and closes them in
close()) and an empty PolicyEngine. SharedInfra.make_runtime() shares the infra's state,
log and policies. An isolated runtime (SharedInfra.make_isolated_runtime) runs against an
AgentContext: writes land in the agent's overlay, reads fall through to the shared store,
and events still go to the shared log (CAR gives the agent a private log; carmp keeps
one log per run so that every process sees every event), with the overlay's agent name
in state_changed events.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import orjson

from carmp.errors import EventTooLarge, InvalidProposal, TerminalToolError
from carmp.runtime.actions import (
    Action,
    ActionResult,
    ActionStatus,
    ActionType,
    FailureBehavior,
    Plan,
    Proposal,
    ProposalResult,
    references,
    resolve,
)
from carmp.runtime.context import AgentContext
from carmp.runtime.idempotency import (
    Cached,
    Claim,
    IdempotencyCache,
    LocalIdempotency,
    SharedIdempotency,
    idempotency_key,
)
from carmp.runtime.policy import PolicyEngine, PolicyViolation
from carmp.runtime.tools import ToolRegistry, ToolSpec
from carmp.runtime.writes import ProposalWrites, Rollback, writes_for
from carmp.shared.event import EventKind
from carmp.shared.eventlog import EventLog
from carmp.shared.state import StateStore

RETRY_BASE = 0.1  # seconds before the first retry; doubled for each next one
LEVEL_THREADS = 32  # at most this many actions of a concurrent level run at once
LIST_ITEMS_KEPT = 8  # of a list in an event too large for the log (see _append_fitting)

StateView = StateStore | AgentContext


class Policies(Protocol):
    def admit(self, action: Action, state: StateView) -> list[PolicyViolation]: ...


class _Failure(Exception):
    """An action failed: `retryable` when another attempt may succeed, `terminal` when
    the proposal must abort whatever the action's failure_behavior."""

    def __init__(self, message: str, *, retryable: bool = False, terminal: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.terminal = terminal
        self.attempts = 0  # set by the attempt loop


class _Refused(Exception):
    """A run-time check or a policy refused the action before it ran."""


class Runtime:
    """Runs proposals against a state store (or an agent's overlay), a log and policies.

    shared_idempotency: keep the idempotency cache in the shared state store instead of
    this runtime; retry_base: seconds before the first retry; sleep: how the runtime waits
    between retries and between polls of the shared cache (tests pass a recorder)."""

    def __init__(self, state: StateView | None = None, log: EventLog | None = None,
                 policies: Policies | None = None, *, shared_idempotency: bool = False,
                 retry_base: float = RETRY_BASE,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._owned: list[StateStore | EventLog] = []
        if state is None:
            state = StateStore()
            self._owned.append(state)
        if log is None:
            try:
                log = EventLog()
            except BaseException:
                self.close()
                raise
            self._owned.append(log)
        self.state: StateView = state
        self.log = log
        self.policies: Policies = PolicyEngine() if policies is None else policies
        self.tools = ToolRegistry()
        self.retry_base = retry_base
        self._sleep = sleep
        shared_store = state.parent_state if isinstance(state, AgentContext) else state
        self._cache: IdempotencyCache = (SharedIdempotency(shared_store, sleep)
                                         if shared_idempotency else LocalIdempotency())

    def register_tool(self, name: str, fn: Callable[..., Any],
                      schema: dict[str, Any] | None = None, description: str = "") -> ToolSpec:
        """Add (or replace) a tool; InvalidTool for a bad name, fn or JSON Schema."""
        return self.tools.register(name, fn, schema, description)

    def execute(self, proposal: Proposal | Mapping[str, Any] | str | bytes) -> ProposalResult:
        """Run a proposal (see the module docstring); InvalidProposal when it is malformed."""
        if not isinstance(proposal, Proposal):
            try:
                proposal = (Proposal.from_json(proposal) if isinstance(proposal, (str, bytes))
                            else Proposal.from_dict(proposal))
            except InvalidProposal as bad:
                self._reject(bad)
                raise
        _append_fitting(self.log, EventKind.PROPOSAL_RECEIVED, None, proposal.id,
                       {"actions": len(proposal.actions)})
        return _Execution(self, proposal, self._plan(proposal)).run()

    def _plan(self, proposal: Proposal) -> Plan:
        problems = self._tool_problems(proposal)
        try:
            plan = proposal.plan()
        except InvalidProposal as bad:
            problems = [*bad.problems, *problems]
        if problems:
            rejection = InvalidProposal(proposal.id, tuple(problems))
            self._reject(rejection)
            raise rejection
        return plan

    def _tool_problems(self, proposal: Proposal) -> list[tuple[str | None, str]]:
        problems: list[tuple[str | None, str]] = []
        for action in proposal.actions:
            if action.type is not ActionType.TOOL_CALL:
                continue
            assert action.tool is not None
            spec = self.tools.get(action.tool)
            if spec is None:
                known = ", ".join(sorted(self.tools)) or "none"
                problems.append((action.id, f"calls tool {action.tool!r}, which is not "
                                            f"registered (registered tools: {known})"))
            elif not references(action.parameters):
                problems.extend((action.id, f"tool {action.tool!r} refuses {problem}")
                                for problem in spec.problems(action.parameters))
        return problems

    def _reject(self, bad: InvalidProposal) -> None:
        for action_id, reason in bad.problems:
            _append_fitting(self.log, EventKind.ACTION_REJECTED, action_id, bad.proposal_id,
                           {"reason": reason})

    def close(self) -> None:
        """Close the store and log this runtime made itself; shared ones stay open."""
        while self._owned:
            self._owned.pop().close()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Runtime tools={sorted(self.tools)} state={self.state!r}>"


class _Execution:
    """One run of one proposal."""

    def __init__(self, runtime: Runtime, proposal: Proposal, plan: Plan) -> None:
        self.runtime = runtime
        self.proposal = proposal
        self.plan = plan
        self.writes: ProposalWrites = writes_for(runtime.state, proposal.id)
        self.results: dict[str, ActionResult] = {}
        self.outputs: dict[str, Any] = {}
        overlay = runtime.state.agent_name if isinstance(runtime.state, AgentContext) else None
        self.overlay_note = {} if overlay is None else {"overlay": overlay}

    def log(self, kind: EventKind, action: Action, **data: Any) -> None:
        _append_fitting(self.runtime.log, kind, action.id, self.proposal.id, data)

    def run(self) -> ProposalResult:
        try:
            abort = self.run_levels()
        except BaseException:  # an interrupt or a broken log: undo, then let it surface
            self.roll_back(None)
            raise
        results = tuple(self.results[a.id] for a in self.proposal.actions)
        if abort is None:
            return ProposalResult(self.proposal.id, results)
        rollback = self.roll_back(abort[0])
        return ProposalResult(self.proposal.id, results, aborted=True,
                              error=f"action {abort[0].id!r} {abort[1]}",
                              rolled_back=rollback.restored,
                              rollback_conflicts=rollback.conflicts)

    def roll_back(self, culprit: Action | None) -> Rollback:
        rollback = self.writes.rollback()
        _append_fitting(self.runtime.log, EventKind.STATE_ROLLBACK,
                       None if culprit is None else culprit.id, self.proposal.id,
                       {"restored": list(rollback.restored),
                        "conflicts": list(rollback.conflicts), **self.overlay_note})
        return rollback

    def run_levels(self) -> tuple[Action, str] | None:
        """Run the levels; the action that aborted the proposal and why, or None."""
        abort: tuple[Action, str] | None = None
        for level in self.plan.levels:
            if abort is None and len(level) > 1 and not any(
                    a.failure_behavior is FailureBehavior.ABORT for a in level):
                with concurrent.futures.ThreadPoolExecutor(min(len(level), LEVEL_THREADS)) as pool:
                    reasons = list(pool.map(self.run_action, level))
                abort = next(((a, r) for a, r in zip(level, reasons) if r is not None), None)
                continue
            for action in level:
                if abort is not None:
                    self.skip(action, f"not run: the proposal aborted at {abort[0].id!r}")
                elif (reason := self.run_action(action)) is not None:
                    abort = (action, reason)
        return abort

    def skip(self, action: Action, reason: str) -> None:
        self.results[action.id] = ActionResult(action.id, ActionStatus.SKIPPED, error=reason)
        self.log(EventKind.ACTION_SKIPPED, action, reason=reason)

    def run_action(self, action: Action) -> str | None:
        """Run one action and record its result; why the proposal must abort, or None."""
        blocked = sorted(p for p in self.plan.parents[action.id]
                         if self.results[p].status is not ActionStatus.SUCCEEDED)
        if blocked:
            self.skip(action, f"not run: {blocked[0]!r}, which it depends on, did not succeed")
            return None
        started = time.monotonic()
        attempts = 0
        try:
            parameters = self.admit(action)
            output, attempts, deduplicated = self.perform(action, parameters)
            self.commit_effects(action, output)
        except _Refused as refused:
            status, error, terminal = ActionStatus.REJECTED, str(refused), False
            self.log(EventKind.ACTION_REJECTED, action, reason=error)
        except _Failure as failure:
            status, error, terminal = ActionStatus.FAILED, str(failure), failure.terminal
            attempts = max(attempts, failure.attempts)
            self.log(EventKind.ACTION_FAILED, action, error=error, attempts=attempts,
                     terminal=terminal)
        else:
            duration_ms = (time.monotonic() - started) * 1000
            self.outputs[action.id] = output
            self.results[action.id] = ActionResult(action.id, ActionStatus.SUCCEEDED, output,
                                                   None, attempts, duration_ms, deduplicated)
            self.log(EventKind.ACTION_SUCCEEDED, action, attempts=attempts,
                     duration_ms=duration_ms, deduplicated=deduplicated)
            return None
        self.results[action.id] = ActionResult(action.id, status, None, error, attempts,
                                               (time.monotonic() - started) * 1000)
        verb = "was rejected" if status is ActionStatus.REJECTED else "failed"
        if action.failure_behavior is FailureBehavior.SKIP and not terminal:
            self.log(EventKind.ACTION_SKIPPED, action,
                     reason=f"{verb} and its failure_behavior is skip")
            return None
        return f"{verb}: {error}"

    def admit(self, action: Action) -> dict[str, Any]:
        """The action's resolved parameters, once its checks and policies let it run."""
        try:
            parameters: dict[str, Any] = resolve(action.parameters, self.outputs)
        except LookupError as exc:
            raise _Failure(f"parameters: {_unquoted(exc)}") from None
        if action.type is ActionType.TOOL_CALL and references(action.parameters):
            assert action.tool is not None
            problems = self.runtime.tools[action.tool].problems(parameters)
            if problems:
                raise _Refused(f"tool {action.tool!r} refuses {'; '.join(problems)}")
        self.log(EventKind.ACTION_VALIDATED, action)
        resolved = dataclasses.replace(action, parameters=parameters)
        violations = self.runtime.policies.admit(resolved, self.runtime.state)
        for violation in violations:
            self.log(EventKind.POLICY_VIOLATION, action, policy=violation.policy_name,
                     reason=violation.reason)
        if violations:
            raise _Refused("refused by policy " + "; ".join(
                f"{v.policy_name!r}: {v.reason}" for v in violations))
        return parameters

    def perform(self, action: Action, parameters: dict[str, Any]) -> tuple[Any, int, bool]:
        """(output, attempts, deduplicated): the action run, from the cache or with retries."""
        if action.type is not ActionType.TOOL_CALL or not action.idempotent:
            return (*self.attempt(action, parameters), False)
        assert action.tool is not None
        deadline = None if action.timeout_ms is None \
            else time.monotonic() + action.timeout_ms / 1000
        try:
            found = self.runtime._cache.claim(idempotency_key(action.tool, parameters), deadline)
        except TimeoutError as exc:
            raise _Failure(str(exc), retryable=False) from None
        if isinstance(found, Cached):
            self.log(EventKind.ACTION_DEDUPLICATED, action)
            return found.output, 0, True
        return (*self.attempt_claimed(action, parameters, found), False)

    def attempt_claimed(self, action: Action, parameters: dict[str, Any],
                        claim: Claim) -> tuple[Any, int]:
        try:
            output, attempts = self.attempt(action, parameters)
        except BaseException:
            claim.abandon()
            raise
        claim.finish(output)
        return output, attempts

    def attempt(self, action: Action, parameters: dict[str, Any]) -> tuple[Any, int]:
        """(output, attempts): run, retrying ordinary failures as the action allows."""
        retries = action.max_retries if action.failure_behavior is FailureBehavior.RETRY else 0
        attempt = 0
        while True:
            attempt += 1
            self.log(EventKind.ACTION_EXECUTING, action, attempt=attempt)
            try:
                return self.run_once(action, parameters), attempt
            except _Failure as failure:
                failure.attempts = attempt
                if not failure.retryable or attempt > retries:
                    raise
                delay = self.runtime.retry_base * 2 ** (attempt - 1)
                self.log(EventKind.ACTION_RETRYING, action, attempt=attempt + 1,
                         delay_s=delay, error=str(failure))
                self.runtime._sleep(delay)

    def run_once(self, action: Action, parameters: dict[str, Any]) -> Any:
        state = self.runtime.state
        if action.type is ActionType.STATE_WRITE:
            return parameters["value"]  # written with the effects, once it succeeded
        if action.type is ActionType.STATE_READ:
            return state.get(parameters["key"])
        if action.type is ActionType.ASSERTION:
            actual = state.get(parameters["key"])
            if _canonical(actual) != _canonical(parameters["expected"]):
                raise _Failure(f"assertion failed: state key {parameters['key']!r} holds "
                               f"{actual!r}, expected {parameters['expected']!r}",
                               retryable=True)
            return actual
        assert action.tool is not None
        spec = self.runtime.tools[action.tool]
        timeout = None if action.timeout_ms is None else action.timeout_ms / 1000
        try:
            output = spec.invoke(parameters, timeout)
        except TerminalToolError as exc:
            raise _Failure(f"terminal failure of tool {action.tool!r}: {exc}",
                           terminal=True) from None
        except Exception as exc:
            raise _Failure(_describe(exc), retryable=True) from None
        try:
            orjson.dumps(output)
        except TypeError:
            raise _Failure(f"tool {action.tool!r} returned a {type(output).__name__}, which "
                           "is not JSON; return dicts, lists, str, int, float, bool or None"
                           ) from None
        return output

    def commit_effects(self, action: Action, output: Any) -> None:
        try:
            effects = resolve(action.expected_effects, {**self.outputs, action.id: output})
        except LookupError as exc:
            raise _Failure(f"expected_effects: {_unquoted(exc)}") from None
        if action.type is ActionType.STATE_WRITE:
            effects = {action.parameters["key"]: output, **effects}
        for key, value in effects.items():
            try:
                self.writes.write(key, value, action.id)
            except (TypeError, ValueError, MemoryError) as exc:  # incl. carmp's StateErrors
                raise _Failure(f"could not write state key {key!r}: {exc}") from None
            self.log(EventKind.STATE_CHANGED, action, key=key, **self.overlay_note)



def _append_fitting(log: EventLog, kind: EventKind, action_id: str | None,
                    proposal_id: str | None, data: dict[str, Any]) -> None:
    """Append a runtime event whose texts come from the proposal or a tool (ids, a
    rejection reason, a tool's error message, the keys a rollback restored) and so may be
    of any size: cut to fit the log's max_event_size, so that neither InvalidProposal nor a
    failed action turns into EventTooLarge, and the event is never lost."""
    try:
        log.append(kind, action_id=action_id, proposal_id=proposal_id, data=data)
        return
    except EventTooLarge:
        pass
    room = max(16, log.max_event_size // 16)
    try:
        log.append(kind, action_id=_cut(action_id, room), proposal_id=_cut(proposal_id, room),
                   data={name: _cut(value, room) for name, value in data.items()})
    except EventTooLarge:  # still too large (many long texts, or escapes of 6 bytes each)
        log.append(kind, action_id=_cut(action_id, 16), proposal_id=_cut(proposal_id, 16),
                   data={"cut_to_fit": sorted(data)})


def _cut(value: Any, room: int) -> Any:
    """A long string shortened to `room` characters and a note of its length; a long list
    to its first LIST_ITEMS_KEPT items (each cut) and a note of its length."""
    if isinstance(value, str):
        return value if len(value) <= room else f"{value[:room]}... ({len(value)} characters)"
    if isinstance(value, list):
        kept = [_cut(item, room) for item in value[:LIST_ITEMS_KEPT]]
        return kept if len(value) <= LIST_ITEMS_KEPT else [*kept, f"... ({len(value)} items)"]
    return value


def _unquoted(exc: LookupError) -> str:
    """A LookupError's message (str() of one adds quotes)."""
    return str(exc.args[0]) if exc.args else type(exc).__name__


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _canonical(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
