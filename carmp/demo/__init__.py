"""`carmp demo`: a real CPU-bound agent farm of puzzle-solving strategies (see run.py)."""

from carmp.demo.run import DemoReport as DemoReport
from carmp.demo.run import run_demo as run_demo
