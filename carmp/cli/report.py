"""`carmp report JOURNAL -o run.html`: one self-contained HTML page about a run.

The page shows a timeline per worker process (which agent or task ran when, failures
and crashes marked), the budget over time, event counts by kind, and the pattern's
results when given (`--results`, say what `carmp run --json` printed). It loads nothing
from the network: CSS and the small script are inline, charts are SVG written here, and
a Content-Security-Policy forbids any fetch. A journal is untrusted input, so every
string taken from it (or from the results file) is escaped before it reaches the page.
"""

from __future__ import annotations

import argparse
import html
import os
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from carmp.cli.inspect import load_events
from carmp.cli.main import OK, UsageError
from carmp.cli.run import outputs_in
from carmp.shared.event import Event, EventKind

WIDTH = 1100           # px of every chart
LABEL_WIDTH = 170      # px left of the timeline for the worker labels
ROW_HEIGHT = 36        # px per worker in the timeline
AXIS_HEIGHT = 24       # px under a chart for its time axis
BUDGET_HEIGHT = 220    # px of the budget chart's plot area
COUNT_ROW = 20         # px per kind in the event count chart
CHAR_WIDTH = 6.6       # px a character takes at the charts' 11px font, about
TOTAL_TOKENS = 2       # index of total tokens in a budget event's [in, out, total, cost] words

# Colours for agents, picked by a hash of the name so an agent keeps its colour.
PALETTE = ("#4e79a7", "#59a14f", "#9c755f", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7",
           "#f28e2b", "#8cd17d", "#86bcb6")
FAILED_COLOUR = "#d62728"
TASK_COLOUR = "#9aa0a6"


def register(subcommands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    report = subcommands.add_parser(
        "report", help="write a self-contained HTML report of a run's event journal",
        description="Timeline per worker, budget over time, event counts and the pattern "
                    "results of one run, as one HTML file that needs no network.")
    report.add_argument("journal", metavar="JOURNAL",
                        help="an event journal (.jsonl), or the run id of a live run")
    report.add_argument("-o", "--output", metavar="HTML", type=Path,
                        help="where to write the page (default: JOURNAL with .html)")
    report.add_argument("--results", metavar="FILE.json", type=Path,
                        help="the pattern's result JSON (what `carmp run --json` prints)")
    report.set_defaults(run=run_report)


def run_report(args: argparse.Namespace) -> int:
    events = load_events(args.journal)
    results = None if args.results is None else load_results(args.results)
    output = args.output or Path(args.journal).with_suffix(".html")
    if output.exists() and os.path.exists(args.journal) and output.samefile(args.journal):
        raise UsageError(f"the report would overwrite the journal {args.journal}; name "
                         "another file with -o")
    page = render(events, source=args.journal, results=results)
    try:
        output.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write the report to {output} ({exc.strerror or exc}); "
                         "choose another path with -o") from None
    print(f"wrote {output}: {len(events)} events, {len(worker_pids(events))} workers")
    return OK


def load_results(path: Path) -> Any:
    """The results file's JSON (any JSON value: the page shows what it finds)."""
    try:
        return orjson.loads(path.read_bytes())
    except OSError as exc:
        raise UsageError(f"cannot read the results file {path} ({exc.strerror or exc}); "
                         "give the JSON that `carmp run --json` printed") from None
    except orjson.JSONDecodeError as exc:
        raise UsageError(f"the results file {path} is not JSON ({exc}); give the JSON that "
                         "`carmp run --json` printed") from None


# ---- what the journal says ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Stint:
    """One agent's or plain task's time on a worker (nanosecond timestamps). `end_ns`
    None: it never finished in the journal (its worker died, or the journal ends)."""

    pid: int
    kind: str  # "agent" or "task"
    label: str
    start_ns: int
    end_ns: int | None
    failed: bool
    note: str


@dataclass(frozen=True, slots=True)
class Crash:
    pid: int
    at_ns: int
    note: str


def _text(value: Any) -> str:
    """A journal value as text, whatever JSON type a writer gave it."""
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def _worker_of(event: Event) -> int:
    """The worker an event is about: the supervisor names it in data["pid"]; workers
    write their own events."""
    pid = event.data.get("pid")
    return pid if type(pid) is int else event.pid


