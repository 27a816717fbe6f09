"""carmp: CAR's multi-agent coordination runtime on a local multiprocess worker pool.

The supervisor owns one shared world in shared memory (state, budget, policies,
event log); workers attach it by name. This module holds the public names only, and
imports each from its module on first use, so that a worker process (which needs
little of carmp) starts fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from carmp.errors import (
        AdvisorExhausted as AdvisorExhausted,
        AgentFailed as AgentFailed,
        AgentLimit as AgentLimit,
        BackendError as BackendError,
        BackendUnavailable as BackendUnavailable,
        BackendUnsupported as BackendUnsupported,
        BudgetError as BudgetError,
        BudgetExhausted as BudgetExhausted,
        CarmpError as CarmpError,
        ConcurrencyAbort as ConcurrencyAbort,
        EventJournalWarning as EventJournalWarning,
        EventLogError as EventLogError,
        EventLogFull as EventLogFull,
        EventTooLarge as EventTooLarge,
        EventsLost as EventsLost,
        FarmBroken as FarmBroken,
        FarmShutdown as FarmShutdown,
        InvalidAgentJson as InvalidAgentJson,
        InvalidBudget as InvalidBudget,
        InvalidEvent as InvalidEvent,
        InvalidEventLog as InvalidEventLog,
        InvalidMailbox as InvalidMailbox,
        InvalidPattern as InvalidPattern,
        InvalidPolicy as InvalidPolicy,
        InvalidProposal as InvalidProposal,
        InvalidSpec as InvalidSpec,
        InvalidTool as InvalidTool,
        JournalCorrupt as JournalCorrupt,
        JournalWriteFailed as JournalWriteFailed,
        KeyTooLarge as KeyTooLarge,
        LeaseNotHeld as LeaseNotHeld,
        LeaseTableFull as LeaseTableFull,
        LockError as LockError,
        LockTimeout as LockTimeout,
        MailboxClosed as MailboxClosed,
        MailboxFull as MailboxFull,
        MailboxSend as MailboxSend,
        MailboxTableFull as MailboxTableFull,
        MailboxTimeout as MailboxTimeout,
        MaxRoundsExceeded as MaxRoundsExceeded,
        MergeConflict as MergeConflict,
        MessageTooLarge as MessageTooLarge,
        MultiError as MultiError,
        NoOutput as NoOutput,
        PatternFailed as PatternFailed,
        PayloadError as PayloadError,
        PolicyError as PolicyError,
        PolicyNotFound as PolicyNotFound,
        PolicySetFull as PolicySetFull,
        ProposalError as ProposalError,
        RemoteTaskError as RemoteTaskError,
        RemoteTraceback as RemoteTraceback,
        ReservationDenied as ReservationDenied,
        ResultsCorrupt as ResultsCorrupt,
        SegmentClosed as SegmentClosed,
        SegmentCorrupt as SegmentCorrupt,
        SegmentError as SegmentError,
        SegmentExists as SegmentExists,
        SegmentNotFound as SegmentNotFound,
        SharedMemoryFull as SharedMemoryFull,
        StateError as StateError,
        StateFull as StateFull,
        StateJournalWarning as StateJournalWarning,
        TaskCancelled as TaskCancelled,
        TaskTimeout as TaskTimeout,
        TerminalToolError as TerminalToolError,
        TransitionsDropped as TransitionsDropped,
        UnknownSpecialist as UnknownSpecialist,
        ValueTooLarge as ValueTooLarge,
        WorkerCrashed as WorkerCrashed,
        WorldUnavailable as WorldUnavailable,
        WouldBlock as WouldBlock,
    )
    from carmp.pool.farm import (
        Farm as Farm,
        TaskFuture as TaskFuture,
    )
    from carmp.pool.worker import (
        WorkerInfo as WorkerInfo,
        current_infra as current_infra,
        current_worker as current_worker,
    )
    from carmp.shared.budget import (
        BudgetLimits as BudgetLimits,
        BudgetSnapshot as BudgetSnapshot,
        BudgetStatistics as BudgetStatistics,
        CoordinationBudget as CoordinationBudget,
        Lease as Lease,
        RunLatency as RunLatency,
        TokenAccounting as TokenAccounting,
    )
    from carmp.shared.event import (
        Event as Event,
        EventKind as EventKind,
        Span as Span,
        SpanStatus as SpanStatus,
    )
    from carmp.shared.eventlog import (
        EventLog as EventLog,
        EventLogStats as EventLogStats,
        EventReader as EventReader,
    )
    from carmp.runtime.actions import (
        Action as Action,
        ActionResult as ActionResult,
        ActionStatus as ActionStatus,
        ActionType as ActionType,
        FailureBehavior as FailureBehavior,
        Proposal as Proposal,
        ProposalResult as ProposalResult,
    )
    from carmp.runtime.runtime import (
        Runtime as Runtime,
    )
    from carmp.runtime.tools import (
        ToolSpec as ToolSpec,
    )
    from carmp.runtime.context import (
        AgentContext as AgentContext,
        MergeReport as MergeReport,
        TaskScope as TaskScope,
        current_context as current_context,
    )
    from carmp.shared.state import (
        DELETE as DELETE,
        BatchOutcome as BatchOutcome,
        StateStatistics as StateStatistics,
        StateStore as StateStore,
        StateTransition as StateTransition,
        Transaction as Transaction,
    )
    from carmp.pool.tasks import (
        FarmStatistics as FarmStatistics,
    )
    from carmp.shared.journal import (
        JournalReport as JournalReport,
    )
    from carmp.runtime.infra import (
        SharedInfra as SharedInfra,
    )
    from carmp.shared.policy import (
        PolicySet as PolicySet,
        PolicyViolation as PolicyViolation,
    )
    from carmp.runtime.policy import (
        PolicyEngine as PolicyEngine,
    )
    from carmp.shared.mailbox import (
        Mailbox as Mailbox,
        MailboxReceiver as MailboxReceiver,
        MailboxStatistics as MailboxStatistics,
        Message as Message,
        MessageKind as MessageKind,
    )
    from carmp.agents.types import (
        AgentOutcome as AgentOutcome,
        AgentOutput as AgentOutput,
        AgentSpec as AgentSpec,
        Evidence as Evidence,
        EvidenceKind as EvidenceKind,
        OutcomeMetrics as OutcomeMetrics,
        OutcomeStatus as OutcomeStatus,
        budget_skipped_output as budget_skipped_output,
    )
    from carmp.shared.segment import (
        sweep as sweep,
    )
    from carmp.agents.gate import (
        ConcurrencyControl as ConcurrencyControl,
    )
    from carmp.agents.patterns.swarm import (
        Pipeline as Pipeline,
        PipelineResult as PipelineResult,
        Swarm as Swarm,
        SwarmMode as SwarmMode,
        SwarmResult as SwarmResult,
    )
    from carmp.agents.patterns.supervisor import (
        Supervisor as Supervisor,
        SupervisorResult as SupervisorResult,
    )
    from carmp.agents.patterns.map_reduce import (
        MapReduce as MapReduce,
        MapReduceResult as MapReduceResult,
    )
    from carmp.agents.patterns.fleet import (
        Fleet as Fleet,
        FleetResult as FleetResult,
    )
    from carmp.agents.patterns.vote import (
        Vote as Vote,
        VoteResult as VoteResult,
    )
    from carmp.agents.patterns.tournament import (
        Tournament as Tournament,
        TournamentResult as TournamentResult,
    )
    from carmp.agents.patterns.delegator import (
        Delegator as Delegator,
        DelegatorResult as DelegatorResult,
    )
    from carmp.agents.patterns.spawn_subtask import (
        SpawnSubtask as SpawnSubtask,
        SpawnSubtaskResult as SpawnSubtaskResult,
    )
    from carmp.agents.patterns.adversarial_review import (
        AdversarialReview as AdversarialReview,
        AdversarialReviewResult as AdversarialReviewResult,
    )
    from carmp.agents.patterns.advisor import (
        Advisor as Advisor,
        AdvisorResult as AdvisorResult,
    )

# Where each public name lives.
_EXPORTS: dict[str, str] = {
    "AdvisorExhausted": "carmp.errors",
    "AgentFailed": "carmp.errors",
    "AgentLimit": "carmp.errors",
    "BackendError": "carmp.errors",
    "BackendUnavailable": "carmp.errors",
    "BackendUnsupported": "carmp.errors",
    "BudgetError": "carmp.errors",
    "BudgetExhausted": "carmp.errors",
    "CarmpError": "carmp.errors",
    "ConcurrencyAbort": "carmp.errors",
    "EventJournalWarning": "carmp.errors",
    "EventLogError": "carmp.errors",
    "EventLogFull": "carmp.errors",
    "EventTooLarge": "carmp.errors",
    "EventsLost": "carmp.errors",
    "FarmBroken": "carmp.errors",
    "FarmShutdown": "carmp.errors",
    "InvalidAgentJson": "carmp.errors",
    "InvalidBudget": "carmp.errors",
    "InvalidEvent": "carmp.errors",
    "InvalidEventLog": "carmp.errors",
    "InvalidMailbox": "carmp.errors",
    "InvalidPattern": "carmp.errors",
    "InvalidPolicy": "carmp.errors",
    "InvalidProposal": "carmp.errors",
    "InvalidSpec": "carmp.errors",
    "InvalidTool": "carmp.errors",
    "JournalCorrupt": "carmp.errors",
    "JournalWriteFailed": "carmp.errors",
    "KeyTooLarge": "carmp.errors",
    "LeaseNotHeld": "carmp.errors",
    "LeaseTableFull": "carmp.errors",
    "LockError": "carmp.errors",
    "LockTimeout": "carmp.errors",
    "MailboxClosed": "carmp.errors",
    "MailboxFull": "carmp.errors",
    "MailboxSend": "carmp.errors",
    "MailboxTableFull": "carmp.errors",
    "MailboxTimeout": "carmp.errors",
    "MaxRoundsExceeded": "carmp.errors",
    "MergeConflict": "carmp.errors",
    "MessageTooLarge": "carmp.errors",
    "MultiError": "carmp.errors",
    "NoOutput": "carmp.errors",
    "PatternFailed": "carmp.errors",
    "PayloadError": "carmp.errors",
    "PolicyError": "carmp.errors",
    "PolicyNotFound": "carmp.errors",
    "PolicySetFull": "carmp.errors",
    "ProposalError": "carmp.errors",
    "RemoteTaskError": "carmp.errors",
    "RemoteTraceback": "carmp.errors",
    "ReservationDenied": "carmp.errors",
    "ResultsCorrupt": "carmp.errors",
    "SegmentClosed": "carmp.errors",
    "SegmentCorrupt": "carmp.errors",
    "SegmentError": "carmp.errors",
    "SegmentExists": "carmp.errors",
    "SegmentNotFound": "carmp.errors",
    "SharedMemoryFull": "carmp.errors",
    "StateError": "carmp.errors",
    "StateFull": "carmp.errors",
    "StateJournalWarning": "carmp.errors",
    "TaskCancelled": "carmp.errors",
    "TaskTimeout": "carmp.errors",
    "TerminalToolError": "carmp.errors",
    "TransitionsDropped": "carmp.errors",
    "UnknownSpecialist": "carmp.errors",
    "ValueTooLarge": "carmp.errors",
    "WorkerCrashed": "carmp.errors",
    "WorldUnavailable": "carmp.errors",
    "WouldBlock": "carmp.errors",
    "Farm": "carmp.pool.farm",
    "TaskFuture": "carmp.pool.farm",
    "WorkerInfo": "carmp.pool.worker",
    "current_infra": "carmp.pool.worker",
    "current_worker": "carmp.pool.worker",
    "BudgetLimits": "carmp.shared.budget",
    "BudgetSnapshot": "carmp.shared.budget",
    "BudgetStatistics": "carmp.shared.budget",
    "CoordinationBudget": "carmp.shared.budget",
    "Lease": "carmp.shared.budget",
    "RunLatency": "carmp.shared.budget",
    "TokenAccounting": "carmp.shared.budget",
    "Event": "carmp.shared.event",
    "EventKind": "carmp.shared.event",
    "Span": "carmp.shared.event",
    "SpanStatus": "carmp.shared.event",
    "EventLog": "carmp.shared.eventlog",
    "EventLogStats": "carmp.shared.eventlog",
    "EventReader": "carmp.shared.eventlog",
    "Action": "carmp.runtime.actions",
    "ActionResult": "carmp.runtime.actions",
    "ActionStatus": "carmp.runtime.actions",
    "ActionType": "carmp.runtime.actions",
    "FailureBehavior": "carmp.runtime.actions",
    "Proposal": "carmp.runtime.actions",
    "ProposalResult": "carmp.runtime.actions",
    "Runtime": "carmp.runtime.runtime",
    "ToolSpec": "carmp.runtime.tools",
    "AgentContext": "carmp.runtime.context",
    "MergeReport": "carmp.runtime.context",
    "TaskScope": "carmp.runtime.context",
    "current_context": "carmp.runtime.context",
    "DELETE": "carmp.shared.state",
    "BatchOutcome": "carmp.shared.state",
    "StateStatistics": "carmp.shared.state",
    "StateStore": "carmp.shared.state",
    "StateTransition": "carmp.shared.state",
    "Transaction": "carmp.shared.state",
    "FarmStatistics": "carmp.pool.tasks",
    "JournalReport": "carmp.shared.journal",
    "SharedInfra": "carmp.runtime.infra",
    "PolicySet": "carmp.shared.policy",
    "PolicyViolation": "carmp.shared.policy",
    "PolicyEngine": "carmp.runtime.policy",
    "Mailbox": "carmp.shared.mailbox",
    "MailboxReceiver": "carmp.shared.mailbox",
    "MailboxStatistics": "carmp.shared.mailbox",
    "Message": "carmp.shared.mailbox",
    "MessageKind": "carmp.shared.mailbox",
    "AgentOutcome": "carmp.agents.types",
    "AgentOutput": "carmp.agents.types",
    "AgentSpec": "carmp.agents.types",
    "Evidence": "carmp.agents.types",
    "EvidenceKind": "carmp.agents.types",
    "OutcomeMetrics": "carmp.agents.types",
    "OutcomeStatus": "carmp.agents.types",
    "budget_skipped_output": "carmp.agents.types",
    "sweep": "carmp.shared.segment",
    "ConcurrencyControl": "carmp.agents.gate",
    "Pipeline": "carmp.agents.patterns.swarm",
    "PipelineResult": "carmp.agents.patterns.swarm",
    "Swarm": "carmp.agents.patterns.swarm",
    "SwarmMode": "carmp.agents.patterns.swarm",
    "SwarmResult": "carmp.agents.patterns.swarm",
    "Supervisor": "carmp.agents.patterns.supervisor",
    "SupervisorResult": "carmp.agents.patterns.supervisor",
    "MapReduce": "carmp.agents.patterns.map_reduce",
    "MapReduceResult": "carmp.agents.patterns.map_reduce",
    "Fleet": "carmp.agents.patterns.fleet",
    "FleetResult": "carmp.agents.patterns.fleet",
    "Vote": "carmp.agents.patterns.vote",
    "VoteResult": "carmp.agents.patterns.vote",
    "Tournament": "carmp.agents.patterns.tournament",
    "TournamentResult": "carmp.agents.patterns.tournament",
    "Delegator": "carmp.agents.patterns.delegator",
    "DelegatorResult": "carmp.agents.patterns.delegator",
    "SpawnSubtask": "carmp.agents.patterns.spawn_subtask",
    "SpawnSubtaskResult": "carmp.agents.patterns.spawn_subtask",
    "AdversarialReview": "carmp.agents.patterns.adversarial_review",
    "AdversarialReviewResult": "carmp.agents.patterns.adversarial_review",
    "Advisor": "carmp.agents.patterns.advisor",
    "AdvisorResult": "carmp.agents.patterns.advisor",
}

__version__ = "0.1.0"

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'carmp' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    if getattr(value, "__module__", "").startswith("carmp."):
        try:
            value.__module__ = "carmp"  # present the public name, as pickles will find it
        except (AttributeError, TypeError):
            pass
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
