"""Events, their kinds, spans, and their JSON forms: what the event log stores.

An Event is CAR's record (kind, action_id, proposal_id, data, timestamp, run_id, prev_hash,
hash) plus what a multiprocess log needs: a global sequence number and the writer (a name
the process chose, and its pid). Everything is JSON: nothing read from shared memory or a
journal is ever unpickled, and every field read back is type-checked before use.

Two JSON forms:
- ring payload, compact: [kind, action_id, proposal_id, run_id, writer, data, prev_hash,
  hash]; seq, timestamp and the writer's pid come from the ring's record descriptor, so a
  reader builds an Event from (seq, timestamp, pid, *payload). A read batch arrives as
  one JSON array of payloads (1 or 2 standing for a hole or a corrupt record).
- journal line: one object per line, keys as in Event.to_dict().

Spans are events too (span_started / span_ended), so every process sees every span and
the journal keeps them; spans() folds them back together.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import orjson

from carmp.errors import InvalidEvent
from carmp.shared.proc import gc_paused


class EventKind(enum.StrEnum):
    """CAR's core kinds and carmp's own; any other non-empty string is allowed too."""

    # CAR core
    PROPOSAL_RECEIVED = "proposal_received"
    ACTION_VALIDATED = "action_validated"
    ACTION_REJECTED = "action_rejected"
    ACTION_EXECUTING = "action_executing"
    ACTION_SUCCEEDED = "action_succeeded"
    ACTION_FAILED = "action_failed"
    ACTION_SKIPPED = "action_skipped"
    ACTION_RETRYING = "action_retrying"
    ACTION_DEDUPLICATED = "action_deduplicated"
    POLICY_VIOLATION = "policy_violation"
    STATE_CHANGED = "state_changed"
    STATE_SNAPSHOT = "state_snapshot"
    STATE_ROLLBACK = "state_rollback"
    # CAR skill lifecycle
    SKILL_DISTILLED = "skill_distilled"
    SKILL_EVOLVED = "skill_evolved"
    SKILL_DEPRECATED = "skill_deprecated"
    EVOLUTION_TRIGGERED = "evolution_triggered"
    CANDIDATE_PROMOTED = "candidate_promoted"
    CANDIDATE_REJECTED = "candidate_rejected"
    CONSOLIDATED = "consolidated"
    # CAR replanning
    REPLAN_ATTEMPTED = "replan_attempted"
    REPLAN_PROPOSAL_RECEIVED = "replan_proposal_received"
    REPLAN_REJECTED = "replan_rejected"
    REPLAN_EXHAUSTED = "replan_exhausted"
    # carmp
    AGENT_STARTED = "agent_started"
    AGENT_FINISHED = "agent_finished"
    BUDGET_DENIED = "budget_denied"
    BUDGET_RESERVED = "budget_reserved"
    BUDGET_REFUNDED = "budget_refunded"
    WORKER_STARTED = "worker_started"
    WORKER_EXITED = "worker_exited"
    WORKER_CRASHED = "worker_crashed"
    WORKER_RECYCLED = "worker_recycled"
    TASK_SUBMITTED = "task_submitted"
    TASK_STARTED = "task_started"
    TASK_FINISHED = "task_finished"
    TASK_FAILED = "task_failed"
    EVENTS_LOST = "events_lost"
    SPAN_STARTED = "span_started"
    SPAN_ENDED = "span_ended"


def kind_name(kind: object) -> str:
    """The plain string of a kind (an EventKind or a non-empty str)."""
    if isinstance(kind, str) and kind:
        return str.__str__(kind)
    raise InvalidEvent(f"an event kind must be a non-empty str or EventKind, got {kind!r}")


# What an event log can hold (native/ring.c): a journal line beyond these is not an event
# any log wrote, and loading it must fail as a bad line, not as a bad ring.
MAX_SEQ = (1 << 62) - 1
MAX_WORD = (1 << 64) - 1
MAX_PID = (1 << 32) - 1


class Event(NamedTuple):
    """One event; immutable. `timestamp_ns` is wall-clock nanoseconds since the epoch."""

    seq: int
    timestamp_ns: int
    pid: int
    kind: str
    action_id: str | None
    proposal_id: str | None
    run_id: str | None
    writer: str | None
    data: dict[str, Any]
    prev_hash: str | None = None
    hash: str | None = None

    @property
    def timestamp(self) -> float:
        """Seconds since the epoch, as time.time() gives them."""
        return self.timestamp_ns / 1e9

    def to_dict(self) -> dict[str, Any]:
        """The journal form; prev_hash and hash appear only on chained events."""
        fields: dict[str, Any] = {
            "seq": self.seq, "timestamp_ns": self.timestamp_ns, "kind": self.kind,
            "action_id": self.action_id, "proposal_id": self.proposal_id, "run_id": self.run_id,
            "writer": self.writer, "pid": self.pid, "data": self.data,
        }
        if self.hash is not None:
            fields["prev_hash"] = self.prev_hash
            fields["hash"] = self.hash
        return fields

    @classmethod
    def from_dict(cls, fields: object) -> Event:
        """Check every field of a journal object; InvalidEvent says which is wrong."""
        if type(fields) is not dict:
            raise InvalidEvent(f"an event is a JSON object, not {type(fields).__name__}")
        try:
            seq, timestamp_ns, pid = fields["seq"], fields["timestamp_ns"], fields["pid"]
            event = cls(seq, timestamp_ns, pid, fields["kind"], fields["action_id"],
                        fields["proposal_id"], fields["run_id"], fields["writer"],
                        fields["data"], fields.get("prev_hash"), fields.get("hash"))
        except KeyError as missing:
            raise InvalidEvent(f"the event has no {missing} field") from None
        for name, most in (("seq", MAX_SEQ), ("timestamp_ns", MAX_WORD), ("pid", MAX_PID)):
            value = getattr(event, name)
            if type(value) is not int or not 0 <= value <= most:
                raise InvalidEvent(f"{name} must be an int in 0..{most}, got {value!r}")
        check_fields(event.kind, event.action_id, event.proposal_id, event.run_id, event.writer,
                     event.data)
        for name in ("prev_hash", "hash"):
            if getattr(event, name) is not None and type(getattr(event, name)) is not str:
                raise InvalidEvent(f"{name} must be a str or null")
        return event


_new_event = tuple.__new__


def check_fields(kind: object, action_id: object, proposal_id: object, run_id: object,
                 writer: object, data: object) -> None:
    """InvalidEvent unless the fields have the types an Event needs."""
    if type(kind) is not str or not kind:
        raise InvalidEvent(f"an event kind must be a non-empty str, got {kind!r}")
    for name, value in (("action_id", action_id), ("proposal_id", proposal_id),
                        ("run_id", run_id), ("writer", writer)):
        if value is not None and type(value) is not str:
            raise InvalidEvent(f"{name} must be a str or None, got {type(value).__name__}")
    if type(data) is not dict:
        raise InvalidEvent(f"event data must be a dict (a JSON object), got {type(data).__name__}")


# ---- ring payloads ----------------------------------------------------------------------

_dumps = orjson.dumps
_loads = orjson.loads
_PAYLOAD_FIELDS = 8
HOLE = 1     # a read batch's stand-in for a record whose writer died or stalled
CORRUPT = 2  # ... and for one that failed validation


def encode_payload(kind: str, action_id: str | None, proposal_id: str | None,
                   run_id: str | None, writer: str | None, data: dict[str, Any],
                   prev_hash: str | None = None, digest: str | None = None) -> bytes:
    try:
        return _dumps([kind, action_id, proposal_id, run_id, writer, data, prev_hash, digest])
    except TypeError as exc:
        raise not_json(exc) from None


def not_json(exc: TypeError) -> InvalidEvent:
    return InvalidEvent(
        f"event data cannot be encoded as JSON ({exc}); use str keys and JSON values "
        "(str, int within 64 bits, float, bool, None, list, dict)"
    )


def _parse_each(payloads: bytes, sizes: list[int]) -> list[Any]:
    """A batch whose array does not parse as a whole, one payload at a time (None = bad)."""
    parsed: list[Any] = []
    at = 1  # past "["
    for size in sizes:
        try:
            parsed.append(_loads(payloads[at:at + size]))
        except orjson.JSONDecodeError:
            parsed.append(None)
        at += size + 1  # and the comma
    return parsed


def decode_batch(seq: int, payloads: bytes, timestamps: list[int], pids: list[int],
                 sizes: list[int]) -> tuple[list[Event], int, int]:
    """Events of a ring read batch starting at `seq`, with holes and invalid records as
    events_lost events in place; returns them with the counts of holes and corrupt ones."""
    # every container a batch creates stays alive in the result (about a fifth of a
    # reader's time went to collections that freed nothing)
    with gc_paused():
        try:
            parsed = _loads(payloads)
        except orjson.JSONDecodeError:
            parsed = None
        if type(parsed) is not list or len(parsed) != len(sizes):  # a payload broke the array
            parsed = _parse_each(payloads, sizes)
        return _events_of(seq, parsed, timestamps, pids)


def _events_of(seq: int, parsed: list[Any], timestamps: list[int],
               pids: list[int]) -> tuple[list[Event], int, int]:
    events: list[Event] = []
    append = events.append
    holes = corrupt = 0
    for fields, timestamp_ns, pid in zip(parsed, timestamps, pids):
        # the hot loop of every reader: checks inline, no call per event
        if type(fields) is list and len(fields) == _PAYLOAD_FIELDS:
            kind, action_id, proposal_id, run_id, writer, data, prev_hash, digest = fields
            if type(kind) is str and type(data) is dict and kind \
                    and (action_id is None or type(action_id) is str) \
                    and (proposal_id is None or type(proposal_id) is str) \
                    and (run_id is None or type(run_id) is str) \
                    and (writer is None or type(writer) is str) \
                    and (prev_hash is None or type(prev_hash) is str) \
                    and (digest is None or type(digest) is str):
                append(_new_event(Event, (seq, timestamp_ns, pid, kind, action_id, proposal_id,
                                          run_id, writer, data, prev_hash, digest)))
                seq += 1
                continue
        if fields == HOLE:
            holes += 1
            append(gap_event(seq, timestamp_ns, pid, "writer_gone"))
        else:
            corrupt += 1
            append(gap_event(seq, timestamp_ns, pid, "corrupt_record"))
        seq += 1
    return events, holes, corrupt


def gap_event(seq: int, timestamp_ns: int, pid: int, cause: str) -> Event:
    """The events_lost event a reader reports in place of a record it cannot deliver."""
    data: dict[str, Any] = {"lost": 1, "cause": cause, "writer_pid": pid or None}
    return _new_event(Event, (seq, timestamp_ns, pid, EventKind.EVENTS_LOST.value, None, None,
                              None, None, data, None, None))


# ---- the hash chain -----------------------------------------------------------------------


def chain_hash(event: Event, prev_hash: str | None) -> str:
    """SHA-256 over the event's fields (hash excluded) and the previous event's hash."""
    fields = event.to_dict()
    fields.pop("hash", None)
    fields["prev_hash"] = prev_hash
    return hashlib.sha256(_dumps(fields, option=orjson.OPT_SORT_KEYS)).hexdigest()


def chained(event: Event, prev_hash: str | None) -> Event:
    return event._replace(prev_hash=prev_hash, hash=chain_hash(event, prev_hash))


# ---- spans ---------------------------------------------------------------------------------


class SpanStatus(enum.StrEnum):
    UNSET = "unset"
    OK = "ok"
    ERROR = "error"


_OTLP_STATUS_CODES = {SpanStatus.UNSET: 0, SpanStatus.OK: 1, SpanStatus.ERROR: 2}


def span_status(status: object) -> SpanStatus:
    try:
        return SpanStatus(str(status).lower())
    except ValueError:
        raise InvalidEvent(f"span status must be 'ok', 'error' or 'unset', got {status!r}") from None


@dataclass(frozen=True, slots=True)
class Span:
    span_id: str
    trace_id: str
    parent_span_id: str | None
    name: str
    start_ns: int
    attributes: dict[str, Any] = field(default_factory=dict)
    end_ns: int | None = None
    status: SpanStatus = SpanStatus.UNSET
    message: str | None = None
    pid: int = 0


def fold_spans(events: Iterable[Event]) -> list[Span]:
    """Spans from span_started / span_ended events, in start order. Malformed span
    events (wrong field types) are ignored; an end without a start is dropped."""
    spans: dict[str, Span] = {}
    for event in events:
        data = event.data
        span_id = data.get("span_id")
        if type(span_id) is not str:
            continue
        if event.kind == EventKind.SPAN_STARTED:
            trace_id, name = data.get("trace_id"), data.get("name")
            parent, attributes = data.get("parent_span_id"), data.get("attributes", {})
            if type(trace_id) is str and type(name) is str and type(attributes) is dict \
                    and (parent is None or type(parent) is str):
                spans[span_id] = Span(span_id, trace_id, parent, name, event.timestamp_ns,
                                      attributes, pid=event.pid)
        elif event.kind == EventKind.SPAN_ENDED and span_id in spans:
            message = data.get("message")
            try:
                status = span_status(data.get("status", "unset"))
            except InvalidEvent:
                continue
            spans[span_id] = replace(spans[span_id], end_ns=event.timestamp_ns, status=status,
                                     message=message if type(message) is str else None)
    return list(spans.values())


def _otlp_value(value: Any) -> dict[str, Any]:
    """An OTLP AnyValue in its JSON mapping (64-bit ints as strings)."""
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, str):
        return {"stringValue": value}
    if isinstance(value, list):
        return {"arrayValue": {"values": [_otlp_value(v) for v in value]}}
    if isinstance(value, dict):
        return {"kvlistValue": {"values": _otlp_attributes(value)}}
    return {}


def _otlp_attributes(attributes: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"key": str(key), "value": _otlp_value(value)} for key, value in attributes.items()]


def otlp_json(spans: Iterable[Span], service_name: str) -> str:
    """Spans as an OTLP/JSON ExportTraceServiceRequest (resourceSpans)."""
    exported = []
    for span in spans:
        item: dict[str, Any] = {
            "traceId": span.trace_id, "spanId": span.span_id, "name": span.name,
            "kind": 1,  # SPAN_KIND_INTERNAL
            "startTimeUnixNano": str(span.start_ns),
            "attributes": _otlp_attributes({**span.attributes, "process.pid": span.pid}),
            "status": {"code": _OTLP_STATUS_CODES[span.status]},
        }
        if span.parent_span_id is not None:
            item["parentSpanId"] = span.parent_span_id
        if span.end_ns is not None:
            item["endTimeUnixNano"] = str(span.end_ns)
        if span.message is not None:
            item["status"]["message"] = span.message
        exported.append(item)
    request = {"resourceSpans": [{
        "resource": {"attributes": _otlp_attributes({"service.name": service_name})},
        "scopeSpans": [{"scope": {"name": "carmp.eventlog"}, "spans": exported}],
    }]}
    return _dumps(request).decode()