AGENT_KINDS = (EventKind.AGENT_STARTED, EventKind.AGENT_FINISHED)
TASK_KINDS = (EventKind.TASK_STARTED, EventKind.TASK_FINISHED, EventKind.TASK_FAILED)
WORKER_KINDS = (EventKind.WORKER_STARTED, EventKind.WORKER_EXITED, EventKind.WORKER_CRASHED,
                *AGENT_KINDS, *TASK_KINDS)


def worker_pids(events: Iterable[Event]) -> list[int]:
    """Every worker the journal mentions, in order of appearance."""
    return list(dict.fromkeys(_worker_of(event) for event in events if event.kind in WORKER_KINDS))


def stints_and_crashes(events: Sequence[Event]) -> tuple[list[Stint], list[Crash]]:
    """Pair agent_started/agent_finished and task_started/task_finished (or task_failed)
    per worker; a crash ends, as failed, whatever its worker had open."""
    open_runs: dict[tuple[int, str, str], list[int]] = {}
    stints: list[Stint] = []
    crashes: list[Crash] = []

    def close(key: tuple[int, str, str], at_ns: int, failed: bool, note: str) -> None:
        starts = open_runs.get(key)
        start_ns = starts.pop(0) if starts else at_ns  # an end without a start: a point
        stints.append(Stint(key[0], key[1], key[2], start_ns, at_ns, failed, note))

    for event in events:
        data, pid = event.data, _worker_of(event)
        if event.kind == EventKind.WORKER_CRASHED:
            note = f"worker crashed, exit code {_text(data.get('exitcode'))}"
            if data.get("reason") is not None:
                note += f" ({_text(data['reason'])})"
            crashes.append(Crash(pid, event.timestamp_ns, note))
            for key in [key for key in open_runs if key[0] == pid]:
                while open_runs[key]:
                    close(key, event.timestamp_ns, True, note)
            continue
        if event.kind in AGENT_KINDS:
            key = (pid, "agent", _text(data.get("agent", "?")))
        elif event.kind in TASK_KINDS:
            key = (pid, "task", f"task {_text(data.get('task_id', '?'))}")
        else:
            continue
        if event.kind in (EventKind.AGENT_STARTED, EventKind.TASK_STARTED):
            open_runs.setdefault(key, []).append(event.timestamp_ns)
        elif event.kind == EventKind.AGENT_FINISHED:
            error = data.get("error")
            close(key, event.timestamp_ns, data.get("succeeded") is not True,
                  "" if error is None else _text(error))
        elif event.kind == EventKind.TASK_FINISHED:
            close(key, event.timestamp_ns, False, "")
        else:  # task_failed
            close(key, event.timestamp_ns, True,
                  f"{_text(data.get('error', '?'))}: {_text(data.get('message', ''))}")
    for key, starts in open_runs.items():
        stints.extend(Stint(key[0], key[1], key[2], start, None, False,
                            "still running when the journal ends") for start in starts)
    stints.sort(key=lambda stint: stint.start_ns)
    return stints, crashes


@dataclass(frozen=True, slots=True)
class BudgetPoint:
    at_ns: int
    spent: int  # total tokens committed so far
    held: int   # total tokens reserved and not yet settled


def _words(value: Any) -> list[int] | None:
    """A budget event's [input, output, total, cost micros], if it is one."""
    if isinstance(value, list) and len(value) == 4 and all(type(v) is int for v in value):
        return value
    return None


def budget_over_time(events: Iterable[Event]) -> tuple[list[BudgetPoint], list[tuple[int, str]]]:
    """Spent and held total tokens after each budget event, and the denials (when, why),
    from budget_reserved / budget_refunded / budget_denied."""
    points: list[BudgetPoint] = []
    denials: list[tuple[int, str]] = []
    held: dict[str, int] = {}
    spent = 0
    for event in events:
        data = event.data
        if event.kind == EventKind.BUDGET_RESERVED:
            estimate = _words(data.get("estimate"))
            held[_text(data.get("lease_id"))] = estimate[TOTAL_TOKENS] if estimate else 0
        elif event.kind == EventKind.BUDGET_REFUNDED:
            held.pop(_text(data.get("lease_id")), None)
            used = _words(data.get("used"))
            spent += used[TOTAL_TOKENS] if used else 0
        elif event.kind == EventKind.BUDGET_DENIED:
            denials.append((event.timestamp_ns, _text(data.get("reason", "?"))))
            continue
        else:
            continue
        points.append(BudgetPoint(event.timestamp_ns, spent, sum(held.values())))
    return points, denials


