"""Every error carmp raises, in one tree.

Each class is named for the state of the thing it hit, and also inherits the
stdlib class a caller would already catch for that situation. Every message says
what happened and what to do about it.

    CarmpError
    ├── SegmentError
    │   ├── SegmentNotFound ........ (FileNotFoundError)  attach: no such segment
    │   ├── SegmentExists .......... (FileExistsError)    create: name taken
    │   ├── SegmentCorrupt ......... (ValueError)         header/magic/version/size mismatch
    │   ├── SegmentClosed .......... (ValueError)         used after close()
    │   └── SharedMemoryFull ....... (MemoryError)        /dev/shm lacks room
    ├── WouldBlock ................. (BlockingIOError)    a *_nowait call could not proceed
    ├── LockError
    │   └── LockTimeout ............ (TimeoutError)       timed acquire gave up
    ├── WorkerCrashed .............. (ChildProcessError)  a worker died holding the task
    ├── TaskTimeout ................ (TimeoutError)       a task outran its timeout
    ├── TaskCancelled .............. (CancelledError)     TaskFuture.kill() stopped the task
    ├── PayloadError ............... (PicklingError)      a task's function/args/result/exception
    │                                                     could not be (un)pickled
    ├── RemoteTaskError ............ an exception that could not travel home as itself
    ├── FarmShutdown ............... (RuntimeError)       the farm stopped before the task ran
    ├── FarmBroken ................. (RuntimeError)       the initializer failed; no worker can run
    ├── BackendError
    │   ├── BackendUnavailable ..... (ImportError)        the backend's package (ray) is not installed
    │   ├── BackendUnsupported ..... (ValueError)         an option this backend cannot honour
    │   └── WorldUnavailable ....... (ConnectionError)    a shared-world actor died and did not come back
    ├── StateError
    │   ├── StateFull .............. (MemoryError)        no room for another key or its bytes
    │   ├── KeyTooLarge ............ (ValueError)         a key over max_key_bytes
    │   ├── ValueTooLarge .......... (ValueError)         a value over max_value_bytes
    │   ├── MergeConflict .......... an overlay's keys changed in the parent (.keys)
    │   └── TransitionsDropped ..... (LookupError)        the bounded log dropped them
    ├── EventLogError
    │   ├── EventTooLarge .......... (ValueError)         an event over max_event_size
    │   ├── InvalidEvent ........... (TypeError)          a kind, id or data of the wrong type
    │   ├── EventLogFull ........... (TimeoutError)       backpressure: readers kept the room
    │   ├── EventsLost ............. a reader fell behind the wrapping ring (.lost)
    │   ├── InvalidEventLog ........ (ValueError)         bad capacity, sizes or timeouts
    │   ├── JournalCorrupt ......... (ValueError)         strict load: bad, truncated or tampered line
    │   └── JournalWriteFailed ..... (OSError)            the journal drainer could not write
    ├── PolicyError
    │   ├── InvalidPolicy .......... (ValueError)         a bad rule: empty name, bad regex, limit < 0
    │   ├── PolicySetFull .......... (MemoryError)        no room for the rules' JSON or a call counter
    │   └── PolicyNotFound ......... (LookupError)        calls() named no max_calls rule or tool
    ├── ProposalError
    │   ├── InvalidProposal ........ (ValueError)         a malformed proposal (.problems); nothing ran
    │   ├── InvalidTool ............ (ValueError)         register_tool: bad name, function or schema
    │   └── TerminalToolError ...... raised by a tool: never retried, aborts the proposal
    ├── InvalidAgentJson ........... (ValueError)         an agent type's JSON or fields are malformed
    ├── InvalidMailbox ............. (ValueError)         bad mailbox options, agent name or message
    ├── InvalidPattern ............. (ValueError)         a pattern's configuration is malformed
    ├── PatternFailed .............. (RuntimeError)       a JSON entry point's pattern failed: "swarm error: ..."
    ├── InvalidSpec ................ (ValueError)         a run spec file (`carmp run`) names a bad field
    ├── ResultsCorrupt ............. (ValueError)         a sweep's results file cannot be read back
    ├── MultiError ................. a coordination pattern or its mailbox failed (CAR's MultiError)
    │   ├── AgentFailed ............ "agent {name} failed: {msg}"
    │   ├── AdvisorExhausted ....... "advisor exhausted: used {used} of {max_uses}"
    │   ├── MailboxSend ............ "mailbox send error: {msg}": no such agent, or it left
    │   │   ├── MailboxFull ........ (TimeoutError)       the agent's queue stayed full past the timeout
    │   │   └── MessageTooLarge .... (ValueError)         over max_message_bytes; nothing was sent
    │   ├── MailboxTimeout ......... (TimeoutError)       "mailbox recv timeout for agent {agent}"
    │   ├── MailboxClosed .......... (EOFError)           the receiver's agent was unregistered or replaced
    │   ├── MailboxTableFull ....... (MemoryError)        register(): every agent slot is taken
    │   ├── UnknownSpecialist ...... (LookupError)        "unknown specialist: {name}"
    │   ├── NoOutput ............... "no agents produced output"
    │   ├── MaxRoundsExceeded ...... "max rounds exceeded: {n}"
    │   ├── ConcurrencyAbort ....... "concurrency abort: {reason}"
    │   └── BudgetExhausted ........ the BudgetError below, also a MultiError
    └── BudgetError
        ├── BudgetExhausted ........ (BudgetError.Exhausted, MultiError)  a spend limit was crossed
        ├── AgentLimit ............. (BudgetError.AgentLimit) max_agents reached
        ├── ReservationDenied ...... reserve() would overshoot a limit
        ├── LeaseNotHeld ........... (LookupError)        commit/release of a lease not held
        ├── LeaseTableFull ......... too many leases outstanding
        └── InvalidBudget .......... (ValueError)         bad limits or budget JSON

StateJournalWarning (UserWarning) says a malformed state journal line was skipped.
EventJournalWarning (UserWarning) says a bad event journal line was skipped on load.
"""

