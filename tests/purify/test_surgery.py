"""SafeGrad surgery: exactly the conflicting component of the task gradient is removed, and nothing else."""
from __future__ import annotations

import pytest
import torch

from purify.surgery import accumulate, combine, dot, project_conflicting, safegrad, squared_norm


def _flat(grads) -> torch.Tensor:
    return torch.cat([g.reshape(-1).double() for g in grads])


def test_conflicting_component_removed_exactly():
    task = [torch.tensor([1.0, 2.0]), torch.tensor([[3.0, -1.0]])]
    align = [torch.tensor([-1.0, 0.0]), torch.tensor([[-2.0, 1.0]])]
    assert float(dot(task, align)) < 0
    out, stats = project_conflicting(task, align)
    assert stats.conflict and stats.dot < 0 and stats.cosine < 0
    # after surgery the task gradient no longer opposes the alignment gradient
    assert float(dot(out, align)) >= -1e-9
    assert abs(float(dot(out, align))) < 1e-6
    # what was removed is parallel to g_align, with the closed-form coefficient
    t, a = _flat(task), _flat(align)
    expected = t - (t @ a) / (a @ a) * a
    assert torch.allclose(_flat(out), expected, atol=1e-6)
    removed = t - _flat(out)
    assert torch.allclose(removed, (t @ a) / (a @ a) * a, atol=1e-6)
    # shapes and dtypes are kept
    assert [g.shape for g in out] == [g.shape for g in task]


def test_non_conflicting_gradients_pass_unchanged():
    task = [torch.tensor([1.0, 2.0]), torch.tensor([0.5])]
    align = [torch.tensor([1.0, -0.1]), torch.tensor([2.0])]
    assert float(dot(task, align)) > 0
    out, stats = project_conflicting(task, align)
    assert not stats.conflict
    assert all(torch.equal(o, t) for o, t in zip(out, task))
    orthogonal = [torch.tensor([1.0, 0.0])], [torch.tensor([0.0, 1.0])]
    out, stats = project_conflicting(*orthogonal)
    assert not stats.conflict and torch.equal(out[0], orthogonal[0][0])


def test_zero_alignment_gradient_leaves_task_alone():
    task = [torch.tensor([1.0, -2.0])]
    out, stats = project_conflicting(task, [torch.zeros(2)])
    assert not stats.conflict and torch.equal(out[0], task[0])


def test_inputs_are_not_modified():
    task = [torch.tensor([1.0, 2.0])]
    align = [torch.tensor([-1.0, -1.0])]
    before = (task[0].clone(), align[0].clone())
    safegrad(task, align, rho=0.5)
    assert torch.equal(task[0], before[0]) and torch.equal(align[0], before[1])


def test_none_entries_count_as_zero():
    task = [torch.tensor([1.0, 1.0]), None]
    align = [torch.tensor([-1.0, 0.0]), torch.tensor([3.0])]
    out, stats = project_conflicting(task, align)
    assert stats.conflict
    dense_task = [torch.tensor([1.0, 1.0]), torch.zeros(1)]
    dense_out, _ = project_conflicting(dense_task, align)
    assert torch.allclose(_flat(out), _flat(dense_out))
    assert combine([None], [None]) == [None]


def test_safegrad_is_projection_plus_scaled_alignment():
    torch.manual_seed(0)
    task = [torch.randn(5), torch.randn(3, 2)]
    align = [-t + 0.1 * torch.randn_like(t) for t in task]  # strongly conflicting
    update, stats = safegrad(task, align, rho=0.3)
    projected, _ = project_conflicting(task, align)
    assert stats.conflict
    assert torch.allclose(_flat(update), _flat(projected) + 0.3 * _flat(align), atol=1e-6)
    # with rho = 1 and no conflict, safegrad is the plain summed gradient
    same = [t.abs() for t in task]
    update, stats = safegrad(same, same, rho=1.0)
    assert not stats.conflict and torch.allclose(_flat(update), 2 * _flat(same))


def test_mismatched_lists_are_refused():
    with pytest.raises(ValueError):
        dot([torch.zeros(2)], [torch.zeros(2), torch.zeros(1)])
    with pytest.raises(ValueError):
        project_conflicting([torch.zeros(2)], [torch.zeros(3)])


def _grads(model: torch.nn.Module, loss: torch.Tensor, retain: bool) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, list(model.parameters()), retain_graph=retain))


def test_accumulation_over_micro_batches_matches_one_big_batch():
    """Summing each gradient separately over micro-batches, then projecting once, equals the full-batch surgery."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2))
    x, y = torch.randn(12, 4), torch.randint(0, 2, (12,))
    target = torch.randn(12, 2)

    def losses(xb, yb, tb):
        out = model(xb)
        task = torch.nn.functional.cross_entropy(out, yb)
        align = (out - tb).pow(2).mean(-1).mean() * 3.0
        return task, align

    task, align = losses(x, y, target)
    g_task_full = _grads(model, task, retain=True)
    g_align_full = _grads(model, align, retain=False)
    full, full_stats = safegrad(g_task_full, g_align_full, rho=0.7)

    g_task = g_align = None
    for idx in (slice(0, 5), slice(5, 9), slice(9, 12)):
        weight = (idx.stop - idx.start) / 12  # each micro-batch's share of the step's mean loss
        t, a = losses(x[idx], y[idx], target[idx])
        g_task = accumulate(g_task, _grads(model, t * weight, retain=True))
        g_align = accumulate(g_align, _grads(model, a * weight, retain=False))
    accumulated, acc_stats = safegrad(g_task, g_align, rho=0.7)

    assert acc_stats.conflict == full_stats.conflict
    assert abs(acc_stats.dot - full_stats.dot) < 1e-6
    assert torch.allclose(_flat(accumulated), _flat(full), atol=1e-6)


def test_accumulate_starts_and_sums():
    first = accumulate(None, [torch.tensor([1.0]), None])
    assert torch.equal(first[0], torch.tensor([1.0])) and first[1] is None
    total = accumulate(first, [torch.tensor([2.0]), torch.tensor([5.0])])
    assert torch.equal(total[0], torch.tensor([3.0])) and torch.equal(total[1], torch.tensor([5.0]))
    assert float(squared_norm(total)) == pytest.approx(34.0)