# ---- drawing -------------------------------------------------------------------------------


def _e(value: Any) -> str:
    return html.escape(value if isinstance(value, str) else str(value), quote=True)


class TimeScale:
    """Maps journal nanoseconds to x pixels between `left` and `right`."""

    def __init__(self, first_ns: int, last_ns: int, left: float, right: float) -> None:
        self.first_ns, self.left, self.right = first_ns, left, right
        self.span_ns = max(last_ns - first_ns, 1)

    def x(self, at_ns: int) -> float:
        return self.left + (at_ns - self.first_ns) / self.span_ns * (self.right - self.left)

    def axis(self, y: float) -> str:
        """Tick marks and second labels along y."""
        seconds = self.span_ns / 1e9
        step = _nice_step(seconds / 8)
        marks = [f'<line class="axis" x1="{self.left}" y1="{y}" x2="{self.right}" y2="{y}"/>']
        tick = 0.0
        while tick <= seconds + step / 1e6:
            x = self.x(self.first_ns + round(tick * 1e9))
            marks.append(f'<line class="grid" x1="{x:.1f}" y1="0" x2="{x:.1f}" y2="{y}"/>'
                         f'<text x="{x:.1f}" y="{y + 15}" text-anchor="middle">'
                         f'{tick:.{_decimals(step)}f} s</text>')
            tick += step
        return "".join(marks)


def _nice_step(rough: float) -> float:
    """1, 2 or 5 times a power of ten, at least `rough`."""
    power = 10.0 ** _floor_log10(rough)
    return next(power * factor for factor in (1, 2, 5, 10) if power * factor >= rough)


def _floor_log10(value: float) -> int:
    exponent = 0
    value = max(value, 1e-9)
    while value >= 10:
        value, exponent = value / 10, exponent + 1
    while value < 1:
        value, exponent = value * 10, exponent - 1
    return exponent


def _decimals(step: float) -> int:
    return max(0, -_floor_log10(step))


def _colour(label: str) -> str:
    return PALETTE[zlib.crc32(label.encode()) % len(PALETTE)]


def timeline_svg(stints: Sequence[Stint], crashes: Sequence[Crash], pids: Sequence[int],
                 scale: TimeScale, last_ns: int) -> str:
    rows = {pid: index for index, pid in enumerate(pids)}
    height = ROW_HEIGHT * len(pids)
    parts = [f'<svg class="chart" width="{WIDTH}" height="{height + AXIS_HEIGHT}" '
             f'viewBox="0 0 {WIDTH} {height + AXIS_HEIGHT}" role="img" '
             f'aria-label="timeline per worker">', scale.axis(height)]
    for pid, row in rows.items():
        top = row * ROW_HEIGHT
        parts.append(f'<text class="worker" x="4" y="{top + 20}">worker pid {pid}</text>'
                     f'<line class="row" x1="{LABEL_WIDTH}" y1="{top + ROW_HEIGHT}" '
                     f'x2="{WIDTH}" y2="{top + ROW_HEIGHT}"/>')
    for stint in stints:
        top = rows[stint.pid] * ROW_HEIGHT
        start = scale.x(stint.start_ns)
        width = max(scale.x(stint.end_ns if stint.end_ns is not None else last_ns) - start, 2.0)
        took = "" if stint.end_ns is None else f", {(stint.end_ns - stint.start_ns) / 1e6:.3f} ms"
        tip = f"{stint.kind} {stint.label} on pid {stint.pid}{took}"
        tip += f", FAILED: {stint.note}" if stint.failed else (f", {stint.note}" if stint.note else "")
        classes = stint.kind + (" failed" if stint.failed else "") + \
            (" unfinished" if stint.end_ns is None else "")
        if stint.kind == "agent":
            fill = FAILED_COLOUR if stint.failed else _colour(stint.label)
            y, bar_height = top + 5, 18
        else:
            fill = FAILED_COLOUR if stint.failed else TASK_COLOUR
            y, bar_height = top + 26, 6
        parts.append(f'<g class="{classes}"><title>{_e(tip)}</title>'
                     f'<rect x="{start:.1f}" y="{y}" width="{width:.1f}" height="{bar_height}" '
                     f'fill="{fill}"/>')
        if stint.kind == "agent":
            mark = "\u2715 " if stint.failed else ""
            if (len(stint.label) + len(mark)) * CHAR_WIDTH + 6 <= width:
                parts.append(f'<text class="in-bar" x="{start + 3:.1f}" y="{top + 18}">'
                             f'{_e(mark + stint.label)}</text>')
            elif stint.failed:
                parts.append(f'<text class="fail-mark" x="{start + width + 1:.1f}" '
                             f'y="{top + 18}">\u2715</text>')
        parts.append("</g>")
    for crash in crashes:
        x, top = scale.x(crash.at_ns), rows[crash.pid] * ROW_HEIGHT
        parts.append(f'<g class="crash"><title>{_e(crash.note)}</title>'
                     f'<line x1="{x:.1f}" y1="{top + 2}" x2="{x:.1f}" y2="{top + ROW_HEIGHT - 2}"/>'
                     f'<text x="{x + 3:.1f}" y="{top + 14}">\u2715 crashed</text></g>')
    parts.append("</svg>")
    return "".join(parts)


