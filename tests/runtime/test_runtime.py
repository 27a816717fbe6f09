"""Runtime: CAR's executor cases (CAR-SPEC 3, 28-34), bad input rejected whole, concurrent
levels, skip, effects, isolated runtimes, and the guarantees across processes: a policy the
supervisor adds binds a running worker, a rollback never undoes another worker's writes,
and the shared idempotency cache deduplicates across workers (fork, forkserver, spawn).
Tests in one process run on both backends: over shared memory and over a Ray world."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from carmp import (
    ActionStatus,
    EventLog,
    InvalidProposal,
    PolicyEngine,
    Proposal,
    Runtime,
    SharedInfra,
    StateStore,
    TerminalToolError,
)

WAIT = 60.0  # bounded waits: only hit when something is broken
SMALL = dict(max_keys=256, capacity_bytes=1 << 18, transition_log_bytes=1 << 16)


@pytest.fixture
def delays() -> list[float]:
    """The backoff delays the runtime asked to sleep."""
    return []


@pytest.fixture
def runtime(backend: str, delays: list[float],
            request: pytest.FixtureRequest) -> Iterator[Runtime]:
    """A runtime over a store and log of the test's own: shared-memory ones, or the state
    and log actors of a Ray world."""
    if backend == "ray":
        world = request.getfixturevalue("ray_world")
        with Runtime(world.state, world.log, sleep=delays.append) as made:
            yield made
        return
    with StateStore(**SMALL) as state, EventLog() as log:  # type: ignore[arg-type]
        with Runtime(state, log, sleep=delays.append) as made:
            yield made


@pytest.fixture
def infra(any_world: SharedInfra) -> SharedInfra:
    return any_world


@pytest.fixture
def local_infra() -> Iterator[SharedInfra]:
    """A shared-memory world, for tests whose worker processes attach to it."""
    with SharedInfra() as made:
        yield made


def events(log: EventLog, proposal_id: str) -> list[tuple[str, str | None]]:
    return [(e.kind, e.action_id) for e in log.events() if e.proposal_id == proposal_id]


def kinds(log: EventLog, proposal_id: str) -> list[str]:
    return [kind for kind, _ in events(log, proposal_id)]


def write(action_id: str, key: str, value: Any, **fields: Any) -> dict[str, Any]:
    return {"id": action_id, "type": "state_write", "parameters": {"key": key, "value": value},
            **fields}


def call(action_id: str, tool: str, **fields: Any) -> dict[str, Any]:
    return {"id": action_id, "type": "tool_call", "tool": tool, **fields}


class Recorder:
    """A tool that records its calls and answers from a script (an exception is raised)."""

    def __init__(self, *answers: Any) -> None:
        self.calls: list[dict[str, Any]] = []
        self.answers = list(answers)

    def __call__(self, **parameters: Any) -> Any:
        self.calls.append(parameters)
        answer = self.answers.pop(0) if self.answers else parameters
        if isinstance(answer, BaseException):
            raise answer
        return answer


# ---- CAR's executor cases ---------------------------------------------------------------------


def test_a_dependant_sees_its_dependencys_output_and_runs_after_it(runtime: Runtime) -> None:
    """CAR case 29."""
    order: list[str] = []
    runtime.register_tool("first", lambda: order.append("a1") or {"path": "/data"})
    runtime.register_tool("second", lambda where: order.append("a2") or f"read {where}")
    result = runtime.execute({"id": "p", "actions": [
        call("a2", "second", parameters={"where": "$a1.output.path"}, dependencies=["a1"]),
        call("a1", "first"),
    ]})
    assert result.succeeded and order == ["a1", "a2"]
    assert result.outputs == {"a1": {"path": "/data"}, "a2": "read /data"}
    assert events(runtime.log, "p") == [
        ("proposal_received", None),
        ("action_validated", "a1"), ("action_executing", "a1"), ("action_succeeded", "a1"),
        ("action_validated", "a2"), ("action_executing", "a2"), ("action_succeeded", "a2")]


def test_an_abort_restores_the_proposals_writes_and_logs_the_rollback(runtime: Runtime) -> None:
    """CAR case 30."""
    runtime.state.set("x", "before", "setup")
    runtime.register_tool("fail", Recorder(ValueError("disk full")))
    result = runtime.execute({"id": "p", "actions": [
        write("w1", "x", "during"), write("w2", "created", 1),
        call("boom", "fail", dependencies=["w1", "w2"]), write("later", "never", 1,
                                                              dependencies=["boom"])]})
    assert result.aborted and not result.succeeded
    assert result.error == "action 'boom' failed: ValueError: disk full"
    assert [r.status for r in result.results] == [ActionStatus.SUCCEEDED, ActionStatus.SUCCEEDED,
                                                  ActionStatus.FAILED, ActionStatus.SKIPPED]
    assert result.rolled_back == ("x", "created") and result.rollback_conflicts == ()
    assert runtime.state.snapshot() == {"x": "before"}
    rollback = runtime.log.filter(kind="state_rollback")
    assert len(rollback) == 1 and rollback[0].action_id == "boom"
    assert rollback[0].data == {"restored": ["x", "created"], "conflicts": []}
    assert kinds(runtime.log, "p")[-3:] == ["action_failed", "action_skipped", "state_rollback"]


def test_retries_back_off_from_100_ms_doubling(runtime: Runtime, delays: list[float]) -> None:
    """CAR case 31."""
    flaky = Recorder(OSError("try again"), OSError("try again"), "third time")
    runtime.register_tool("flaky", flaky)
    result = runtime.execute({"id": "p", "actions": [
        call("a", "flaky", failure_behavior="retry", max_retries=2)]})
    assert result.succeeded and result.outputs == {"a": "third time"}
    assert len(flaky.calls) == 3 and result.result("a").attempts == 3
    assert delays == [0.1, 0.2]
    retrying = runtime.log.filter(kind="action_retrying", action_id="a")
    assert [(e.data["attempt"], e.data["delay_s"]) for e in retrying] == [(2, 0.1), (3, 0.2)]
    assert retrying[0].data["error"] == "OSError: try again"


def test_spent_retries_fail_the_action_and_abort(runtime: Runtime, delays: list[float]) -> None:
    broken = Recorder(*[OSError("down")] * 5)
    runtime.register_tool("broken", broken)
    result = runtime.execute({"id": "p", "actions": [
        call("a", "broken", failure_behavior="retry", max_retries=3)]})
    assert result.aborted and result.result("a").attempts == 4 and len(broken.calls) == 4
    assert delays == [0.1, 0.2, 0.4]
    assert runtime.log.filter(kind="action_failed")[0].data == {
        "error": "OSError: down", "attempts": 4, "terminal": False}


def test_abort_and_skip_actions_are_not_retried(runtime: Runtime, delays: list[float]) -> None:
    runtime.register_tool("broken", broken := Recorder(*[OSError("down")] * 5))
    runtime.execute({"actions": [call("b", "broken", max_retries=3, failure_behavior="skip"),
                                 call("a", "broken", max_retries=3)]})
    assert len(broken.calls) == 2 and delays == []


@pytest.mark.parametrize("behavior", ["retry", "skip", "abort"])
def test_a_terminal_failure_is_never_retried_and_always_aborts(runtime: Runtime, behavior: str,
                                                               delays: list[float]) -> None:
    """CAR case 32."""
    tool = Recorder(TerminalToolError("credentials revoked"))
    runtime.register_tool("deploy", tool)
    result = runtime.execute({"actions": [
        write("w", "k", 1),
        call("a", "deploy", failure_behavior=behavior, max_retries=5, dependencies=["w"])]})
    assert len(tool.calls) == 1 and delays == [] and result.aborted
    assert result.result("a").error == "terminal failure of tool 'deploy': credentials revoked"
    assert runtime.state.get("k") is None
    assert runtime.log.filter(kind="action_failed")[0].data["terminal"] is True


def test_an_idempotent_action_runs_once_per_runtime(runtime: Runtime) -> None:
    """CAR case 33, first half: within one runtime, across proposals and within one."""
    tool = Recorder({"rows": 3}, {"rows": 4})
    runtime.register_tool("query", tool)
    once = call("q", "query", parameters={"sql": "select", "opts": {"a": 1, "b": 2}},
                idempotent=True)
    first = runtime.execute({"id": "p1", "actions": [once]})
    again = dict(once, parameters={"opts": {"b": 2, "a": 1}, "sql": "select"})
    second = runtime.execute({"id": "p2", "actions": [again, dict(again, id="q2")]})
    assert len(tool.calls) == 1
    assert first.outputs == {"q": {"rows": 3}}
    assert second.outputs == {"q": {"rows": 3}, "q2": {"rows": 3}}
    assert second.result("q").deduplicated and not first.result("q").deduplicated
    assert kinds(runtime.log, "p2").count("action_deduplicated") == 2
    assert "action_executing" not in kinds(runtime.log, "p2")
    runtime.execute({"actions": [dict(once, idempotent=False)]})
    assert len(tool.calls) == 2  # not idempotent: it runs


def test_runtimes_of_one_infra_have_their_own_idempotency_caches(infra: SharedInfra) -> None:
    """CAR case 33, second half."""
    tool = Recorder()
    proposal = {"actions": [call("q", "query", parameters={"n": 1}, idempotent=True)]}
    for _ in range(2):
        runtime = infra.make_runtime()
        runtime.register_tool("query", tool)
        runtime.execute(proposal)
    assert len(tool.calls) == 2


def test_a_tool_past_its_timeout_fails(runtime: Runtime) -> None:
    """CAR case 34 (the tool waits on an event instead of sleeping)."""
    release = threading.Event()
    runtime.register_tool("slow", lambda: release.wait(WAIT))
    try:
        result = runtime.execute({"actions": [call("a", "slow", timeout_ms=50)]})
    finally:
        release.set()
    assert result.aborted and result.result("a").status is ActionStatus.FAILED
    assert "'slow' did not finish within 50 ms" in (result.result("a").error or "")


def test_deny_tool_param_refuses_before_the_tool_runs(infra: SharedInfra) -> None:
    """CAR case 28, the executor's half; the rule also sees resolved references."""
    infra.policies.shared.add_deny_tool_param("no-rm", "shell", "command", "rm -rf")
    runtime = infra.make_runtime()
    shell = Recorder()
    runtime.register_tool("shell", shell)
    runtime.register_tool("plan", lambda: "rm -rf /")
    for actions in ([call("a", "shell", parameters={"command": "rm -rf /"})],
                    [call("p", "plan"), call("a", "shell", parameters={"command": "$p.output"},
                                             dependencies=["p"])]):
        result = runtime.execute({"id": "p", "actions": actions})
        assert result.aborted and result.result("a").status is ActionStatus.REJECTED
        assert "refused by policy 'no-rm'" in (result.result("a").error or "")
    assert shell.calls == []
    violations = infra.log.filter(kind="policy_violation", action_id="a")
    assert len(violations) == 2 and violations[0].data["policy"] == "no-rm"
    assert runtime.execute({"actions": [call("a", "shell", parameters={"command": "ls"})]}).succeeded


