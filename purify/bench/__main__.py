"""`python -m purify.bench PAYLOAD PATH`: run one cell (what `run_cell_subprocess` starts)."""
import sys

from .matrix import _main_cell

_main_cell(sys.argv[1], sys.argv[2])