def budget_svg(points: Sequence[BudgetPoint], denials: Sequence[tuple[int, str]],
               scale: TimeScale) -> str:
    top_value = max([1, *(max(point.spent, point.held) for point in points)])
    height = BUDGET_HEIGHT

    def y(value: int) -> float:
        return height - value / top_value * (height - 10)

    def steps(value_of: str) -> str:
        coords, previous = [f"{scale.left:.1f},{height}"], 0
        for point in points:
            x, value = scale.x(point.at_ns), getattr(point, value_of)
            coords.append(f"{x:.1f},{y(previous):.1f} {x:.1f},{y(value):.1f}")
            previous = value
        coords.append(f"{scale.right:.1f},{y(previous):.1f}")
        return " ".join(coords)

    parts = [f'<svg class="chart" width="{WIDTH}" height="{height + AXIS_HEIGHT}" '
             f'viewBox="0 0 {WIDTH} {height + AXIS_HEIGHT}" role="img" '
             f'aria-label="budget over time">', scale.axis(height),
             f'<text x="4" y="14">{top_value} tokens</text><text x="4" y="{height}">0</text>',
             f'<polyline class="spent" points="{steps("spent")}"/>',
             f'<polyline class="held" points="{steps("held")}"/>']
    for at_ns, reason in denials:
        x = scale.x(at_ns)
        parts.append(f'<g class="denied"><title>budget denied: {_e(reason)}</title>'
                     f'<path d="M{x:.1f},{height - 12} l5,10 h-10 z"/></g>')
    parts.append("</svg>")
    return "".join(parts)


def counts_svg(counts: Sequence[tuple[str, int]]) -> str:
    most = max([1, *(count for _, count in counts)])
    height = COUNT_ROW * len(counts)
    bar_room = WIDTH - LABEL_WIDTH - 80
    parts = [f'<svg class="chart" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} '
             f'{height}" role="img" aria-label="event counts by kind">']
    for row, (kind, count) in enumerate(counts):
        top, width = row * COUNT_ROW, max(count / most * bar_room, 1.0)
        parts.append(f'<text x="{LABEL_WIDTH - 6}" y="{top + 14}" text-anchor="end">{_e(kind)}'
                     f'</text><rect class="count" x="{LABEL_WIDTH}" y="{top + 3}" '
                     f'width="{width:.1f}" height="{COUNT_ROW - 6}"/>'
                     f'<text x="{LABEL_WIDTH + width + 4:.1f}" y="{top + 14}">{count}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]], table_id: str = "",
           numeric: Sequence[int] = ()) -> str:
    """An HTML table; every cell is escaped; `numeric` columns align right."""
    head = "".join(f"<th>{_e(header)}</th>" for header in headers)
    body = "".join(
        "<tr>" + "".join(f'<td class="num">{_e(cell)}</td>' if index in numeric
                         else f"<td>{_e(cell)}</td>" for index, cell in enumerate(row)) + "</tr>"
        for row in rows)
    identity = f' id="{table_id}"' if table_id else ""
    return f"<table{identity}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# ---- the page ------------------------------------------------------------------------------