from __future__ import annotations

import pickle
import signal
from concurrent.futures import CancelledError
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from carmp.shared.budget import BudgetSnapshot


class CarmpError(Exception):
    """Base of every error carmp raises on purpose."""

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuild from args and attributes, whatever __init__ takes: errors cross processes
        # (a worker's exception travels to the supervisor) and must survive the trip.
        return (_rebuild_error, (type(self), self.args, self.__dict__))


def _rebuild_error(cls: type[CarmpError], args: tuple[Any, ...],
                   fields: dict[str, Any]) -> CarmpError:
    # MemoryError's __new__ refuses a subclass that adds a __dict__ on this path; the
    # OSError family needs its own __new__ (it sets errno and friends)
    make = BaseException.__new__ if issubclass(cls, MemoryError) else cls.__new__
    error = make(cls)
    Exception.__init__(error, *args)
    error.__dict__.update(fields)
    return error


# ---- segments -------------------------------------------------------------------


class SegmentError(CarmpError):
    """A shared-memory segment could not be created, attached or used."""


class SegmentNotFound(SegmentError, FileNotFoundError):
    """Attach named a segment that does not exist (its creator closed it or died)."""


class SegmentExists(SegmentError, FileExistsError):
    """Create named a segment that already exists."""


class SegmentCorrupt(SegmentError, ValueError):
    """A segment's header does not match what the reader expects."""


class SegmentClosed(SegmentError, ValueError):
    """A segment was used after close()."""


class SharedMemoryFull(SegmentError, MemoryError):
    """/dev/shm has too little free space for the segments carmp must create."""


class WouldBlock(CarmpError, BlockingIOError):
    """A *_nowait call could not proceed at once; the blocking twin would have waited."""


# ---- locks --------------------------------------------------------------------


class LockError(CarmpError):
    """A cross-process lock could not be used."""


class LockTimeout(LockError, TimeoutError):
    """A timed acquire gave up; `owner_pid` names who held the lock (0 if unknown)."""

    def __init__(self, message: str, owner_pid: int = 0) -> None:
        super().__init__(message)
        self.owner_pid = owner_pid


# ---- the farm -------------------------------------------------------------------


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker, attached as its __cause__."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f"\n\"\"\"\n{self.text}\"\"\""


