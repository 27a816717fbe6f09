"""The backend seam: Farm(backend=...) picks where workers and world live, refuses options
a backend cannot honour, and carmp never imports Ray unless asked to."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from carmp import BackendUnsupported, Farm
from carmp.backends.base import Backend, Capabilities
from carmp.backends.local import LocalBackend
from tests.pool import tasks


class _NoTimeouts(Backend):
    name = "no-timeouts"
    capabilities = Capabilities(shared_memory=True, per_task_timeout=False,
                                kill_running_task=False, max_rss=False, recycle_workers=False,
                                start_methods=False, multi_node=False)


def test_a_backend_refuses_the_options_its_capabilities_lack() -> None:
    backend = _NoTimeouts()
    backend.check({"timeout": None, "max_rss_mb": None})  # options left out are fine
    for option, value in (("timeout", 1.0), ("max_rss_mb", 10), ("max_tasks_per_worker", 3),
                          ("start_method", "fork")):
        with pytest.raises(BackendUnsupported, match=f"cannot honour {option}="):
            backend.check({option: value})
    with pytest.raises(BackendUnsupported, match="timeout"):
        Farm(workers=1, backend=backend, timeout=1.0)


def test_bad_backend_choices_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="backend must be one of"):
        Farm(workers=1, backend="dask")
    with pytest.raises(BackendUnsupported, match="names a Ray cluster"):
        Farm(workers=1, address="127.0.0.1:6379")
    with pytest.raises(ValueError, match="start_method must be one of"):
        LocalBackend("thread")


def test_a_backend_object_is_used_as_given() -> None:
    with Farm(workers=1, backend=LocalBackend("spawn")) as farm:
        assert farm.start_method == "spawn" and farm.backend.name == "local"
        assert farm.map(tasks.square, range(4)) == [0, 1, 4, 9]


def test_carmp_never_imports_ray_unless_asked_and_says_how_to_get_it() -> None:
    """In a process where Ray cannot be imported: the local farm, the patterns and the
    command line work, and backend='ray' says to install carmp[ray]."""
    script = textwrap.dedent("""
        import sys

        class NoRay:
            def find_spec(self, name, path=None, target=None):
                if name == "ray" or name.startswith("ray."):
                    raise ImportError("No module named 'ray' (blocked by the test)")
                return None

        sys.meta_path.insert(0, NoRay())
        import carmp, carmp.patterns, carmp.cli.main
        from carmp import BackendUnavailable, Farm

        with Farm(workers=1) as farm:
            assert farm.map(abs, [-3]) == [3]
        try:
            Farm(workers=1, backend="ray")
        except BackendUnavailable as exc:
            print("unavailable:", exc)
        print("ray imported:", "ray" in sys.modules)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "pip install 'carmp[ray]'" in done.stdout
    assert "ray imported: False" in done.stdout