def test_a_local_policy_sees_the_state_and_a_skip_action_is_only_skipped(runtime: Runtime) -> None:
    assert isinstance(runtime.policies, PolicyEngine)
    runtime.policies.register("frozen", lambda action, state: "frozen" if state.get("frozen")
                              else None)
    runtime.state.set("frozen", True, "setup")
    tool = Recorder()
    runtime.register_tool("t", tool)
    result = runtime.execute({"id": "p", "actions": [call("a", "t", failure_behavior="skip"),
                                                     call("b", "t", dependencies=["a"])]})
    assert not result.aborted and tool.calls == []
    assert [r.status for r in result.results] == [ActionStatus.REJECTED, ActionStatus.SKIPPED]
    assert kinds(runtime.log, "p") == ["proposal_received", "action_validated", "policy_violation",
                                       "action_rejected", "action_skipped", "action_skipped"]


# ---- bad input: rejected whole, nothing runs, nothing is written ----------------------------------


SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}


# the problems are found before anything reaches the store or the log, so this matrix runs
# on the local backend; the rejections after it run on both
@pytest.mark.parametrize("backend", ["local"])
@pytest.mark.parametrize("bad, culprit, said", [
    (call("bad", "nope"), "bad", "calls tool 'nope', which is not registered"),
    (call("bad", "count", parameters={"n": "two"}), "bad", "tool 'count' refuses parameters['n']"),
    (call("bad", "count", parameters={}), "bad", "'n' is a required property"),
    (call("w", "count", parameters={"n": 1}), "w", "id 'w' is used by more than one action"),
    (call("bad", "count", parameters={"n": 1}, dependencies=["ghost"]), "bad", "depends on 'ghost'"),
    (call("bad", "count", parameters={"n": "$ghost.output"}), "bad", "names no action"),
    (call("bad", "count", parameters={"n": "$w.output"}), "bad", "not among 'bad''s dependencies"),
    (call("bad", "count", parameters={"n": 1}, dependencies=["bad"]), "bad", "depends on itself"),
    (call("bad", "count", parameters={"n": 1}, max_retries="x"), "bad", "field 'max_retries'"),
    (call("bad", "count", parameters={"n": 1}, colour=1), "bad", "unknown field(s) 'colour'"),
    ({"id": "bad", "tool": "count"}, "bad", "field 'type' is missing"),
])
def test_a_bad_proposal_is_rejected_before_anything_runs(runtime: Runtime, bad: dict[str, Any],
                                                         culprit: str, said: str) -> None:
    tool = Recorder()
    runtime.register_tool("count", tool, SCHEMA)
    runtime.state.set("k", "untouched", "setup")
    before = runtime.state.transition_count()
    with pytest.raises(InvalidProposal) as caught:
        runtime.execute({"id": "p", "actions": [write("w", "k", "written"), bad]})
    assert [p[0] for p in caught.value.problems] == [culprit]
    assert said in caught.value.problems[0][1] and "nothing of it ran" in str(caught.value)
    rejected = runtime.log.filter(kind="action_rejected")
    assert [(e.action_id, e.proposal_id) for e in rejected] == [(culprit, "p")]
    assert said in rejected[0].data["reason"]
    assert tool.calls == [] and runtime.state.transition_count() == before
    assert runtime.state.snapshot() == {"k": "untouched"}
    assert not {"action_executing", "state_changed"} & {e.kind for e in runtime.log.events()}