class WorkerCrashed(CarmpError, ChildProcessError):
    """The worker running a task died (signal, os._exit, segfault, OOM kill)."""

    def __init__(self, message: str, *, pid: int, exitcode: int | None, signal_name: str | None,
                 task_id: int | None) -> None:
        super().__init__(message)
        self.pid = pid
        self.exitcode = exitcode
        self.signal_name = signal_name
        self.task_id = task_id

    @classmethod
    def from_exit(cls, pid: int, exitcode: int | None, task_id: int | None,
                  detail: str = "") -> WorkerCrashed:
        signal_name = None
        if exitcode is not None and exitcode < 0:
            try:
                signal_name = signal.Signals(-exitcode).name
            except ValueError:
                signal_name = f"signal {-exitcode}"
        how = (f"was killed by {signal_name}" if signal_name
               else "exited" if exitcode is None else f"exited with code {exitcode}")
        task = f" while running task {task_id}" if task_id is not None else ""
        extra = f" {detail}" if detail else ""
        return cls(
            f"worker pid {pid} {how}{task}{extra}. A segfault, os._exit, an OOM kill or an "
            "external kill does this; fix the task, or submit it with retries=N to run it again",
            pid=pid, exitcode=exitcode, signal_name=signal_name, task_id=task_id,
        )


class TaskTimeout(CarmpError, TimeoutError):
    """A task ran past its timeout; its worker was killed and replaced."""


class TaskCancelled(CarmpError, CancelledError):
    """TaskFuture.kill() stopped the task: it never started, or its worker was killed
    and replaced. The message says why it was stopped."""


class PayloadError(CarmpError, pickle.PicklingError):
    """A task's function, arguments, result or exception could not be (un)pickled."""


class RemoteTaskError(CarmpError):
    """A task raised an exception that could not travel back as itself."""

    def __init__(self, message: str, *, type_name: str, traceback_text: str) -> None:
        super().__init__(message)
        self.type_name = type_name
        self.traceback_text = traceback_text

    @classmethod
    def from_document(cls, document: dict[str, Any], what: str) -> RemoteTaskError:
        type_name = f"{document.get('module', '')}.{document.get('type', '?')}".lstrip(".")
        text = str(document.get("traceback", ""))
        error = cls(f"{what}: {type_name}: {document.get('message', '')}", type_name=type_name,
                    traceback_text=text)
        error.__cause__ = RemoteTraceback(text)
        return error

    @staticmethod
    def attach(error: BaseException, traceback_text: str) -> BaseException:
        """Give a worker's exception its remote traceback as __cause__."""
        error.__cause__ = RemoteTraceback(traceback_text)
        return error


class FarmShutdown(CarmpError, RuntimeError):
    """The farm shut down before the task could run or finish."""


class FarmBroken(CarmpError, RuntimeError):
    """The farm cannot run tasks (its worker initializer failed); create a new Farm."""


# ---- agents and their coordination ---------------------------------------------------


class BackendError(CarmpError):
    """Base of the errors of choosing or reaching a farm backend (local or Ray)."""


class BackendUnavailable(BackendError, ImportError):
    """The backend's package is not installed."""


class BackendUnsupported(BackendError, ValueError):
    """An option the chosen backend cannot honour (its capabilities say which)."""


class WorldUnavailable(BackendError, ConnectionError):
    """A part of the shared world (a Ray actor) died and did not come back in time."""


class InvalidAgentJson(CarmpError, ValueError):
    """An agent type (AgentSpec, AgentOutput, AgentOutcome, Message, ...) got JSON or field
    values it cannot hold: a missing required field, or a field of the wrong type. The
    message names the type and the field."""


class InvalidMailbox(CarmpError, ValueError):
    """Mailbox options out of range, an agent name it cannot hold, or a send of something
    that is not a Message; nothing changed."""


class InvalidPattern(CarmpError, ValueError):
    """A coordination pattern was built with a configuration it cannot run (no agents, an
    unknown mode, a bad round or concurrency limit, a dependency on an unknown agent);
    nothing ran. The message names the setting."""


class PatternFailed(CarmpError, RuntimeError):
    """A pattern run by a JSON entry point (carmp.agents.jsonapi) failed. The message is
    CAR's binding text, "<pattern> error: " then the pattern's MultiError, which is the
    __cause__ (catch that for the details)."""


class InvalidSpec(CarmpError, ValueError):
    """A run spec file for `carmp run` cannot be used: not TOML or JSON, a field of the wrong
    type or value, an unknown field or pattern, a runner that cannot be imported. The
    message names the file and the field, e.g. "spec.toml: agents[2].max_turns: ..."."""


