"""The demo's work: 8-puzzle instances and the searches that solve them.

A board is a tuple of 9 tiles read row by row, 0 the blank; the goal is 1..8 then the
blank. Instances are random walks back from the goal, so every one is solvable, and a
seed makes the same set. A solution is the list of moves of the blank ("U", "D", "L",
"R"). Searches run in slices (`Search.expand(n)`) so that an agent can spend its work
units a tool call at a time; every tie is broken by insertion order, so the same
strategy finds the same solution with the same number of expansions every time.
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

Board = tuple[int, ...]

SIDE = 3
GOAL: Board = (1, 2, 3, 4, 5, 6, 7, 8, 0)
MOVES = {"U": -SIDE, "D": SIDE, "L": -1, "R": 1}
OPPOSITE = {"U": "D", "D": "U", "L": "R", "R": "L"}


def slide(board: Board, move: str) -> Board | None:
    """The board after the blank moves that way, or None when it would leave the board."""
    blank = board.index(0)
    row, column = divmod(blank, SIDE)
    if (move == "U" and row == 0) or (move == "D" and row == SIDE - 1) \
            or (move == "L" and column == 0) or (move == "R" and column == SIDE - 1):
        return None
    target = blank + MOVES[move]
    tiles = list(board)
    tiles[blank], tiles[target] = tiles[target], tiles[blank]
    return tuple(tiles)


def solves(board: Sequence[int], moves: Sequence[str]) -> bool:
    """Whether playing `moves` from `board` reaches the goal (every move legal)."""
    current: Board | None = tuple(board)
    for move in moves:
        if current is None or move not in MOVES:
            return False
        current = slide(current, move)
    return current == GOAL


@dataclass(frozen=True, slots=True)
class Instance:
    """One puzzle of the bundled set: its name, start board and scramble length."""

    name: str
    board: Board
    scramble: int


def instances(count: int, seed: int) -> list[Instance]:
    """`count` puzzles from `seed`: random walks of 8 to 40 moves back from the goal
    that never undo their last move, so they range from easy to hard."""
    rng = random.Random(seed)
    made: list[Instance] = []
    for index in range(count):
        length = rng.randint(8, 40)
        board, last = GOAL, ""
        for _ in range(length):
            choices = [m for m in MOVES if m != OPPOSITE.get(last) and slide(board, m) is not None]
            last = rng.choice(choices)
            board = slide(board, last) or board
        made.append(Instance(f"p{index:02d}", board, length))
    return made


def manhattan(board: Board) -> int:
    """Sum of every tile's distance from its goal square (admissible)."""
    total = 0
    for square, tile in enumerate(board):
        if tile:
            home = tile - 1
            total += abs(square // SIDE - home // SIDE) + abs(square % SIDE - home % SIDE)
    return total


def misplaced(board: Board) -> int:
    """Tiles not on their goal square (admissible, weaker than manhattan)."""
    return sum(1 for square, tile in enumerate(board) if tile and tile != square + 1)


HEURISTICS: dict[str, Callable[[Board], int]] = {"manhattan": manhattan, "misplaced": misplaced}


class Search:
    """One search over one board, run a slice at a time. `order` picks the frontier:
    "breadth" (FIFO), "astar" (g + h) or "greedy" (h alone)."""

    def __init__(self, board: Board, order: str, heuristic: str = "manhattan") -> None:
        if order not in ("breadth", "astar", "greedy"):
            raise ValueError(f"order must be breadth, astar or greedy, got {order!r}")
        self.order = order
        self.estimate = HEURISTICS[heuristic]
        self.expanded = 0
        self.solution: list[str] | None = None
        self._parents: dict[Board, tuple[Board, str] | None] = {board: None}
        self._depth: dict[Board, int] = {board: 0}
        self._pushed = 0
        self._queue: deque[Board] = deque()
        self._heap: list[tuple[int, int, Board]] = []
        self._push(board)

    @property
    def exhausted(self) -> bool:
        return not self._queue and not self._heap

    def _push(self, board: Board) -> None:
        if self.order == "breadth":
            self._queue.append(board)
            return
        score = self.estimate(board)
        if self.order == "astar":
            score += self._depth[board]
        self._pushed += 1
        heapq.heappush(self._heap, (score, self._pushed, board))

    def _pop(self) -> Board:
        return self._queue.popleft() if self.order == "breadth" else heapq.heappop(self._heap)[2]

    def expand(self, limit: int) -> int:
        """Expand up to `limit` nodes, stopping at the goal; the number expanded."""
        done = 0
        while done < limit and self.solution is None and not self.exhausted:
            board = self._pop()
            done += 1
            if board == GOAL:
                self.solution = self._path_to(board)
                break
            depth = self._depth[board] + 1
            for move in MOVES:
                child = slide(board, move)
                if child is None:
                    continue
                known = self._depth.get(child)
                if known is not None and (self.order != "astar" or known <= depth):
                    continue
                self._depth[child] = depth
                self._parents[child] = (board, move)
                self._push(child)
        self.expanded += done
        return done

    def _path_to(self, board: Board) -> list[str]:
        moves: list[str] = []
        step = self._parents[board]
        while step is not None:
            board, move = step
            moves.append(move)
            step = self._parents[board]
        return moves[::-1]