def test_a_cycle_is_rejected_naming_its_members(runtime: Runtime) -> None:
    with pytest.raises(InvalidProposal, match="dependency cycle") as caught:
        runtime.execute(Proposal.from_dict({"id": "p", "actions": [
            write("free", "k", 1), write("a", "x", 1, dependencies=["b"]),
            write("b", "y", 1, dependencies=["a"])]}))
    assert [p[0] for p in caught.value.problems] == ["a", "b"]
    assert [e.action_id for e in runtime.log.filter(kind="action_rejected")] == ["a", "b"]
    assert runtime.state.snapshot() == {}


def test_every_problem_is_reported_and_logged_at_once(runtime: Runtime) -> None:
    with pytest.raises(InvalidProposal) as caught:
        runtime.execute({"actions": [call("a", "nope"), call("b", "nope", dependencies=["z"])]})
    assert sorted(p[0] or "" for p in caught.value.problems) == ["a", "b", "b"]
    assert len(runtime.log.filter(kind="action_rejected")) == 3


def test_unparseable_input_is_rejected_and_logged(runtime: Runtime) -> None:
    for bad in ('{"actions": [', b"[1, 2]", {"id": "p", "actions": "all of them"}):
        with pytest.raises(InvalidProposal):
            runtime.execute(bad)  # type: ignore[arg-type]
    rejected = runtime.log.filter(kind="action_rejected")
    assert len(rejected) == 3 and rejected[2].proposal_id == "p"
    assert "not valid JSON" in rejected[0].data["reason"]
    assert runtime.log.filter(kind="proposal_received") == []


