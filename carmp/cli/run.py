"""`carmp run SPEC`: run the pattern a spec file describes (carmp/cli/spec.py) on a Farm,
or, in sweep mode, benchmark its agents.

A pattern run prints the agents' outputs and the result's verdict as a table, or with
`--json` the result's JSON; `--out FILE` also writes that JSON to FILE. A pattern that
fails (no agent succeeded, the budget ran out) exits 1; a bad spec exits 2.

Sweep mode (`--sweep`, or a `[sweep]` table) runs every agent x task x seed cell alone
(the seed reaches the runner as `metadata.seed`) across the farm under the spec's one
budget, each gated by it right before it starts, at most one per worker at a time. Each
finished cell is appended at once to the results file (`--out` or `[sweep].out`; .jsonl
or .csv), so an interrupted sweep keeps what it did: a rerun skips every cell already
there, keyed by (agent, task, seed). Then a leaderboard of the matrix's cells: per agent
the cells, how many succeeded, the mean duration and the tokens. When the budget refuses
a cell the sweep stops starting cells and exits 1; the rows written stay, and a rerun
with more budget finishes the rest.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from pathlib import Path
from typing import IO, Any

import orjson

from carmp.agents.runner import AgentLauncher, AgentRun, Runner
from carmp.agents.types import AgentOutput
from carmp.cli.main import FAILED, OK, UsageError
from carmp.cli.spec import PatternResult, RunSpec, SweepSpec, import_runner, load_spec
from carmp.errors import BudgetError, InvalidSpec, ResultsCorrupt
from carmp.pool.farm import Farm
from carmp.shared.budget import TokenAccounting

Cell = tuple[str, str, int]  # agent name, task, seed
ROW_FIELDS = ("agent", "task", "seed", "succeeded", "status", "answer", "error", "turns",
              "tool_calls", "duration_ms", "input_tokens", "output_tokens", "total_tokens",
              "cost_usd")
ANSWER_WIDTH = 60


def register(subcommands: Any) -> None:
    command = subcommands.add_parser(
        "run", help="run a pattern, or a benchmark sweep, described in a TOML or JSON file",
        description="Run the pattern a spec file describes on a local farm, or with --sweep "
                    "(or a [sweep] table) benchmark its agents: every agent x task x seed, "
                    "one row per cell in a resumable .jsonl or .csv file, and a leaderboard.")
    command.add_argument("spec", metavar="SPEC", type=Path, help="the spec file (.toml, .json)")
    command.add_argument("--workers", type=_positive_int, metavar="N",
                         help="worker processes (default: the spec's, else one per CPU)")
    command.add_argument("--json", action="store_true", help="print JSON, not a table")
    command.add_argument("--out", type=Path, metavar="FILE",
                         help="write the result JSON here (a sweep: its rows, .jsonl or .csv)")
    command.add_argument("--sweep", action="store_true",
                         help="benchmark the agents: every agent x task x seed")
    command.set_defaults(run=run_command)


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {text!r}")
    return int(text)


def run_command(args: argparse.Namespace) -> int:
    try:
        spec = load_spec(args.spec, sweep=args.sweep)
        runner = import_runner(spec)
    except InvalidSpec as bad:
        raise UsageError(str(bad)) from None
    if args.out is not None and not args.out.resolve().parent.is_dir():
        raise UsageError(f"--out {args.out}: no such folder {args.out.parent}")
    workers = args.workers or spec.workers or os.cpu_count() or 1
    if spec.sweep is not None:
        return _sweep(spec, spec.sweep, runner, workers, args.out, args.json)
    assert spec.launch is not None  # a spec without a sweep has a pattern
    with Farm(workers=workers, start_method=spec.start_method, budget=spec.budget) as farm:
        result = spec.launch(runner, farm)
        spent = farm.infra.budget.snapshot()
    if args.out is not None:
        args.out.write_text(result.to_json() + "\n")
    if args.json:
        print(result.to_json())
    else:
        print(f"{spec.pattern} on {workers} workers: {spent.agents_started} agents started, "
              f"{spent.total_tokens} tokens")
        _show_result(result)
    return OK


# ---- a pattern's result as text ---------------------------------------------------------


def outputs_in(value: Any) -> Iterator[dict[str, Any]]:
    """Every AgentOutput (as JSON) anywhere in a result's JSON, in order."""
    if isinstance(value, dict):
        if "answer" in value and "turns" in value:
            yield value
        else:
            for item in value.values():
                yield from outputs_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from outputs_in(item)


