"""The fast path's recorder (ppmodels.recording): what it records, what it drops, what it freezes."""

import pytest
import torch

from ppmodels.recording import record


def _replay(gm, *inputs):
    with torch.no_grad():
        return gm(*inputs)


@pytest.mark.parametrize("bindings", [False, True])
def test_a_recorded_call_replays_in_place_updates_views_and_multi_output_operations(bindings):
    """In-place operations on a tensor that a view taken earlier reads, an operation with
    several outputs, a constant: the replay equals the call on new inputs."""
    c = torch.tensor([1.0, -2.0, 3.0])

    def fn(x, w):
        y = x.clone()
        v = y.view(-1)
        y.mul_(3.0)  # read only through the view taken before it: not dead code
        t = x.clone()
        t.add_(c)
        a, b = torch.split(t @ w, 2, dim=1)
        return v.sum(), a - b.flip(1), t

    x, w = torch.randn(4, 3), torch.randn(3, 4)
    gm = record(fn, (x, w), python_bindings=bindings)
    x2, w2 = torch.randn(4, 3), torch.randn(3, 4)
    for got, want in zip(_replay(gm, x2, w2), fn(x2, w2)):
        assert torch.allclose(got, want)
    assert not torch.allclose(_replay(gm, x2, w2)[0], fn(x, w)[0])  # it reads its inputs, not the recorded ones


@pytest.mark.parametrize("bindings", [False, True])
def test_the_backward_pass_is_recorded_and_random_draws_are_drawn_anew(bindings):
    """autograd.grad inside the call: its operations are in the graph (the gradient follows new
    parameters); a draw whose result nothing reads is kept, so the random stream advances as in
    the call, draw for draw."""
    def fn(x, w):
        with torch.enable_grad():
            torch.rand(5)  # unused, but it advances the stream: kept
            z = torch.randn(x.shape[0], 3)
            loss = torch.nn.functional.softplus((x + z) @ w).sum()
            (g,) = torch.autograd.grad(loss, [w])
        return loss.detach(), g

    x, w = torch.randn(6, 3), torch.randn(3, 2, requires_grad=True)
    gm = record(fn, (x, w), python_bindings=bindings)
    w2 = torch.randn(3, 2, requires_grad=True)
    torch.manual_seed(1)
    want = fn(x, w2)
    torch.manual_seed(1)
    got = _replay(gm, x, w2)
    assert all(torch.allclose(a, b) for a, b in zip(got, want))
    assert not torch.allclose(_replay(gm, x, w2)[1], got[1])  # a new draw each call


def test_dead_operations_are_dropped_and_constants_are_read_by_reference():
    shift = torch.tensor(0.0)

    def fn(x):
        (x * 7.0).exp()  # nothing reads it
        return x + shift

    gm = record(fn, (torch.zeros(2),))
    ops = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert torch.ops.aten.exp.default not in ops and torch.ops.aten.add.Tensor in ops
    shift.fill_(2.0)
    assert torch.equal(_replay(gm, torch.zeros(2)), torch.full((2,), 2.0))


def test_python_bindings_replace_the_overloads_that_have_one():
    def fn(x):
        return torch.nn.functional.softplus(x).view(-1).sum()

    aten = record(fn, (torch.randn(3, 2),))
    bound = record(fn, (torch.randn(3, 2),), python_bindings=True)
    targets = lambda gm: [n.target for n in gm.graph.nodes if n.op == "call_function"]  # noqa: E731
    assert all(isinstance(t, torch._ops.OpOverload) for t in targets(aten))
    assert not any(isinstance(t, torch._ops.OpOverload) for t in targets(bound))
    x = torch.randn(3, 2)
    assert torch.equal(_replay(aten, x), _replay(bound, x))


@pytest.mark.parametrize("bindings", [False, True])
def test_tensor_indexing_replays_with_and_without_bindings(bindings):
    """``w[idx]``, ``w[:, idx]`` and ``w[mask]`` (``aten::index``, which has no generated
    binding; ``torch.Tensor.index`` is a Python method with another signature) replay as the
    call does, on new inputs."""

    def fn(w, idx, mask):
        return w[idx].sum(0), w[:, idx[:2]] * 2, w[mask]

    w, idx, mask = torch.randn(5, 5), torch.tensor([0, 2, 2]), torch.tensor([True, False, True, True, False])
    gm = record(fn, (w, idx, mask), python_bindings=bindings)
    w2, idx2 = torch.randn(5, 5), torch.tensor([4, 1, 0])
    for got, want in zip(_replay(gm, w2, idx2, mask), fn(w2, idx2, mask)):
        assert torch.equal(got, want)


@pytest.mark.parametrize("read", [lambda x: x.sum().item(), lambda x: 1.0 if x.max() > 0 else -1.0,
                                  lambda x: float(torch.equal(x, x)), lambda x: x.tolist()[0],
                                  lambda x: torch.nn.functional.one_hot((x > 0).long()).sum()],
                         ids=["item", "if", "equal", "tolist", "one_hot"])
def test_a_python_value_read_from_a_tensor_refuses_the_recording(read):
    """A number read from a tensor's data would be frozen in the graph, and a check on one
    input cannot see the branch another input takes: the recording refuses. Shapes, and the
    range checks inside an operation (``one_hot`` with its width given), are no such reads."""
    from ppmodels.recording import ReadsValues

    with pytest.raises(ReadsValues, match="reads 1 Python value"):
        record(lambda x: x * read(x), (torch.randn(3),))
    c = torch.tensor([0, 2, 1])
    gm = record(lambda x, c: x * x.shape[0] * x.dim() + torch.nn.functional.one_hot(c, 4)[:, 1:].float(),
                (torch.randn(3), c))
    assert torch.equal(_replay(gm, torch.ones(3), torch.tensor([1, 1, 3]))[:, 0], torch.tensor([4.0, 4.0, 3.0]))