def test_resolved_parameters_are_checked_when_the_action_runs(runtime: Runtime) -> None:
    tool = Recorder()
    runtime.register_tool("count", tool, SCHEMA)
    runtime.register_tool("words", lambda: "two")
    result = runtime.execute({"id": "p", "actions": [
        write("w", "k", 1), call("src", "words"),
        call("use", "count", parameters={"n": "$src.output"}, dependencies=["src", "w"])]})
    assert result.aborted and tool.calls == [] and runtime.state.snapshot() == {}
    assert result.result("use").status is ActionStatus.REJECTED
    assert "parameters['n']: 'two' is not of type 'integer'" in (result.result("use").error or "")
    assert ("action_rejected", "use") in events(runtime.log, "p")


def test_a_missing_field_of_a_result_fails_without_retries(runtime: Runtime,
                                                           delays: list[float]) -> None:
    runtime.register_tool("src", lambda: {"a": 1})
    runtime.register_tool("use", tool := Recorder())
    result = runtime.execute({"actions": [
        call("src", "src"), call("use", "use", parameters={"x": "$src.output.b"},
                                 dependencies=["src"], failure_behavior="retry")]})
    assert result.aborted and tool.calls == [] and delays == []
    assert result.result("use").error == "parameters: '$src.output.b': the output of 'src' has no field 'b'"