def _one_line(text: str, width: int = ANSWER_WIDTH) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 3] + "..."


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Plain aligned columns: readable on a terminal and when piped."""
    cells = [[str(h) for h in headers], *([str(c) for c in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()
                     for row in cells)


def _show_result(result: PatternResult) -> None:
    data = result.to_dict()
    print(_table(("AGENT", "OK", "TURNS", "TOOLS", "MS", "ANSWER / ERROR"), (
        (o["name"], "yes" if AgentOutput.from_dict(o).succeeded() else "no", o["turns"],
         o["tool_calls"], f"{o['duration_ms']:.1f}", _one_line(o["error"] or o["answer"]))
        for o in outputs_in(data))))
    for key, value in data.items():
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            value = ", ".join(value)
        if key != "task" and isinstance(value, (str, int, float)):
            print(f"{key}: {_one_line(str(value), 200)}")


# ---- sweep ------------------------------------------------------------------------------


class Results:
    """A sweep's results file, JSONL or CSV: the rows already there, and appending more,
    each written whole and flushed as its cell finishes."""

    def __init__(self, path: Path) -> None:
        if path.suffix not in (".jsonl", ".csv"):
            raise UsageError(f"{path}: a sweep writes .jsonl or .csv results; name such a "
                             f"file with --out")
        self.path = path
        self.rows: dict[Cell, dict[str, Any]] = {}
        if path.exists():
            for line, row in self._read():
                cell = self._cell(row, line)
                self.rows[cell] = row

    def _read(self) -> Iterator[tuple[int, dict[str, Any]]]:
        with self.path.open(newline="") as file:
            if self.path.suffix == ".csv":
                reader = csv.DictReader(file)
                if reader.fieldnames is not None and tuple(reader.fieldnames) != ROW_FIELDS:
                    raise ResultsCorrupt(f"{self.path}: its header is not a carmp sweep's "
                                         f"({', '.join(ROW_FIELDS)}); pass another --out file")
                for row in reader:
                    yield reader.line_num, row
                return
            for number, text in enumerate(file, 1):
                if not text.strip():
                    continue
                try:
                    row = orjson.loads(text)
                except orjson.JSONDecodeError as exc:
                    raise ResultsCorrupt(f"{self.path}:{number}: not JSON ({exc}); fix or "
                                         f"remove the line and rerun") from None
                if not isinstance(row, dict):
                    raise ResultsCorrupt(f"{self.path}:{number}: expected a JSON object; "
                                         f"fix or remove the line and rerun")
                yield number, row

    def _cell(self, row: dict[str, Any], line: int) -> Cell:
        """The row's key, its fields checked and (from CSV text) typed in place."""
        try:
            if self.path.suffix == ".csv":
                row["seed"] = int(row["seed"])
                row["succeeded"] = {"true": True, "false": False}[row["succeeded"]]
                row["duration_ms"] = float(row["duration_ms"])
                row["total_tokens"] = int(row["total_tokens"])
            agent, task, seed = row["agent"], row["task"], row["seed"]
            if not (isinstance(agent, str) and isinstance(task, str) and type(seed) is int
                    and type(row["succeeded"]) is bool
                    and type(row["duration_ms"]) in (int, float)
                    and type(row["total_tokens"]) is int):
                raise TypeError("a field of the wrong type")
        except (KeyError, ValueError, TypeError) as exc:
            raise ResultsCorrupt(f"{self.path}:{line}: not a sweep result row ({exc!r}); "
                                 f"fix or remove the line and rerun") from None
        return agent, task, seed

    def append(self, row: dict[str, Any]) -> None:
        if self.path.suffix == ".jsonl":
            text = orjson.dumps(row).decode() + "\n"
        else:
            text = _csv_line(row, header=not self.path.exists() or
                             self.path.stat().st_size == 0)
        with self.path.open("a", newline="") as file:
            file.write(text)
        self.rows[row["agent"], row["task"], row["seed"]] = row


def _csv_line(row: dict[str, Any], *, header: bool) -> str:
    class Lines(list[str]):
        def write(self, text: str) -> None:
            self.append(text)

    lines = Lines()
    writer = csv.DictWriter(lines, ROW_FIELDS)
    if header:
        writer.writeheader()
    writer.writerow({key: str(value).lower() if isinstance(value, bool)
                     else "" if value is None else value for key, value in row.items()})
    return "".join(lines)


def _row(cell: Cell, output: AgentOutput) -> dict[str, Any]:
    tokens = output.tokens or TokenAccounting()
    return {"agent": cell[0], "task": cell[1], "seed": cell[2],
            "succeeded": output.succeeded(),
            "status": None if output.outcome is None else output.outcome.status.value,
            "answer": output.answer, "error": output.error, "turns": output.turns,
            "tool_calls": output.tool_calls, "duration_ms": round(output.duration_ms, 3),
            "input_tokens": tokens.input_tokens, "output_tokens": tokens.output_tokens,
            "total_tokens": tokens.total_tokens, "cost_usd": tokens.cost_usd}


