"""Spec files for `carmp run`: what a good one gives, and errors that name the field."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from carmp.cli.spec import import_runner, load_spec
from carmp.errors import InvalidSpec
from carmp.shared.budget import BudgetLimits

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

GOOD = """
pattern = "swarm"
task = "t"
runner = "echo_runner:run"
workers = 3
[budget]
max_total_tokens = 100
[[agents]]
name = "a"
[[agents]]
name = "b"
tools = ["search"]
max_turns = 4
metadata = { answer = "7" }
[[agents]]
name = "c"
"""


@pytest.fixture(autouse=True)
def own_sys_path(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """import_runner adds folders to sys.path: keep them out of other tests."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield


def spec_file(tmp_path: Path, text: str, name: str = "spec.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_good_toml_spec_gives_its_agents_budget_workers_and_runner(tmp_path: Path) -> None:
    spec = load_spec(spec_file(tmp_path, GOOD))
    assert [agent.name for agent in spec.agents] == ["a", "b", "c"]
    assert spec.agents[1].tools == ("search",) and spec.agents[1].max_turns == 4
    assert spec.agents[1].metadata == {"answer": "7"} and spec.agents[0].system_prompt == ""
    assert spec.budget == BudgetLimits(max_total_tokens=100)
    assert (spec.pattern, spec.workers, spec.runner) == ("swarm", 3, "echo_runner:run")
    assert spec.launch is not None and spec.sweep is None


def test_a_json_spec_reads_like_toml(tmp_path: Path) -> None:
    spec = load_spec(spec_file(tmp_path, '{"pattern": "vote", "task": "q", "runner": "m:f", '
                                         '"agents": [{"name": "a", "max_turns": 2}]}',
                               "spec.json"))
    assert spec.pattern == "vote" and spec.agents[0].max_turns == 2


@pytest.mark.parametrize(("change", "message"), [
    (('name = "c"', 'name = "c"\nmax_turns = "ten"'),
     "spec.toml: agents[2].max_turns: expected an int >= 0, got 'ten'"),
    (('name = "c"', 'name = "c"\nmax_turn = 3'), "spec.toml: agents[2].max_turn: unknown field"),
    (('name = "c"', 'name = "a"'), "spec.toml: agents[2].name: 'a' is already the name of "
                                   "agents[0]"),
    (('name = "c"', 'name = ""'), "spec.toml: agents[2].name: expected a non-empty string"),
    (('name = "c"', 'system_prompt = "p"'), "spec.toml: agents[2].name: missing"),
    (('"swarm"', '"swarms"'), "spec.toml: pattern: unknown pattern 'swarms' (known: swarm,"),
    (('pattern = "swarm"', 'pattern = "swarm"\nmode = "hybrid"'),
     "spec.toml: mode: invalid mode 'hybrid'"),
    (('workers = 3', 'workers = 0'), "spec.toml: workers: expected an int >= 1, got 0"),
    (('max_total_tokens = 100', 'max_total_tokens = -1'),
     "spec.toml: budget.max_total_tokens: expected an int >= 0, got -1"),
    (('max_total_tokens = 100', 'max_tokens = 1'), "spec.toml: budget.max_tokens: unknown"),
    (('"echo_runner:run"', '"echo_runner"'), "spec.toml: runner: expected 'module:function'"),
    (('task = "t"', 'task = 5'), "spec.toml: task: expected a string, got 5"),
    (('task = "t"', 'tsk = "t"'), "spec.toml: task: missing"),
    (('workers = 3', 'workers = 3\nitems = ["x"]'),
     "spec.toml: items: unknown field for pattern 'swarm'"),
])
def test_a_bad_field_is_named_with_the_file(tmp_path: Path, change: tuple[str, str],
                                            message: str) -> None:
    with pytest.raises(InvalidSpec) as raised:
        load_spec(spec_file(tmp_path, GOOD.replace(*change, 1)))
    assert str(raised.value).startswith(f"{tmp_path}/{message}")


@pytest.mark.parametrize(("text", "message"), [
    ('pattern = "swarm"\n[[agents', "not valid TOML"),
    ("[1, 2]", "expected a table"),
])
def test_a_file_that_is_not_a_spec_says_so(tmp_path: Path, text: str, message: str) -> None:
    suffix = "toml" if "pattern" in text else "json"
    with pytest.raises(InvalidSpec, match=message):
        load_spec(spec_file(tmp_path, text, f"spec.{suffix}"))


def test_a_missing_file_or_other_suffix_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidSpec, match="cannot read the spec file"):
        load_spec(tmp_path / "none.toml")
    with pytest.raises(InvalidSpec, match="must end in .toml or .json"):
        load_spec(spec_file(tmp_path, GOOD, "spec.yaml"))


def test_fleet_missions_must_name_an_agent(tmp_path: Path) -> None:
    text = GOOD.replace('"swarm"', '"fleet"') + '[[missions]]\nagent = "zed"\ntask = "x"\n'
    with pytest.raises(InvalidSpec, match=r"missions\[0\].agent: no agent is named 'zed'"):
        load_spec(spec_file(tmp_path, text))


def test_a_sweep_table_makes_the_pattern_optional(tmp_path: Path) -> None:
    text = GOOD.replace('pattern = "swarm"\ntask = "t"\n', "") + \
        '[sweep]\ntasks = ["x", "y"]\nseeds = [1, 2]\n'
    spec = load_spec(spec_file(tmp_path, text))
    assert spec.sweep is not None and spec.pattern is None and spec.launch is None
    assert (spec.sweep.tasks, spec.sweep.seeds) == (("x", "y"), (1, 2))
    with pytest.raises(InvalidSpec, match=r"sweep.seeds: expected a non-empty list of ints"):
        load_spec(spec_file(tmp_path, text.replace("[1, 2]", '["1"]')))
    with pytest.raises(InvalidSpec, match="pattern: missing"):
        load_spec(spec_file(tmp_path, GOOD.replace('pattern = "swarm"\n', "")))


def test_sweep_flag_sweeps_the_spec_task(tmp_path: Path) -> None:
    spec = load_spec(spec_file(tmp_path, GOOD), sweep=True)
    assert spec.sweep is not None and spec.sweep.tasks == ("t",) and spec.sweep.seeds == (0,)


def test_the_runner_is_imported_from_the_spec_folder(tmp_path: Path) -> None:
    spec = load_spec(EXAMPLES / "swarm.toml")
    assert import_runner(spec).__name__ == "run"


@pytest.mark.parametrize(("runner", "message"), [
    ("no_such_module_here:run", "runner: cannot import module 'no_such_module_here'"),
    ("echo_runner:nope", "runner: module 'echo_runner' has no function 'nope'"),
])
def test_a_runner_that_cannot_be_found_is_named(tmp_path: Path, runner: str,
                                                message: str) -> None:
    spec_path = EXAMPLES / "swarm.toml"
    copied = spec_file(tmp_path, spec_path.read_text().replace("echo_runner:run", runner))
    (tmp_path / "echo_runner.py").write_text((EXAMPLES / "echo_runner.py").read_text())
    with pytest.raises(InvalidSpec, match=message):
        import_runner(load_spec(copied))
