"""The coordination patterns (CAR-SPEC 2.11) and their results, in one place:
`from carmp.patterns import Swarm, MapReduce, Vote`."""

from carmp.agents.gate import ConcurrencyControl as ConcurrencyControl
from carmp.agents.gate import GateReport as GateReport
from carmp.agents.merge import merge_overlays as merge_overlays
from carmp.agents.patterns.adversarial_review import AdversarialReview as AdversarialReview
from carmp.agents.patterns.adversarial_review import (
    AdversarialReviewResult as AdversarialReviewResult,
)
from carmp.agents.patterns.adversarial_review import ReviewFinding as ReviewFinding
from carmp.agents.patterns.adversarial_review import ReviewSeverity as ReviewSeverity
from carmp.agents.patterns.advisor import Advisor as Advisor
from carmp.agents.patterns.advisor import AdvisorResult as AdvisorResult
from carmp.agents.patterns.advisor import AdvisorTriggerContext as AdvisorTriggerContext
from carmp.agents.patterns.advisor import AdvisorTriggerPolicy as AdvisorTriggerPolicy
from carmp.agents.patterns.advisor import AdvisorVerdict as AdvisorVerdict
from carmp.agents.patterns.advisor import ConsultDecision as ConsultDecision
from carmp.agents.patterns.advisor import TaskRisk as TaskRisk
from carmp.agents.patterns.advisor import TriggerDecision as TriggerDecision
from carmp.agents.patterns.advisor import VerdictKind as VerdictKind
from carmp.agents.patterns.delegator import DelegationRecord as DelegationRecord
from carmp.agents.patterns.delegator import Delegator as Delegator
from carmp.agents.patterns.delegator import DelegatorResult as DelegatorResult
from carmp.agents.patterns.fleet import Fleet as Fleet
from carmp.agents.patterns.fleet import FleetResult as FleetResult
from carmp.agents.patterns.map_reduce import MapReduce as MapReduce
from carmp.agents.patterns.map_reduce import MapReduceResult as MapReduceResult
from carmp.agents.patterns.spawn_subtask import SpawnSubtask as SpawnSubtask
from carmp.agents.patterns.spawn_subtask import SpawnSubtaskResult as SpawnSubtaskResult
from carmp.agents.patterns.spawn_subtask import SubtaskRecord as SubtaskRecord
from carmp.agents.patterns.supervisor import Supervisor as Supervisor
from carmp.agents.patterns.supervisor import SupervisorResult as SupervisorResult
from carmp.agents.patterns.swarm import Pipeline as Pipeline
from carmp.agents.patterns.swarm import PipelineResult as PipelineResult
from carmp.agents.patterns.swarm import Swarm as Swarm
from carmp.agents.patterns.swarm import SwarmMode as SwarmMode
from carmp.agents.patterns.swarm import SwarmResult as SwarmResult
from carmp.agents.patterns.tournament import MatchDecision as MatchDecision
from carmp.agents.patterns.tournament import MatchResult as MatchResult
from carmp.agents.patterns.tournament import Tournament as Tournament
from carmp.agents.patterns.tournament import TournamentResult as TournamentResult
from carmp.agents.patterns.vote import Vote as Vote
from carmp.agents.patterns.vote import VoteResult as VoteResult