class Progress:
    """A one-line progress bar on stderr when it is a terminal; silent when piped."""

    def __init__(self, total: int, stream: IO[str] = sys.stderr) -> None:
        self.total, self.done, self.stream = total, 0, stream
        self.shown = total > 0 and stream.isatty()

    def step(self) -> None:
        self.done += 1
        if self.shown:
            filled = 30 * self.done // self.total
            self.stream.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] "
                              f"{self.done}/{self.total} cells")
            self.stream.flush()

    def close(self) -> None:
        if self.shown and self.done:
            self.stream.write("\n")


def _run_cells(spec: RunSpec, runner: Runner, farm: Farm, cells: Sequence[Cell],
               results: Results, progress: Progress) -> BudgetError | None:
    """Run `cells`, one per worker at a time, appending each row as it finishes; the
    budget's refusal that stopped them early, if any."""
    agents = {agent.name: agent for agent in spec.agents}
    running: dict[Future[AgentRun], Cell] = {}

    def settle(finished: Iterable[Future[AgentRun]]) -> None:
        for future in finished:
            cell = running.pop(future)
            results.append(_row(cell, future.result().output))
            progress.step()

    refusal = None
    with AgentLauncher(farm, runner, timeout=spec.timeout) as launcher:
        for agent, task, seed in cells:
            while len(running) >= farm.workers:
                settle(wait(running, return_when=FIRST_COMPLETED).done)
            refusal = launcher.begin()
            if refusal is not None:
                break
            future = launcher.submit(agents[agent].with_metadata("seed", seed), task)
            running[future] = (agent, task, seed)
        settle(wait(running).done)
    return refusal


def leaderboard(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per agent: cells, succeeded, mean duration (ms) and tokens; most successes first,
    then the faster."""
    board: dict[str, dict[str, Any]] = {}
    for row in rows:
        entry = board.setdefault(row["agent"], {"agent": row["agent"], "cells": 0,
                                                "succeeded": 0, "mean_duration_ms": 0.0,
                                                "tokens": 0})
        entry["cells"] += 1
        entry["succeeded"] += row["succeeded"]
        entry["mean_duration_ms"] += row["duration_ms"]
        entry["tokens"] += row["total_tokens"]
    for entry in board.values():
        entry["mean_duration_ms"] = round(entry["mean_duration_ms"] / entry["cells"], 3)
    return sorted(board.values(), key=lambda e: (-e["succeeded"], e["mean_duration_ms"]))


def _sweep(spec: RunSpec, sweep: SweepSpec, runner: Runner, workers: int, out: Path | None,
           as_json: bool) -> int:
    named = out or (None if sweep.out is None else Path(sweep.out))
    if named is None:
        raise UsageError(f"{spec.file}: a sweep needs a results file: pass --out "
                         f"results.jsonl (or .csv), or set out in [sweep]")
    try:
        results = Results(named)
    except ResultsCorrupt as bad:
        raise UsageError(str(bad)) from None
    cells = [(agent.name, task, seed) for agent in spec.agents for task in sweep.tasks
             for seed in sweep.seeds]
    pending = [cell for cell in cells if cell not in results.rows]
    progress = Progress(len(pending))
    refusal = None
    if pending:
        with Farm(workers=workers, start_method=spec.start_method, budget=spec.budget) as farm:
            try:
                refusal = _run_cells(spec, runner, farm, pending, results, progress)
            finally:
                progress.close()
    board = leaderboard(results.rows[cell] for cell in cells if cell in results.rows)
    not_run = sum(cell not in results.rows for cell in cells)
    summary = {"out": str(named), "cells": len(cells), "ran": len(pending) - not_run,
               "skipped": len(cells) - len(pending), "not_run": not_run,
               "leaderboard": board}
    if as_json:
        print(orjson.dumps(summary).decode())
    else:
        print(f"sweep: {len(cells)} cells ({len(spec.agents)} agents x {len(sweep.tasks)} "
              f"tasks x {len(sweep.seeds)} seeds): {summary['ran']} ran, "
              f"{summary['skipped']} already in {named}")
        print(_table(("AGENT", "CELLS", "SUCCEEDED", "MEAN MS", "TOKENS"), (
            (e["agent"], e["cells"], e["succeeded"], f"{e['mean_duration_ms']:.1f}",
             e["tokens"]) for e in board)))
    if refusal is not None:
        print(f"carmp run: the budget stopped the sweep with {not_run} cells not run "
              f"({refusal}); rerun with a larger budget to finish them", file=sys.stderr)
        return FAILED
    return OK
