"""`purify bench`: run a benchmark matrix cell by cell, cache every finished cell, write JSON + markdown + plot.

Each cell runs in its own subprocess (so peak memory is the cell's own and a crash loses one cell), and its
result is cached as JSON under ``<out>/cells/<suite>/``; a second run reuses finished cells, and an interrupted
tune cell resumes its optuna study from the cell's ``.work`` folder. No knob of any
defense is computed from triggered data: cells see triggered files only to *measure* ASR after the fact.
"""
from .matrix import Cell, _claim, _main_cell, cell_output, cell_path, run_cell_subprocess, run_matrix, save_json
from .suites import (MULTI_SEED, PRUNING_STRATEGIES, SUITES, ZOO_ENTRIES, Suite, default_knob_cell, run_suite,
                     suite_cells, write_outputs)

__all__ = ["MULTI_SEED", "PRUNING_STRATEGIES", "SUITES", "ZOO_ENTRIES", "Cell", "Suite", "_claim", "_main_cell",
           "cell_output", "cell_path", "default_knob_cell", "run_cell_subprocess", "run_matrix", "run_suite",
           "save_json", "suite_cells", "write_outputs"]