def test_an_output_that_is_not_json_fails_without_retries(runtime: Runtime,
                                                          delays: list[float]) -> None:
    runtime.register_tool("odd", tool := Recorder({1, 2}))
    result = runtime.execute({"actions": [call("a", "odd", failure_behavior="retry")]})
    assert result.aborted and len(tool.calls) == 1 and delays == []
    assert "returned a set, which is not JSON" in (result.result("a").error or "")


# ---- levels, skip, state actions and effects ----------------------------------------------------


def test_a_level_without_abort_actions_runs_concurrently(runtime: Runtime) -> None:
    """Both tools wait for each other: run one after the other, the barrier would break."""
    barrier = threading.Barrier(2, timeout=WAIT)
    runtime.register_tool("meet", lambda side: barrier.wait() >= 0 and side)
    result = runtime.execute({"actions": [
        call("left", "meet", parameters={"side": "l"}, failure_behavior="skip"),
        call("right", "meet", parameters={"side": "r"}, failure_behavior="retry", max_retries=0)]})
    assert result.succeeded and result.outputs == {"left": "l", "right": "r"}


def test_a_level_with_an_abort_action_runs_in_the_callers_thread(runtime: Runtime) -> None:
    threads: list[int] = []
    runtime.register_tool("where", lambda: threads.append(threading.get_ident()))
    runtime.execute({"actions": [call("a", "where"), call("b", "where", failure_behavior="skip")]})
    assert threads == [threading.get_ident()] * 2


