"""Linear layers computed per sample: a row's result is the same in any batch."""

import torch

from audit.models.batch_invariant import make_batch_invariant


def test_rows_do_not_depend_on_the_batch_they_are_in():
    torch.manual_seed(0)
    layer = torch.nn.Linear(24, 40)
    reference = torch.nn.Linear(24, 40)
    reference.load_state_dict(layer.state_dict())
    assert make_batch_invariant(torch.nn.Sequential(layer)) == 1
    assert make_batch_invariant(torch.nn.Sequential(layer)) == 0  # idempotent
    for shape in ((7, 24), (7, 9, 24), (7, 3, 5, 24)):
        x = torch.randn(*shape)
        whole = layer(x)
        assert whole.shape == (*shape[:-1], 40)
        assert torch.allclose(whole, reference(x), atol=1e-5)
        for lo, hi in ((0, 1), (1, 3), (3, 7)):
            assert torch.equal(layer(x[lo:hi]), whole[lo:hi])


def test_gradients_flow_through_the_per_sample_product():
    layer = torch.nn.Linear(8, 3)
    make_batch_invariant(layer)
    x = torch.randn(4, 8, requires_grad=True)
    layer(x).square().sum().backward()
    assert x.grad is not None and layer.weight.grad is not None and torch.isfinite(x.grad).all()


def test_cpu_adapters_switch_every_linear_layer(tiny_adapter):
    count = sum(isinstance(m, torch.nn.Linear) for m in tiny_adapter.unet.modules())
    assert count > 0 and tiny_adapter.info["batch_invariant_linear_layers"] in (0, count)
    assert all("forward" in m.__dict__ for m in tiny_adapter.unet.modules() if isinstance(m, torch.nn.Linear))
