"""torch.compile on a model gives the eager outputs and gradients.

multkan does not compile anything itself, because on CPU the compiled model was
no faster than eager (benchmarks/README.md, "torch.compile"), but a user may
call ``torch.compile(model)``. The ``aot_eager`` backend traces the
model with dynamo and AOTAutograd, graph breaks included, without generating
code; the inductor test generates C++ and needs a compiler.
"""

from __future__ import annotations

import shutil

import pytest
import torch

from multkan import MultKAN

# Dynamo's tracing raises deprecation and user warnings inside torch (it
# reads ``.grad`` of its own non-leaf tensors), which the project's
# "error" filter would turn into failures. Outside pytest none is shown.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning")


def _outputs_and_grads(module, model, x):
    model.zero_grad()
    x = x.clone().requires_grad_(True)
    out = module(x)
    out.square().mean().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return out.detach(), x.grad.clone(), grads


@pytest.mark.parametrize(
    ("width", "rows"),
    [
        pytest.param([3, [1, 2], [0, 1], 1], 7, id="mixed-dense-basis"),
        pytest.param([3, [1, 2], [0, 1], 1], 4000, id="mixed-local-basis", marks=pytest.mark.slow),
        pytest.param([2, 5, 1], 4000, id="sum-local-basis", marks=pytest.mark.slow),
        pytest.param([2, [0, 1], 1], 7, id="mult-dense-basis", marks=pytest.mark.slow),
    ],
)
def test_aot_eager_matches_eager(width, rows):
    torch._dynamo.reset()
    model = MultKAN(width, grid=5, k=3, seed=0, dtype=torch.float64)
    x = torch.rand(rows, width[0], generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2 - 1
    eager = _outputs_and_grads(model, model, x)
    compiled = _outputs_and_grads(torch.compile(model, backend="aot_eager"), model, x)
    torch.testing.assert_close(compiled[0], eager[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(compiled[1], eager[1], rtol=1e-10, atol=1e-12)
    assert "layers.0.coef" in eager[2]
    assert compiled[2].keys() == eager[2].keys()
    for name, want in eager[2].items():
        torch.testing.assert_close(compiled[2][name], want, rtol=1e-10, atol=1e-12)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None, reason="inductor needs a C++ compiler")
def test_inductor_matches_eager():
    torch._dynamo.reset()
    model = MultKAN([2, [1, 1], 1], grid=5, k=3, seed=0, dtype=torch.float64)
    x = torch.rand(500, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 2 - 1
    eager = _outputs_and_grads(model, model, x)
    compiled = _outputs_and_grads(torch.compile(model), model, x)
    torch.testing.assert_close(compiled[0], eager[0], rtol=1e-10, atol=1e-12)
    assert compiled[2].keys() == eager[2].keys()
    for name, want in eager[2].items():
        torch.testing.assert_close(compiled[2][name], want, rtol=1e-8, atol=1e-10)
