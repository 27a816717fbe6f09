"""The demo's puzzles: seeded instances, and searches whose answers check out."""

from __future__ import annotations

import pytest

from carmp.demo.puzzle import GOAL, Search, instances, slide, solves


def test_a_seed_makes_the_same_instances_and_another_seed_others() -> None:
    assert instances(6, 1) == instances(6, 1)
    assert instances(6, 1) != instances(6, 2)
    assert all(p.board != GOAL and sorted(p.board) == list(range(9)) for p in instances(20, 3))


@pytest.mark.parametrize(("order", "heuristic"), [("breadth", "manhattan"),
                                                  ("astar", "manhattan"),
                                                  ("astar", "misplaced"),
                                                  ("greedy", "manhattan")])
def test_every_search_order_finds_moves_that_solve_the_board(order: str, heuristic: str) -> None:
    for puzzle in instances(4, 9):
        search = Search(puzzle.board, order, heuristic)
        while search.solution is None and not search.exhausted:
            search.expand(500)
        assert search.solution is not None and solves(puzzle.board, search.solution)


def test_astar_is_optimal_and_greedy_need_not_be() -> None:
    lengths: dict[str, list[int]] = {}
    for order in ("breadth", "astar", "greedy"):
        for puzzle in instances(12, 4):
            search = Search(puzzle.board, order)
            search.expand(10**6)
            assert search.solution is not None
            lengths.setdefault(order, []).append(len(search.solution))
    assert lengths["astar"] == lengths["breadth"]
    assert sum(lengths["greedy"]) > sum(lengths["astar"])


def test_expand_stops_at_its_limit_and_goes_on_from_there() -> None:
    hard = max(instances(12, 4), key=lambda p: p.scramble)
    search = Search(hard.board, "breadth")
    assert search.expand(10) == 10 and search.solution is None
    search.expand(10**6)
    assert search.solution is not None and search.expanded > 10


def test_solves_refuses_wrong_and_illegal_moves() -> None:
    board = slide(GOAL, "U")
    assert board is not None
    assert solves(board, ["D"])
    assert not solves(board, [])
    assert not solves(board, ["U"])
    assert not solves(GOAL, ["R"])  # the blank is in the corner: no room to its right
    assert not solves(board, ["X"])
    with pytest.raises(ValueError, match="order"):
        Search(GOAL, "depth")