class ResultsCorrupt(CarmpError, ValueError):
    """A sweep's results file (JSONL or CSV) holds a row that cannot be read back; the
    message names the file and line. Nothing was run or written: fix or remove the line."""


class MultiError(CarmpError):
    """A coordination pattern or its mailbox failed (CAR's MultiError). Each variant's
    message starts with CAR's display text."""


class AgentFailed(MultiError):
    """An agent failed and the pattern cannot go on without it. The message is CAR's
    with the agent's own reason, which says what went wrong."""

    def __init__(self, name: str, msg: str) -> None:
        super().__init__(f"agent {name} failed: {msg}")
        self.name = name
        self.msg = msg


class AdvisorExhausted(MultiError):
    """The advisor was consulted as often as it may be."""

    def __init__(self, used: int, max_uses: int) -> None:
        super().__init__(f"advisor exhausted: used {used} of {max_uses}; raise max_uses, or "
                         "go on without consulting the advisor")
        self.used = used
        self.max_uses = max_uses


class MailboxSend(MultiError):
    """A message could not be delivered: no agent of that name is registered (or it was
    unregistered). `agent` names the recipient when there is one."""

    def __init__(self, msg: str, agent: str | None = None) -> None:
        super().__init__(f"mailbox send error: {msg}")
        self.msg = msg
        self.agent = agent


class MailboxFull(MailboxSend, TimeoutError):
    """Backpressure: the recipient's queue stayed full until the send's timeout; the
    message was not sent."""


class MessageTooLarge(MailboxSend, ValueError):
    """A message's JSON is longer than the mailbox's max_message_bytes; nothing was sent."""


class MailboxTimeout(MultiError, TimeoutError):
    """recv() reached its deadline with no message for the agent."""

    def __init__(self, agent: str, timeout: float | None = None) -> None:
        waited = "" if timeout is None else f": nothing arrived within {timeout} s"
        super().__init__(f"mailbox recv timeout for agent {agent}{waited}; wait longer, or "
                         "check that its senders are running")
        self.agent = agent
        self.timeout = timeout


class MailboxClosed(MultiError, EOFError):
    """The receiver's agent was unregistered, or registered again (which hands its queue to
    the new receiver): this receiver gets no more messages."""

    def __init__(self, agent: str) -> None:
        super().__init__(f"mailbox of agent {agent} is closed to this receiver: the agent was "
                         "unregistered or registered again; receive with the receiver the "
                         "latest register() returned")
        self.agent = agent


class MailboxTableFull(MultiError, MemoryError):
    """register() found every agent slot of the mailbox taken."""


class UnknownSpecialist(MultiError, LookupError):
    """A delegation named a specialist the delegator does not have."""

    def __init__(self, name: str) -> None:
        super().__init__(f"unknown specialist: {name}; delegate to one of the specialists "
                         "the delegator was built with")
        self.name = name


class NoOutput(MultiError):
    """No agent of the pattern produced an output to work with."""

    def __init__(self) -> None:
        super().__init__("no agents produced output; every agent failed or was skipped: see "
                         "their errors, and the budget")


class MaxRoundsExceeded(MultiError):
    """An iterative pattern used all its rounds without reaching its goal."""

    def __init__(self, n: int) -> None:
        super().__init__(f"max rounds exceeded: {n}; raise max_rounds, or use the last "
                         "round's answer")
        self.n = n