def render(events: Sequence[Event], *, source: str, results: Any = None) -> str:
    """The whole report page for these events (and the results JSON, if any)."""
    if not events:
        body = "<p>The journal holds no events.</p>"
        return _page(source, body)
    first_ns = min(event.timestamp_ns for event in events)
    last_ns = max(event.timestamp_ns for event in events)
    scale = TimeScale(first_ns, last_ns, LABEL_WIDTH, WIDTH - 10)
    stints, crashes = stints_and_crashes(events)
    pids = worker_pids(events)
    counts = Counter(event.kind for event in events).most_common()
    agents = [stint for stint in stints if stint.kind == "agent"]
    failures = [stint for stint in stints if stint.failed]
    run_ids = sorted({event.run_id for event in events if event.run_id is not None})
    started = datetime.fromtimestamp(first_ns / 1e9, UTC).isoformat(timespec="seconds")
    summary = _table(("", ""), [
        ("journal", source), ("run", ", ".join(run_ids) or "?"),
        ("started", started.replace("+00:00", " UTC")),
        ("duration", f"{(last_ns - first_ns) / 1e9:.3f} s"), ("events", len(events)),
        ("workers", len(pids)), ("agents run", len(agents)),
        ("failures", f"{len(failures)} (agents and tasks), {len(crashes)} worker crashes"),
    ])
    sections = [
        f'<section id="summary"><h2>Run</h2>{summary}</section>',
        _timeline_section(stints, crashes, pids, scale, last_ns),
        _budget_section(events, scale, results),
        '<section id="counts"><h2>Events by kind</h2>'
        f'{counts_svg(counts)}{_table(("kind", "events"), counts, "event-counts", (1,))}'
        '</section>',
        _results_section(results),
    ]
    return _page(source, "".join(sections))


def _timeline_section(stints: Sequence[Stint], crashes: Sequence[Crash], pids: Sequence[int],
                      scale: TimeScale, last_ns: int) -> str:
    if not pids:
        return ('<section id="timeline"><h2>Timeline per worker</h2><p>No worker, agent '
                'or task events in this journal.</p></section>')
    rows = [(stint.label, stint.pid, f"{(stint.start_ns - scale.first_ns) / 1e9:.3f}",
             "" if stint.end_ns is None else f"{(stint.end_ns - stint.start_ns) / 1e6:.3f}",
             "FAILED" if stint.failed else ("unfinished" if stint.end_ns is None else "ok"),
             stint.note) for stint in stints if stint.kind == "agent"]
    legend = ('<p class="legend"><span class="key agent"></span> agent (colour per name) '
              '<span class="key task"></span> task <span class="key failed"></span> failed '
              '\u2715 failure or crash. Hover a bar for details.</p>')
    agent_table = ('<h3>Agent runs</h3><p><input id="agent-filter" type="search" '
                   'placeholder="filter agent runs" aria-label="filter agent runs"></p>'
                   + _table(("agent", "worker pid", "start (s)", "took (ms)", "status", "error"),
                            rows, "agent-runs", (1, 2, 3)) if rows else "")
    return (f'<section id="timeline"><h2>Timeline per worker</h2>{legend}'
            f'{timeline_svg(stints, crashes, pids, scale, last_ns)}{agent_table}</section>')


def _budget_section(events: Sequence[Event], scale: TimeScale, results: Any) -> str:
    points, denials = budget_over_time(events)
    reported = _reported_tokens(results)
    from_results = ("" if reported is None else f"<p>The agents' outputs in the results "
                    f"report {reported} tokens spent.</p>")
    if not points and not denials:
        return ('<section id="budget"><h2>Budget</h2><p>No budget events in this journal: '
                'the run reserved nothing ahead (spend recorded from agent outputs alone is '
                f'not journaled).</p>{from_results}</section>')
    spent = points[-1].spent if points else 0
    return ('<section id="budget"><h2>Budget over time</h2>'
            f'<p class="legend"><span class="key spent"></span> total tokens spent '
            f'({spent} in all) <span class="key held"></span> reserved, not yet settled '
            f'<span class="key denied"></span> denied ({len(denials)})</p>'
            f'{budget_svg(points, denials, scale)}{from_results}</section>')