def test_a_failed_skip_action_skips_its_dependants_and_the_rest_goes_on(runtime: Runtime) -> None:
    runtime.register_tool("broken", Recorder(ValueError("nope")))
    runtime.register_tool("ok", Recorder())
    result = runtime.execute({"id": "p", "actions": [
        call("bad", "broken", failure_behavior="skip"),
        write("after", "k", 1, dependencies=["bad"]),
        write("reads", "j", 1, state_dependencies=["k"]),
        write("free", "free", 1)]})
    assert not result.aborted and not result.succeeded
    assert [r.status for r in result.results] == [ActionStatus.FAILED, ActionStatus.SKIPPED,
                                                  ActionStatus.SKIPPED, ActionStatus.SUCCEEDED]
    assert result.result("reads").error == "not run: 'after', which it depends on, did not succeed"
    assert runtime.state.snapshot() == {"free": 1}
    assert ("action_failed", "bad") in events(runtime.log, "p")
    assert ("action_skipped", "bad") in events(runtime.log, "p")


def test_state_actions_read_write_and_assert(runtime: Runtime) -> None:
    runtime.state.set("config", {"mode": "fast", "n": 2}, "setup")
    result = runtime.execute({"id": "p", "actions": [
        {"id": "r", "type": "state_read", "parameters": {"key": "config"}},
        write("w", "copy", "$r.output.mode", dependencies=["r"]),
        {"id": "check", "type": "assertion", "parameters": {"key": "config",
                                                            "expected": {"n": 2, "mode": "fast"}}},
    ]})
    assert result.succeeded and result.outputs["r"] == {"mode": "fast", "n": 2}
    assert result.outputs["w"] == "fast" and runtime.state.get("copy") == "fast"
    assert [t.action_id for t in runtime.state.transitions()[-1:]] == ["w"]
    assert runtime.log.filter(kind="state_changed")[0].data == {"key": "copy"}


def test_a_failed_assertion_aborts(runtime: Runtime) -> None:
    runtime.state.set("n", 1, "setup")
    result = runtime.execute({"actions": [
        write("w", "other", 1), {"id": "check", "type": "assertion",
                                 "parameters": {"key": "n", "expected": True},
                                 "dependencies": ["w"]}]})
    assert result.aborted and runtime.state.snapshot() == {"n": 1}
    assert result.result("check").error == "assertion failed: state key 'n' holds 1, expected True"


def test_expected_effects_are_written_on_success_only(runtime: Runtime) -> None:
    runtime.register_tool("fetch", lambda url: {"body": f"<{url}>"})
    runtime.register_tool("broken", Recorder(ValueError("no")))
    result = runtime.execute({"actions": [
        call("f", "fetch", parameters={"url": "u"},
             expected_effects={"page": "$f.output.body", "fetched": True}),
        call("b", "broken", failure_behavior="skip", expected_effects={"never": 1})]})
    assert not result.aborted and runtime.state.snapshot() == {"page": "<u>", "fetched": True}
    assert [t.action_id for t in runtime.state.transitions()] == ["f", "f"]


def test_a_deduplicated_action_commits_its_effects_again(runtime: Runtime) -> None:
    tool = Recorder("paid", ValueError("later step"))
    runtime.register_tool("charge", tool)
    runtime.register_tool("then", Recorder(ValueError("later step")))
    charge = call("c", "charge", idempotent=True, expected_effects={"receipt": "$c.output"})
    first = runtime.execute({"actions": [charge, call("t", "then", dependencies=["c"])]})
    assert first.aborted and runtime.state.get("receipt") is None  # rolled back
    second = runtime.execute({"actions": [charge]})
    assert second.result("c").deduplicated and runtime.state.get("receipt") == "paid"
    assert len(tool.calls) == 1


def test_async_tools_run(runtime: Runtime) -> None:
    async def fetch(url: str) -> str:
        await asyncio.sleep(0)
        return url.upper()

    runtime.register_tool("fetch", fetch)
    assert runtime.execute({"actions": [call("a", "fetch", parameters={"url": "u"})]}).outputs == {
        "a": "U"}