class ConcurrencyAbort(MultiError):
    """The merge barrier's concurrency-anomaly gate aborted the merge."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"concurrency abort: {reason}; nothing was merged: run the agents "
                         "again on fresh state, or declare the dependency between them")
        self.reason = reason


# ---- budget -------------------------------------------------------------------


class BudgetError(CarmpError):
    """The coordination budget refused something. CAR's variants are attributes:
    `BudgetError.Exhausted` and `BudgetError.AgentLimit`."""

    Exhausted: ClassVar[type[BudgetExhausted]]
    AgentLimit: ClassVar[type[AgentLimit]]


class BudgetExhausted(BudgetError, MultiError):
    """A token or cost limit was already crossed before this agent could start. Also CAR's
    MultiError::BudgetExhausted, so `except MultiError` catches it."""

    def __init__(self, reason: str, snapshot: BudgetSnapshot) -> None:
        super().__init__(
            f"coordination budget exhausted: {reason}; no new agent may start "
            "(raise the limit in BudgetLimits or start a new budget)"
        )
        self.reason = reason
        self.snapshot = snapshot


class AgentLimit(BudgetError):
    """Starting one more agent would exceed `max_agents`."""

    def __init__(self, max: int, started: int) -> None:  # noqa: A002 - CAR's field name
        super().__init__(
            f"agent limit reached: {started} of max_agents={max} already started; "
            "raise max_agents in BudgetLimits to start more"
        )
        self.max = max
        self.started = started


BudgetError.Exhausted = BudgetExhausted
BudgetError.AgentLimit = AgentLimit


class ReservationDenied(BudgetError):
    """A reservation would let spent + reserved exceed a limit."""

    def __init__(self, reason: str, snapshot: BudgetSnapshot) -> None:
        super().__init__(
            f"reservation denied: {reason}; wait for running work to commit or release "
            "its leases, lower the estimate, or raise the limit"
        )
        self.reason = reason
        self.snapshot = snapshot


class LeaseNotHeld(BudgetError, LookupError):
    """commit() or release() named a lease that was already settled or refunded."""


class LeaseTableFull(BudgetError):
    """Every lease slot is taken by an outstanding reservation."""


class InvalidBudget(BudgetError, ValueError):
    """Budget limits or budget JSON are malformed."""


# ---- policies ---------------------------------------------------------------------


class PolicyError(CarmpError):
    """The shared policy set refused a change or a question; it changed nothing."""


class InvalidPolicy(PolicyError, ValueError):
    """A rule is malformed: an empty name or tool, a bad regex, a limit out of range."""


class PolicySetFull(PolicyError, MemoryError):
    """The rules would outgrow the set's capacity_bytes, or every call counter is taken."""


class PolicyNotFound(PolicyError, LookupError):
    """calls() named neither a max_calls rule nor a tool that one counts."""


# ---- proposals and tools -----------------------------------------------------------


class ProposalError(CarmpError):
    """The runtime refused a proposal or a tool, or a tool refused to go on."""


class InvalidProposal(ProposalError, ValueError):
    """A proposal is malformed: a bad field, a duplicate id, an unknown dependency, a
    cycle, a reference to a result it cannot have, an unknown tool or parameters its
    schema refuses. Nothing of it ran. `problems` holds (action id or None, reason)."""

    def __init__(self, proposal_id: str | None,
                 problems: tuple[tuple[str | None, str], ...]) -> None:
        where = "the proposal" if proposal_id is None else f"proposal {proposal_id!r}"
        listed = "; ".join(reason if action_id is None else f"action {action_id!r}: {reason}"
                           for action_id, reason in problems)
        super().__init__(f"{where} was rejected and nothing of it ran: {listed}. Fix these "
                         "and propose it again")
        self.proposal_id = proposal_id
        self.problems = problems


class InvalidTool(ProposalError, ValueError):
    """register_tool() got an empty name, something not callable, or a schema that is not
    a valid JSON Schema; nothing was registered."""


class TerminalToolError(ProposalError):
    """Raised by a tool for a failure no retry can fix: the action is not retried and
    its proposal aborts (its state writes are rolled back), whatever failure_behavior says."""


# ---- state store ------------------------------------------------------------------


class StateError(CarmpError):
    """The shared state store refused an operation; it changed nothing."""


class StateFull(StateError, MemoryError):
    """The store has no room for another key, or no arena bytes for a value."""


class KeyTooLarge(StateError, ValueError):
    """A key's UTF-8 form is longer than the store's max_key_bytes."""


class ValueTooLarge(StateError, ValueError):
    """A value's JSON form is longer than the store's max_value_bytes."""


class MergeConflict(StateError):
    """An overlay merge was refused: keys it changed were also changed in the parent
    after the overlay read or wrote them (lost updates). `keys` names them."""

    def __init__(self, agent_name: str, keys: tuple[str, ...]) -> None:
        super().__init__(
            f"merge of agent {agent_name!r} refused: {', '.join(map(repr, keys))} changed in "
            "the parent after the agent read or wrote them, so nothing was merged; run the "
            "agent again on fresh state, or merge with policy='last_writer_wins' to overwrite"
        )
        self.agent_name = agent_name
        self.keys = keys


