"""Progress output: silent when quiet, two plain lines when stderr is not a terminal (a log file, CI)."""
from purify.progress import track


def test_quiet_yields_items_and_prints_nothing(monkeypatch, capsys):
    monkeypatch.setenv("PURIFY_QUIET", "1")
    assert list(track(range(3), description="step", total=3)) == [0, 1, 2]
    assert capsys.readouterr().err == ""


def test_plain_lines_when_stderr_is_not_a_terminal(monkeypatch, capsys):
    monkeypatch.delenv("PURIFY_QUIET", raising=False)
    assert list(track(iter("abc"), description="w2s_distill epoch 1/5", total=3)) == ["a", "b", "c"]
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "[progress] w2s_distill epoch 1/5: started (3 steps)"
    assert lines[1].startswith("[progress] w2s_distill epoch 1/5: 3 steps in ")
    assert len(lines) == 2
