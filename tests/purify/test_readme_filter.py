"""The README's "Adding a filter" example runs as written and passes the filters' conformance kit."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"

CHECKS = '''
from purify.testing.filter_conformance import FilterConformance
kit = FilterConformance()
for check in ("test_result_is_consistent_and_json_able", "test_deterministic_and_blind_to_ground_truth",
              "test_a_user_threshold_overrides_the_rule", "test_empty_data_is_an_error",
              "test_leaves_the_model_as_it_was"):
    getattr(kit, check)("label_loss")
print("conformant")
'''


def test_the_readme_filter_example_is_conformant():
    section = README.read_text(encoding="utf-8").split("## Adding a filter", 1)[1]
    code = section.split("```python", 1)[1].split("```", 1)[0]
    # a fresh interpreter, so the example's registration does not leak into this session's registry
    done = subprocess.run([sys.executable, "-c", code + CHECKS], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "conformant" in done.stdout
