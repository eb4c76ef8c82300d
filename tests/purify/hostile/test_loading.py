"""Every hostile checkpoint of the `loading` area is refused with one line (or loads, where it is legitimate)."""
import pytest

from purify.testing.hostile import run_case
from purify.testing.hostile.loading import CASES


def test_case_names_are_unique():
    names = [case.name for case in CASES]
    assert len(names) == len(set(names)) and len(names) >= 40


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_loading_case(case, tmp_path):
    outcome = run_case(case, tmp_path)
    assert outcome.ok_for(case), (outcome.exit_code, outcome.stderr[-2000:], outcome.lost)