def test_an_interrupt_rolls_back_and_surfaces(runtime: Runtime) -> None:
    runtime.register_tool("interrupt", Recorder(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        runtime.execute({"id": "p", "actions": [write("w", "k", 1),
                                                call("i", "interrupt", dependencies=["w"])]})
    assert runtime.state.snapshot() == {}
    assert runtime.log.filter(kind="state_rollback")[0].data["restored"] == ["k"]


def test_rollback_keeps_what_another_agent_wrote_meanwhile(runtime: Runtime) -> None:
    def other_agent_writes() -> None:
        runtime.state.set("shared", "theirs", "other-agent")
        raise ValueError("and then this action fails")

    runtime.register_tool("meanwhile", other_agent_writes)
    result = runtime.execute({"id": "p", "actions": [
        write("w", "shared", "mine"), write("v", "private", "mine"),
        call("m", "meanwhile", dependencies=["w", "v"])]})
    assert result.rolled_back == ("private",) and result.rollback_conflicts == ("shared",)
    assert runtime.state.snapshot() == {"shared": "theirs"}
    assert runtime.log.filter(kind="state_rollback")[0].data == {
        "restored": ["private"], "conflicts": ["shared"]}


# ---- runtimes and the infra -----------------------------------------------------------------------


def test_a_standalone_runtime_owns_and_closes_its_store_and_log() -> None:
    runtime = Runtime()
    names = [runtime.state.name, runtime.log.name]  # type: ignore[union-attr]
    assert all(os.path.exists(f"/dev/shm/{name}") for name in names)
    runtime.register_tool("t", Recorder())
    assert runtime.execute({"actions": [call("a", "t", expected_effects={"k": 1})]}).succeeded
    runtime.close()
    assert not any(os.path.exists(f"/dev/shm/{name}") for name in names)


def test_an_isolated_runtime_writes_to_its_overlay_and_logs_to_the_shared_log(
        infra: SharedInfra) -> None:
    infra.state.set("goal", "win", "setup")
    runtime, context = infra.make_isolated_runtime("scout")
    runtime.register_tool("fail", Recorder(ValueError("no")))
    result = runtime.execute({"id": "p", "actions": [
        {"id": "r", "type": "state_read", "parameters": {"key": "goal"}},
        write("w", "plan", "$r.output", dependencies=["r"])]})
    assert result.outputs == {"r": "win", "w": "win"}
    assert infra.state.snapshot() == {"goal": "win"} and context.get("plan") == "win"
    assert infra.log.filter(kind="state_changed")[0].data == {"key": "plan", "overlay": "scout"}
    aborted = runtime.execute({"actions": [write("w", "plan", "other"), write("x", "x", 1),
                                           call("f", "fail", dependencies=["w", "x"])]})
    assert aborted.rolled_back == ("plan", "x") and context.changes() == {"plan": "win"}
    context.merge_to_parent()
    assert infra.state.snapshot() == {"goal": "win", "plan": "win"}


# ---- across processes -----------------------------------------------------------------------------


def test_a_policy_added_in_the_supervisor_binds_a_running_worker(local_infra: SharedInfra,
                                                                 mp_context: Any) -> None:
    ready, go, report = mp_context.Event(), mp_context.Event(), mp_context.Queue()
    worker = mp_context.Process(target=run_shell_twice, args=(local_infra, ready, go, report))
    worker.start()
    assert ready.wait(WAIT)
    local_infra.policies.shared.add_deny_tool_param("no-rm", "shell", "command", "rm -rf")
    go.set()
    before, after, calls = (report.get(timeout=WAIT) for _ in range(3))
    worker.join(WAIT)
    assert worker.exitcode == 0
    assert before["results"][0]["status"] == "succeeded"
    assert after["aborted"] and after["results"][0]["status"] == "rejected"
    assert calls == 1  # only the run before the rule reached the tool


def run_shell_twice(infra: SharedInfra, ready: Any, go: Any, report: Any) -> None:
    with infra:
        runtime = infra.make_runtime()
        calls: list[str] = []
        runtime.register_tool("shell", lambda command: calls.append(command))
        proposal = {"actions": [call("a", "shell", parameters={"command": "rm -rf /tmp/x"})]}
        report.put(runtime.execute(proposal).to_dict())
        ready.set()
        assert go.wait(WAIT)
        report.put(runtime.execute(proposal).to_dict())
        report.put(len(calls))


def test_a_rollback_in_one_worker_keeps_another_workers_writes(local_infra: SharedInfra,
                                                               mp_context: Any) -> None:
    a_wrote, b_committed, report = mp_context.Event(), mp_context.Event(), mp_context.Queue()
    a = mp_context.Process(target=write_then_fail,
                           args=(local_infra, a_wrote, b_committed, report))
    b = mp_context.Process(target=write_and_commit, args=(local_infra, a_wrote, b_committed))
    a.start()
    b.start()
    result = report.get(timeout=WAIT)
    a.join(WAIT)
    b.join(WAIT)
    assert (a.exitcode, b.exitcode) == (0, 0)
    assert result["aborted"] and result["rolled_back"] == ["only_a"]
    assert result["rollback_conflicts"] == ["contested"]
    assert local_infra.state.snapshot() == {"contested": "B", "only_b": "B"}
    rollback = local_infra.log.filter(kind="state_rollback")
    assert [e.data for e in rollback] == [{"restored": ["only_a"], "conflicts": ["contested"]}]


def write_then_fail(infra: SharedInfra, a_wrote: Any, b_committed: Any, report: Any) -> None:
    def wait_for_b_then_fail() -> None:
        a_wrote.set()
        assert b_committed.wait(WAIT)
        raise ValueError("failing after B committed")

    with infra:
        runtime = infra.make_runtime()
        runtime.register_tool("fail", wait_for_b_then_fail)
        report.put(runtime.execute({"id": "pa", "actions": [
            write("w1", "contested", "A"), write("w2", "only_a", "A"),
            call("f", "fail", dependencies=["w1", "w2"])]}).to_dict())


def write_and_commit(infra: SharedInfra, a_wrote: Any, b_committed: Any) -> None:
    with infra:
        assert a_wrote.wait(WAIT)
        result = infra.make_runtime().execute({"id": "pb", "actions": [
            write("w1", "contested", "B"), write("w2", "only_b", "B")]})
        assert result.succeeded
        b_committed.set()


def test_shared_idempotency_deduplicates_across_workers(local_infra: SharedInfra,
                                                        mp_context: Any) -> None:
    a_running, b_arrived, report = mp_context.Event(), mp_context.Event(), mp_context.Queue()
    first = mp_context.Process(target=call_expensive,
                               args=(local_infra, a_running, b_arrived, report))
    first.start()
    assert a_running.wait(WAIT)  # A holds the claim, its tool waits for B to arrive
    second = mp_context.Process(target=call_expensive,
                                args=(local_infra, None, b_arrived, report))
    second.start()
    results = [report.get(timeout=WAIT) for _ in range(2)]
    first.join(WAIT)
    second.join(WAIT)
    assert (first.exitcode, second.exitcode) == (0, 0)
    assert local_infra.state.get("calls") == 1
    assert sorted(r["results"][0]["deduplicated"] for r in results) == [False, True]
    assert [r["results"][0]["output"] for r in results] == [{"doubled": 42}] * 2
    assert len(local_infra.log.filter(kind="action_deduplicated")) == 1


def call_expensive(infra: SharedInfra, a_running: Any, b_arrived: Any, report: Any) -> None:
    def expensive(n: int) -> dict[str, int]:
        infra.state.update("calls", lambda calls: (calls or 0) + 1, "count")
        if a_running is not None:
            a_running.set()
            assert b_arrived.wait(WAIT)
        return {"doubled": 2 * n}

    with infra:
        runtime = infra.make_runtime(shared_idempotency=True)
        runtime.register_tool("expensive", expensive)
        if a_running is None:
            b_arrived.set()  # B's claim comes after A's: A is running or done
        report.put(runtime.execute({"actions": [
            call("x", "expensive", parameters={"n": 21}, idempotent=True)]}).to_dict())