class TransitionsDropped(StateError, LookupError):
    """Transitions asked for were dropped from the bounded log to make room;
    `first_retained` is the oldest index still held."""

    def __init__(self, message: str, first_retained: int) -> None:
        super().__init__(message)
        self.first_retained = first_retained


class StateJournalWarning(UserWarning):
    """A malformed line of a state journal was skipped on replay."""


# ---- event log ----------------------------------------------------------------------


class EventLogError(CarmpError):
    """The shared event log refused an operation."""


class EventTooLarge(EventLogError, ValueError):
    """An encoded event is longer than the log's max_event_size; nothing was appended."""


class InvalidEvent(EventLogError, TypeError):
    """An event's kind, ids or data have the wrong type or cannot be encoded as JSON."""


class EventLogFull(EventLogError, TimeoutError):
    """Backpressure: registered readers (or the journal) did not make room in time;
    nothing was appended. `slowest_pid` names the reader that held the room (0 if none)."""

    def __init__(self, message: str, slowest_pid: int = 0) -> None:
        super().__init__(message)
        self.slowest_pid = slowest_pid


class EventsLost(EventLogError):
    """A reader fell behind and the ring overwrote events it had not read; the reader
    has moved on to the oldest event still held. Raised only by readers created with
    on_lost="raise"; others count losses and record an events_lost event."""

    def __init__(self, lost: int, first_seq: int, resume_seq: int) -> None:
        super().__init__(
            f"{lost} events (seq {first_seq}..{resume_seq - 1}) were overwritten before this "
            f"reader got them; it resumes at seq {resume_seq}. Read faster, give the log more "
            "capacity, use backpressure=True, or read the journal for the full history"
        )
        self.lost = lost
        self.first_seq = first_seq
        self.resume_seq = resume_seq


class InvalidEventLog(EventLogError, ValueError):
    """EventLog options are out of range (capacity, max_event_size, timeouts, readers)."""


class JournalCorrupt(EventLogError, ValueError):
    """A journal line is malformed, truncated, out of order or fails its hash chain
    (raised by strict loads; other loads skip the line and report it)."""


class JournalWriteFailed(EventLogError, OSError):
    """The journal drainer could not write; events after `journaled_seq` are not in it."""


class EventJournalWarning(UserWarning):
    """A bad line of an event journal was skipped on load."""


__all__ = [
    "AdvisorExhausted",
    "AgentFailed",
    "AgentLimit",
    "BackendError",
    "BackendUnavailable",
    "BackendUnsupported",
    "BudgetError",
    "BudgetExhausted",
    "CarmpError",
    "ConcurrencyAbort",
    "EventJournalWarning",
    "EventLogError",
    "EventLogFull",
    "EventTooLarge",
    "EventsLost",
    "FarmBroken",
    "FarmShutdown",
    "InvalidAgentJson",
    "InvalidBudget",
    "InvalidEvent",
    "InvalidEventLog",
    "InvalidMailbox",
    "InvalidPattern",
    "InvalidPolicy",
    "InvalidProposal",
    "InvalidSpec",
    "InvalidTool",
    "JournalCorrupt",
    "JournalWriteFailed",
    "KeyTooLarge",
    "LeaseNotHeld",
    "LeaseTableFull",
    "LockError",
    "LockTimeout",
    "MailboxClosed",
    "MailboxFull",
    "MailboxSend",
    "MailboxTableFull",
    "MailboxTimeout",
    "MaxRoundsExceeded",
    "MergeConflict",
    "MessageTooLarge",
    "MultiError",
    "NoOutput",
    "PatternFailed",
    "PayloadError",
    "PolicyError",
    "PolicyNotFound",
    "PolicySetFull",
    "ProposalError",
    "RemoteTaskError",
    "RemoteTraceback",
    "ReservationDenied",
    "ResultsCorrupt",
    "SegmentClosed",
    "SegmentCorrupt",
    "SegmentError",
    "SegmentExists",
    "SegmentNotFound",
    "SharedMemoryFull",
    "StateError",
    "StateFull",
    "StateJournalWarning",
    "TaskCancelled",
    "TaskTimeout",
    "TerminalToolError",
    "TransitionsDropped",
    "UnknownSpecialist",
    "ValueTooLarge",
    "WorkerCrashed",
    "WorldUnavailable",
    "WouldBlock",
]
