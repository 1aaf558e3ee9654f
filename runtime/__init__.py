"""Loading, running and timing lowered programs.

``load(path_or_bytes)`` gives a :class:`Program` you call like a module;
``compare`` checks it against the reference ``GraphModule``; ``time_program`` times it
(call ``set_num_threads`` before loading the programs to time).
"""

from pt2q.runtime.numerics import Comparison, compare, compare_outputs
from pt2q.runtime.program import InputMismatchError, Program, ProgramLoadError, check_pte_header, live_programs, load
from pt2q.runtime.timing import Timing, get_num_threads, set_num_threads, time_program

__all__ = [
    "load",
    "Program",
    "ProgramLoadError",
    "InputMismatchError",
    "check_pte_header",
    "live_programs",
    "compare",
    "compare_outputs",
    "Comparison",
    "time_program",
    "Timing",
    "set_num_threads",
    "get_num_threads",
]