def _reported_tokens(results: Any) -> int | None:
    """The input and output tokens the results' agent outputs report, None if none does."""
    reports = [output["tokens"] for output in outputs_in(results)
               if isinstance(output.get("tokens"), dict)]
    if not reports:
        return None
    return sum(value for report in reports
               for value in (report.get("input_tokens"), report.get("output_tokens"))
               if type(value) is int)


def _results_section(results: Any) -> str:
    if results is None:
        return ('<section id="results"><h2>Pattern results</h2><p class="absent">No results '
                'given: pass <code>--results FILE.json</code> (what <code>carmp run '
                '--json</code> prints) to show them here.</p></section>')
    rows = [(output.get("name", "?"),
             "yes" if output.get("error") is None else "no",
             output.get("turns", ""), output.get("tool_calls", ""),
             output.get("error") or output.get("answer", ""))
            for output in outputs_in(results)]
    outputs = _table(("agent", "ok", "turns", "tool calls", "answer / error"), rows,
                     "result-outputs", (2, 3)) if rows else ""
    fields = [(key, value) for key, value in results.items()
              if isinstance(value, (str, int, float, bool))] if isinstance(results, dict) else []
    scalars = _table(("field", "value"), fields, "result-fields") if fields else ""
    raw = orjson.dumps(results, option=orjson.OPT_INDENT_2).decode()
    return (f'<section id="results"><h2>Pattern results</h2>{scalars}{outputs}'
            f'<details><summary>the whole result JSON</summary><pre>{_e(raw)}</pre></details>'
            '</section>')


STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #202124; background: #fff; }
h1 { font-size: 22px; margin: 0 0 16px; } h2 { font-size: 18px; margin: 28px 0 8px; }
table { border-collapse: collapse; margin: 8px 0; }
th, td { border-bottom: 1px solid #e0e0e0; padding: 3px 10px; text-align: left;
         vertical-align: top; max-width: 520px; overflow-wrap: anywhere; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
svg.chart { display: block; font: 11px system-ui, sans-serif; margin: 8px 0; }
svg text { fill: #3c4043; } svg .in-bar { fill: #fff; } svg .fail-mark { fill: #d62728; }
svg .axis { stroke: #5f6368; } svg .grid { stroke: #eceff1; } svg .row { stroke: #e0e0e0; }
svg .worker { font-weight: 600; }
svg .unfinished rect { opacity: .55; stroke: #202124; stroke-dasharray: 3 2; }
svg .failed rect { stroke: #7f0000; }
svg .crash line { stroke: #d62728; stroke-width: 3; } svg .crash text { fill: #d62728; }
svg polyline { fill: none; stroke-width: 2; }
svg .spent { stroke: #4e79a7; } svg .held { stroke: #f28e2b; stroke-dasharray: 4 3; }
svg .denied path { fill: #d62728; } svg .count { fill: #76b7b2; }
.legend .key { display: inline-block; width: 12px; height: 12px; margin: 0 4px 0 12px;
               vertical-align: -1px; }
.key.agent { background: #4e79a7; } .key.task { background: #9aa0a6; }
.key.failed, .key.denied { background: #d62728; } .key.spent { background: #4e79a7; }
.key.held { background: #f28e2b; }
pre { background: #f6f8fa; padding: 8px; max-height: 400px; overflow: auto; }
.absent { color: #5f6368; }
"""

# A script error shows in the title, so a headless browser check can see it.
SCRIPT = """
window.addEventListener("error", function (event) {
  document.title = "script error: " + event.message;
});
(function () {
  var filter = document.getElementById("agent-filter");
  if (filter) {
    var rows = document.querySelectorAll("#agent-runs tbody tr");
    filter.addEventListener("input", function () {
      var wanted = filter.value.toLowerCase();
      rows.forEach(function (row) {
        row.hidden = wanted !== "" && row.textContent.toLowerCase().indexOf(wanted) < 0;
      });
    });
  }
  document.body.setAttribute("data-ready", "yes");
})();
"""

# Nothing but what is inline may load or run.
POLICY = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'"


def _page(source: str, body: str) -> str:
    title = f"carmp report: {source}"
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{POLICY}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(title)}</title><style>{STYLE}</style></head>"
            f"<body><h1>{_e(title)}</h1>{body}<script>{SCRIPT}</script></body></html>\n")
