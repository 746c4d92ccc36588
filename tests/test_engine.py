"""The sampling loop, the h-space hook and the guidance methods on tiny real diffusers models."""


import numpy as np
import pytest
import torch

from audit.methods.base import Method, allocate
from audit.methods.distribution_guidance import DistributionGuidance
from audit.methods.guidance import assign_classes, batch_distribution_loss
from audit.methods.prompt import PromptDebiasing
from audit.methods.sample_guidance import SampleGuidance
from audit.models.hspace import h_shape
from audit.probes.probe import Probe, joint_confusion, joint_probs
from audit.probes.train import fit_heads, fit_mean_heads


def random_probe(adapter, attribute="skin_tone", classes=("light", "dark"), steps=4, seed=0):
    """A probe with one random head shared by all steps: enough to test that guidance moves
    its own prediction (a shared head makes the per-step losses comparable)."""
    c, hh, ww = h_shape(adapter.unet)
    torch.manual_seed(seed)
    probe = Probe(attribute, list(classes), adapter.timesteps(steps), c * hh * ww, tau=1.0)
    with torch.no_grad():
        probe.weight.copy_(torch.randn(1, len(classes), c * hh * ww) * 0.3)
    return probe.requires_grad_(False)


def test_images_do_not_depend_on_batch_composition(tiny_adapter):
    whole = tiny_adapter.generate(list(range(6)), steps=3).images
    parts = torch.cat([tiny_adapter.generate([0], steps=3).images,  # a lone sample takes other kernels
                       tiny_adapter.generate([1, 2], steps=3).images,
                       tiny_adapter.generate([3, 4, 5], steps=3).images])
    assert torch.equal(whole, parts)
    assert not torch.equal(whole[0], whole[1])


def test_stochastic_ddim_is_seeded_per_image_and_differs_from_eta_0(tiny_adapter):
    whole = tiny_adapter.generate([0, 1, 2], steps=3, eta=1.0).images
    part = tiny_adapter.generate([1], steps=3, eta=1.0).images
    assert torch.equal(whole[1:2], part)
    deterministic = tiny_adapter.generate([0, 1, 2], steps=3).images
    assert torch.equal(deterministic, tiny_adapter.generate([0, 1, 2], steps=3, eta=0.0).images)
    assert (whole - deterministic).abs().max() > 1e-3


def test_eta_on_a_scheduler_without_it_names_the_fix(tiny_adapter):
    from diffusers import EulerDiscreteScheduler

    from audit.models.adapter import ModelAdapter

    euler = EulerDiscreteScheduler.from_config(tiny_adapter.scheduler.config)
    adapter = ModelAdapter(unet=tiny_adapter.unet, scheduler=euler, model_id="tiny-euler")
    with pytest.raises(ValueError, match="EulerDiscreteScheduler has no eta; use DDIMScheduler"):
        adapter.generate([0], steps=2, eta=1.0)


def test_text_model_images_do_not_depend_on_batch_composition(tiny_text_adapter):
    prompts = ["a photo of a person", "a photo of a person with dark skin", "a photo of a face"]
    whole = tiny_text_adapter.generate([7, 8, 9], prompts=prompts, steps=2, guidance_scale=4.0).images
    part = tiny_text_adapter.generate([8], prompts=prompts[1:2], steps=2, guidance_scale=4.0).images
    assert torch.equal(whole[1:2], part)


def test_hook_records_h_and_identity_edit_changes_nothing(tiny_adapter):
    class Identity(Method):
        edits_h = True

        def on_h(self, h, batch):
            return h.clone()

    plain = tiny_adapter.generate([0, 1], steps=3, record_h=True)
    c, hh, ww = h_shape(tiny_adapter.unet)
    assert len(plain.h) == 3 and plain.h[0].shape == (2, c * hh * ww)
    assert torch.equal(plain.images, tiny_adapter.generate([0, 1], steps=3, method=Identity()).images)

    class Zero(Method):
        edits_h = True

        def on_h(self, h, batch):
            return torch.zeros_like(h)

    assert not torch.equal(plain.images, tiny_adapter.generate([0, 1], steps=3, method=Zero()).images)


def step_context(adapter, probe, seeds, step_index=1, steps=4):
    """A BatchContext positioned at one step of a real sampling loop (x_t from real noise)."""
    from audit.methods.base import BatchContext

    scheduler = type(adapter.scheduler).from_config(adapter.scheduler.config)
    scheduler.set_timesteps(steps)
    batch = BatchContext(adapter=adapter, scheduler=scheduler, seeds=seeds, prompts=None, context=None,
                         guidance_scale=1.0, steps=steps, step_index=step_index,
                         t=int(scheduler.timesteps[step_index]))
    return batch, adapter.initial_noise(seeds)


def probe_loss(adapter, probe, batch, x, target):
    from audit.methods.guidance import encode_h

    with torch.no_grad():
        return batch_distribution_loss([probe], encode_h(batch, x), batch.t, target, "chi2")[0]


@pytest.mark.parametrize("path", ["h", "x"])
def test_one_guidance_step_lowers_the_batch_loss(tiny_adapter, path):
    """Random tiny UNets carry no semantics from step to step, so efficacy over a whole
    trajectory is measured on the trained zoo model (benchmarks); here: each step's edit
    lowers the loss it is computed on, on real x_t and real h."""
    probe = random_probe(tiny_adapter)
    seeds = list(range(16))
    batch, x = step_context(tiny_adapter, probe, seeds)
    method = DistributionGuidance([probe], [0.5, 0.5], scale=0.5, path=path)
    from audit.methods.guidance import encode_h

    with torch.no_grad():
        h = encode_h(batch, x)
    before = batch_distribution_loss([probe], h, batch.t, method.target, "chi2")[0]
    if path == "h":
        after = batch_distribution_loss([probe], method.on_h(h, batch), batch.t, method.target, "chi2")[0]
    else:
        after = probe_loss(tiny_adapter, probe, batch, method.on_x(x, batch), method.target)
    assert after < before * 0.9, (before, after)


@pytest.mark.parametrize("path", ["h", "x"])
def test_guided_sampling_runs_end_to_end(tiny_adapter, path):
    probe = random_probe(tiny_adapter)
    seeds = list(range(8))
    plain = tiny_adapter.generate(seeds, steps=4).images
    guided = tiny_adapter.generate(seeds, steps=4, method=DistributionGuidance([probe], [0.9, 0.1], path=path))
    assert len(guided.stats["loss"]) == 4 and len(guided.stats["p_hat_probe"]) == 2
    assert torch.isfinite(guided.images).all() and not torch.equal(plain, guided.images)
    late = DistributionGuidance([probe], [0.9, 0.1], path=path, start=0.5)
    assert len(tiny_adapter.generate(seeds, steps=4, method=late).stats["loss"]) == 2
    early = DistributionGuidance([probe], [0.9, 0.1], path=path, stop=0.5)
    assert len(tiny_adapter.generate(seeds, steps=4, method=early).stats["loss"]) == 2
    default = DistributionGuidance([probe], [0.9, 0.1], path=path)  # stop 0.8: progress 0.9 is not guided
    assert len(tiny_adapter.generate(seeds, steps=10, method=default).stats["loss"]) == 8


def test_h_edit_lowers_the_batch_loss_at_that_step(tiny_adapter):
    probe = random_probe(tiny_adapter)
    h = torch.randn(32, *h_shape(tiny_adapter.unet))
    method = DistributionGuidance([probe], [0.5, 0.5], scale=0.2)

    class Batch:
        t, progress, state = probe.timesteps[0], 0.0, {}

    before, _ = batch_distribution_loss([probe], h, Batch.t, method.target, "chi2")
    after, _ = batch_distribution_loss([probe], method.on_h(h, Batch), Batch.t, method.target, "chi2")
    assert after < before


def test_surplus_push_moves_only_samples_of_classes_the_batch_has_too_much_of(tiny_adapter):
    probe = random_probe(tiny_adapter)
    h = torch.randn(64, *h_shape(tiny_adapter.unet)) * 3

    class Batch:
        t, progress, state = probe.timesteps[0], 0.0, {}

    p_light = probe.probs(h, Batch.t)[:, 0]
    light_is_surplus = bool(p_light.mean() > 0.3)
    target = [0.1, 0.9] if light_is_surplus else [0.9, 0.1]
    surplus_share = p_light if light_is_surplus else 1 - p_light
    moved = {}
    for push in ("all", "surplus"):
        method = DistributionGuidance([probe], target, scale=0.5, push=push, correct_confusion=False)
        before, _ = batch_distribution_loss([probe], h, Batch.t, method.target, "chi2")
        edited = method.on_h(h, Batch)
        after, _ = batch_distribution_loss([probe], edited, Batch.t, method.target, "chi2")
        assert after < before
        moved[push] = (edited - h).flatten(1).norm(dim=1)
    settled = surplus_share < 0.05  # samples already in the class the batch lacks
    in_surplus = surplus_share > 0.95
    assert settled.sum() >= 3 and in_surplus.sum() >= 3
    ratio = {push: float(m[settled].mean() / m[in_surplus].mean()) for push, m in moved.items()}
    assert ratio["surplus"] < 0.1 < ratio["all"]


def test_assignment_moves_the_fewest_samples_and_within_a_class_the_lowest_priority():
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.3, 0.7], [0.95, 0.05]])
    # four light-leaning samples must give two up: the two of lowest priority, not the least sure
    labels = assign_classes(probs, np.array([2, 3]), priority=np.array([0.1, 0.9, 0.8, 0.5, 0.2]))
    assert labels.tolist() == [1, 0, 0, 1, 1]
    assert assign_classes(probs, np.array([5, 0]), np.zeros(5)).tolist() == [0] * 5
    rng = np.random.default_rng(0)
    for _ in range(20):  # K classes: counts filled, and only the surplus leaves its class
        p = torch.from_numpy(rng.dirichlet(np.ones(4) * 0.5, size=32))
        counts = np.bincount(rng.integers(0, 4, 32), minlength=4)
        labels = assign_classes(p, counts, rng.random(32)).numpy()
        assert np.bincount(labels, minlength=4).tolist() == counts.tolist()
        leaning = np.bincount(p.argmax(1).numpy(), minlength=4)
        assert (labels != p.argmax(1).numpy()).sum() == np.clip(leaning - counts, 0, None).sum()
        movers = labels != p.argmax(1).numpy()  # a mover goes to the likeliest class with room
        for i in np.flatnonzero(movers):
            room = [c for c in range(4) if counts[c] > leaning[c]]
            assert labels[i] in room


def test_assign_push_moves_a_random_subset_of_the_surplus_and_commits_it(tiny_adapter):
    probe = random_probe(tiny_adapter)
    h = torch.randn(64, *h_shape(tiny_adapter.unet)) * 3

    class Batch:
        t, progress, state, seeds = probe.timesteps[0], 0.0, {}, list(range(64))

    before = probe.probs(h, Batch.t)
    target = [0.2, 0.8] if before[:, 0].mean() > 0.5 else [0.8, 0.2]
    method = DistributionGuidance([probe], target, scale=0.5, push="assign")
    method.start_cell(Batch.seeds)
    edited = h
    for _ in range(12):
        edited = method.on_h(edited, Batch)
    assigned = np.asarray(Batch.state["assigned"])
    assert np.bincount(assigned, minlength=2).tolist() == [round(64 * target[0]), round(64 * target[1])]
    after = probe.probs(edited, Batch.t)
    assert (after.argmax(1).numpy() == assigned).mean() > 0.95  # the batch now has the target's counts
    assert (after.max(1).values > 0.9).float().mean() > (before.max(1).values > 0.9).float().mean()
    moved = before.argmax(1).numpy() != assigned
    stayed_in_surplus = (~moved) & (before.argmax(1).numpy() == int(np.argmin(target)))
    priority = np.asarray(Batch.state["priority"])
    assert moved.sum() >= 5 and priority[moved].max() < priority[stayed_in_surplus].min()
    # batch-independent: the same seed has the same priority in any batch
    other = {}
    DistributionGuidance([probe], target, scale=0.5, push="assign").on_h(
        h[10:20], type("B", (), {"t": Batch.t, "progress": 0.0, "state": other, "seeds": list(range(10, 20))}))
    assert other["priority"] == Batch.state["priority"][10:20]


def test_assign_once_keeps_the_first_split_while_assign_redecides_it(tiny_adapter):
    probe = random_probe(tiny_adapter)
    h = torch.randn(64, *h_shape(tiny_adapter.unet)) * 3
    p_class0 = probe.probs(h, probe.timesteps[0])[:, 0]
    target = [0.2, 0.8] if p_class0.mean() > 0.5 else [0.8, 0.2]
    by_lean = torch.argsort(p_class0)  # from the most class-1 sample to the most class-0 one
    first_split, splits = {}, {}
    for push in ("assign", "assign_once"):
        method = DistributionGuidance([probe], target, scale=0.5, push=push)
        method.start_cell(list(range(64)))
        batch = type("B", (), {"t": probe.timesteps[0], "progress": 0.0, "state": {}, "seeds": list(range(64))})
        method.on_h(h, batch)
        first_split[push] = list(batch.state["assigned"])
        # the batch now leans another way: the opposite of what the first split gave each sample
        flipped = torch.where(torch.tensor(first_split[push]).view(-1, *[1] * (h.dim() - 1)) == 0,
                              h[by_lean[0]], h[by_lean[-1]])
        method.on_h(flipped, batch)
        splits[push] = list(batch.state["assigned"])
    assert first_split["assign"] == first_split["assign_once"]  # the same first split
    assert splits["assign_once"] == first_split["assign_once"]
    assert splits["assign"] != first_split["assign"]
    with pytest.raises(ValueError, match="push must be one of"):
        DistributionGuidance([probe], target, push="assign-once")


def test_joint_target_and_multi_attribute_guidance(tiny_adapter):
    probes = [random_probe(tiny_adapter, "skin_tone", seed=1),
              random_probe(tiny_adapter, "hair_color", ("black", "brown", "blond", "gray"), seed=2)]
    h = torch.randn(16, *h_shape(tiny_adapter.unet))
    p = joint_probs(probes, h[:5], probes[0].timesteps[0])
    assert p.shape == (5, 8) and torch.allclose(p.sum(1), torch.ones(5))
    with pytest.raises(ValueError, match="8 non-negative proportions"):
        DistributionGuidance(probes, [0.5, 0.5])
    method = DistributionGuidance(probes, np.full(8, 1 / 8), scale=0.5)

    class Batch:
        t, progress, state = probes[0].timesteps[0], 0.0, {}

    before, _ = batch_distribution_loss(probes, h, Batch.t, method.target, "chi2")
    after, _ = batch_distribution_loss(probes, method.on_h(h, Batch), Batch.t, method.target, "chi2")
    assert after < before * 0.9


def test_guard_keeps_huge_scales_finite(tiny_adapter):
    probe = random_probe(tiny_adapter)
    method = DistributionGuidance([probe], [0.9, 0.1], scale=1e6)
    out = tiny_adapter.generate(list(range(4)), steps=4, method=method)
    assert torch.isfinite(out.images).all()
    assert out.stats["clipped_steps"] > 0
    assert out.images.std() > 0.01  # not blank


def test_guard_skips_non_finite_gradients(tiny_adapter):
    probe = random_probe(tiny_adapter)
    with torch.no_grad():
        probe.weight[0, 0, 0] = float("nan")
    out = tiny_adapter.generate([0, 1], steps=4, method=DistributionGuidance([probe], [0.5, 0.5], scale=1.0))
    assert out.stats["skipped_nonfinite"] >= 1 and torch.isfinite(out.images).all()


def test_allocation_matches_target_and_ignores_batching():
    seeds = list(range(100))
    labels = allocate(np.array([0.2, 0.8]), seeds)
    assert np.bincount(labels).tolist() == [20, 80]
    assert np.array_equal(labels, allocate(np.array([0.2, 0.8]), seeds))
    method = SampleGuidance([], [0.3, 0.7])
    method.start_cell(seeds)
    assert np.array_equal(np.concatenate([method.allocated(seeds[:37]), method.allocated(seeds[37:])]),
                          method.allocated(seeds))
    assert np.bincount(method.allocated(seeds)).tolist() == [30, 70]


def test_sample_guidance_step_pushes_each_sample_to_its_class(tiny_adapter):
    from audit.methods.guidance import per_sample_loss

    probe = random_probe(tiny_adapter)
    method = SampleGuidance([probe], [0.5, 0.5], scale=0.5)
    seeds = list(range(8))
    method.start_cell(seeds)
    batch, _ = step_context(tiny_adapter, probe, seeds)
    method.start_batch(batch)
    h = torch.randn(8, *h_shape(tiny_adapter.unet))
    allocated = batch.state["allocated"]
    assert np.bincount(allocated.numpy()).tolist() == [4, 4]
    before = per_sample_loss([probe], h, batch.t, allocated)
    after = per_sample_loss([probe], method.on_h(h, batch), batch.t, allocated)
    assert after < before


def test_prompt_debiasing(tiny_adapter, tiny_text_adapter):
    method = PromptDebiasing(["with light skin", "with dark skin"], [0.5, 0.5])
    assert method.not_applicable(tiny_adapter) is not None
    assert method.not_applicable(tiny_text_adapter) is None
    prompts = method.prompts(["a photo of a person"] * 10, list(range(10)))
    assert sum(p.endswith("with dark skin") for p in prompts) == 5
    ethical = PromptDebiasing([], [0.5, 0.5], variant="ethical", attribute_names="skin tone")
    assert ethical.prompts(["a photo of a person"], [0]) == [
        "a photo of a person, if all individuals can be of any skin tone"]


def test_probe_heads_fit_separable_h_and_round_trip(tmp_path):
    torch.manual_seed(0)
    n, d = 200, 32
    labels = torch.randint(0, 3, (n,))
    centers = torch.randn(3, d) * 2
    H = torch.stack([centers[labels] + torch.randn(n, d) for _ in range(2)])
    weight, bias, mean, std, accuracy = fit_heads(H, labels, 3, epochs=200)
    assert accuracy.min() > 0.9
    probe = Probe("hair_color", ["a", "b", "c"], [999, 500], d, tau=8.0, meta={"labeler": "x"})
    with torch.no_grad():
        probe.weight.copy_(weight)
        probe.bias.copy_(bias)
        probe.mean.copy_(mean)
        probe.std.copy_(std)
    probe.save(tmp_path)
    loaded = Probe.load(tmp_path)
    h = torch.randn(4, d)
    assert torch.allclose(loaded.logits(h, 990), probe.logits(h, 999))
    assert loaded.index(600) == 1 and loaded.meta["labeler"] == "x"


def test_class_mean_heads_push_h_along_the_class_mean_difference():
    """The default probe head: accurate on separable h, and its gradient w.r.t. raw h is the
    class-mean difference (the direction the decoder reads), unlike a logistic head's."""
    torch.manual_seed(0)
    n, d = 400, 16
    labels = torch.randint(0, 2, (n,))
    scales = torch.linspace(0.2, 3.0, d)  # anisotropic h, as in a real UNet
    H = torch.stack([torch.randn(n, d) * scales + labels[:, None] * 1.5 * scales for _ in range(2)])
    weight, bias, mean, std, accuracy = fit_mean_heads(H, labels, 2)
    assert accuracy.min() > 0.9
    probe = Probe("skin_tone", ["light", "dark"], [999, 500], d)
    with torch.no_grad():
        probe.weight.copy_(weight)
        probe.bias.copy_(bias)
        probe.mean.copy_(mean)
        probe.std.copy_(std)
    h = H[0, :5].clone().requires_grad_(True)
    (g,) = torch.autograd.grad((probe.logits(h, 999)[:, 1] - probe.logits(h, 999)[:, 0]).sum(), h)
    class_mean_difference = H[0, labels == 1].mean(0) - H[0, labels == 0].mean(0)
    cosine = torch.nn.functional.cosine_similarity(g[0], class_mean_difference, dim=0)
    assert cosine > 0.999
    logistic = fit_heads(H, labels, 2, epochs=200)
    raw = (logistic[0][0, 1] - logistic[0][0, 0]) / logistic[3][0]
    assert torch.nn.functional.cosine_similarity(raw, class_mean_difference, dim=0) < 0.99


def test_softened_gradient_keeps_the_calibrated_loss_and_spreads_the_push():
    from audit.methods.guidance import batch_distribution_loss

    probe = Probe("skin_tone", ["light", "dark"], [999], 2)
    with torch.no_grad():
        probe.weight.copy_(torch.tensor([[[-4.0, 0.0], [4.0, 0.0]]]))
    h = torch.tensor([[-3.0, 0.0], [-2.0, 0.0], [0.1, 0.0]], requires_grad=True)  # two confident, one not
    target = torch.tensor([0.5, 0.5])
    norms = {}
    for tau in (1.0, 16.0):
        loss, p_hat = batch_distribution_loss([probe], h, 999, target, "chi2", grad_tau=tau)
        (g,) = torch.autograd.grad(loss, h)
        norms[tau] = g.norm(dim=1)
        assert torch.allclose(p_hat.detach(), probe.probs(h, 999).mean(0).detach())
    # Calibrated probabilities leave the confident samples with (almost) no push.
    assert norms[1.0][0] < 1e-3 * norms[1.0][2]
    assert norms[16.0][0] > 0.3 * norms[16.0][2]


def test_per_sample_loss_still_pushes_a_confidently_wrong_sample():
    from audit.methods.guidance import per_sample_loss

    probe = Probe("skin_tone", ["light", "dark"], [999], 2)
    with torch.no_grad():
        probe.weight.copy_(torch.tensor([[[-4.0, 0.0], [4.0, 0.0]]]))
    h = torch.tensor([[-10.0, 0.0], [0.0, 0.0]], requires_grad=True)  # p(dark) ~ 1e-35, and 0.5
    assert float(probe.probs(h, 999)[0, 1].detach()) < 1e-30
    loss = per_sample_loss([probe], h, 999, torch.tensor([1, 1]))
    (g,) = torch.autograd.grad(loss, h)
    assert torch.isfinite(loss) and g[0, 0] < -1.0  # log space: the wrong sample gets the full push
    assert abs(float(loss.detach()) - (80 + np.log(2)) / 2) < 1e-3


def test_corrected_aim_moves_only_by_the_systematic_part_of_a_miss():
    from audit.run.calibration import corrected_aim

    target = np.array([0.5, 0.5])
    assert corrected_aim(target, np.array([0.47, 0.53]), target, noise=0.05) is None  # within the noise
    # A miss of FD 0.212 with noise 0.05 is shrunk by 1 - 0.05^2 / 0.212^2 = 0.944.
    aim = corrected_aim(target, np.array([0.35, 0.65]), target, noise=0.05)
    assert aim == pytest.approx([0.5 + 0.15 * 0.9444, 0.5 - 0.15 * 0.9444], abs=1e-3)
    # An aim never leaves the simplex: a class the target excludes stays at zero.
    skewed = np.array([0.9, 0.1, 0.0])
    aim = corrected_aim(skewed, np.array([0.7, 0.1, 0.2]), skewed, noise=0.01)
    assert aim.sum() == pytest.approx(1.0) and aim.min() >= 0 and aim[2] == 0 and aim[0] > 0.9


def test_a_calibrated_aim_replaces_the_target_where_guidance_steers():
    probe, H, labels = noisy_class_mean_probe()
    probe.measure_confusion(H, labels)
    target, aim = [0.6, 0.3, 0.1], [0.5, 0.3, 0.2]
    method = DistributionGuidance([probe], target, aim=aim)
    assert torch.allclose(method.probe_target(999), probe.step_confusion(999).T @ torch.tensor(aim))
    assert method.config()["target"] == pytest.approx(target) and method.config()["aim"] == aim
    sample = SampleGuidance([probe], target, aim=aim)
    seeds = list(range(100))
    sample.start_cell(seeds)
    assert np.bincount(sample.allocated(seeds)).tolist() == [50, 30, 20]
    for bad in ([0.5, 0.5], [0.7, 0.4, -0.1]):
        with pytest.raises(ValueError, match="aim must be 3 non-negative proportions"):
            DistributionGuidance([probe], target, aim=bad)


def test_interpolated_scale_finds_the_crossing_between_grid_points():
    from audit.run.calibration import interpolated_scale

    # The dark share rises linearly in log2(scale) from 0.2 (scale 1) to 0.6 (scale 4): it
    # crosses the 0.5 target at log2(scale) = 1.5, between the tried scales 2 and 4.
    tried = [{"scale": s, "p_hat": [1 - d, d]} for s, d in [(1.0, 0.2), (2.0, 0.4), (4.0, 0.6)]]
    assert interpolated_scale(tried, [0.5, 0.5]) == pytest.approx(2 ** 1.5, rel=1e-3)
    # A grid point that hits the target is chosen; unsorted input and a single try work.
    assert interpolated_scale(list(reversed(tried)), [0.6, 0.4]) == pytest.approx(2.0)
    assert interpolated_scale(tried[:1], [0.5, 0.5]) == 1.0
    # Only the intervals next to the best tried scale count. Measured on the zoo DDPM (hair
    # colour, 256 seeds): the line from 8's overshoot to 16's collapse passes near uniform, yet
    # 8.8 measured FD 0.073 on 1,000 samples; the best tried scale was 4.
    hair = [{"scale": s, "p_hat": p} for s, p in [
        (2.8, [0.277, 0.285, 0.242, 0.195]), (4.0, [0.258, 0.270, 0.254, 0.219]),
        (5.6, [0.285, 0.207, 0.262, 0.246]), (8.0, [0.293, 0.215, 0.273, 0.219]),
        (16.0, [0.039, 0.297, 0.211, 0.453])]]
    assert 2.8 < interpolated_scale(hair, [0.25] * 4) < 5.6
    assert interpolated_scale(hair[3:], [0.25] * 4) > 8.0  # what using every interval chose


def noisy_class_mean_probe(k=3, n=300, d=8, seed=0):
    """(probe, H, labels): a class-mean probe fitted on overlapping classes, so it confuses them."""
    torch.manual_seed(seed)
    labels = torch.randint(0, k, (n,))
    centers = torch.randn(k, d)
    H = torch.stack([centers[labels] + torch.randn(n, d) for _ in range(2)])
    weight, bias, mean, std, _ = fit_mean_heads(H, labels, k)
    probe = Probe("hair_color", [f"c{i}" for i in range(k)], [999, 500], d)
    with torch.no_grad():
        probe.weight.copy_(weight)
        probe.bias.copy_(bias)
        probe.mean.copy_(mean)
        probe.std.copy_(std)
    return probe.requires_grad_(False), H, labels


def test_probe_confusion_is_the_mean_prediction_per_label_and_round_trips(tmp_path):
    import json

    from safetensors.torch import load_file, save_file

    probe, H, labels = noisy_class_mean_probe()
    assert torch.equal(probe.step_confusion(999), torch.eye(3))  # unmeasured: no correction
    probe.measure_confusion(H, labels)
    for step, t in enumerate(probe.timesteps):
        confusion = probe.step_confusion(t)
        probs = probe.probs(H[step], t)
        for i in range(3):
            assert torch.allclose(confusion[i], probs[labels == i].mean(0), atol=1e-6)
        assert torch.allclose(confusion.sum(1), torch.ones(3))
        assert 0.3 < confusion.diag().min() < 0.99  # confused, yet right more often than not
    # The probe's mean prediction over a batch is M^T q for the batch's label distribution q.
    q = torch.bincount(labels, minlength=3).float() / len(labels)
    assert torch.allclose(probe.probs(H[0], 999).mean(0), probe.step_confusion(999).T @ q, atol=1e-5)

    probe.save(tmp_path / "new")
    assert torch.equal(Probe.load(tmp_path / "new").confusion, probe.confusion)
    # Probes saved before confusions were measured load with the identity, and say so (such old
    # probes' probe.json records no checksum of the weights either).
    probe.save(tmp_path / "old")
    tensors = load_file(tmp_path / "old" / "probe.safetensors")
    del tensors["confusion"]
    save_file(tensors, tmp_path / "old" / "probe.safetensors")
    meta = json.loads((tmp_path / "old" / "probe.json").read_text())
    del meta["weights_sha256"]
    (tmp_path / "old" / "probe.json").write_text(json.dumps(meta))
    old = Probe.load(tmp_path / "old")
    assert torch.equal(old.step_confusion(500), torch.eye(3)) and "identity" in old.meta["confusion"]

    # A class absent from the labels keeps an identity row rather than NaN.
    probe.measure_confusion(H, torch.where(labels == 2, 0, labels))
    assert torch.equal(probe.step_confusion(999)[2], torch.tensor([0.0, 0.0, 1.0]))


def test_joint_confusion_uses_the_layout_of_joint_probs():
    first, second = Probe("skin_tone", ["light", "dark"], [999], 2), Probe("smile", ["no", "yes", "maybe"], [999], 2)
    with torch.no_grad():
        first.confusion.copy_(torch.tensor([[[0.9, 0.1], [0.3, 0.7]]]))
        second.confusion.copy_(torch.tensor([[[0.8, 0.1, 0.1], [0.2, 0.6, 0.2], [0.0, 0.5, 0.5]]]))
        first.weight.copy_(torch.randn(1, 2, 2))
        second.weight.copy_(torch.randn(1, 3, 2))
    joint = joint_confusion([first, second], 999)
    assert joint.shape == (6, 6) and torch.allclose(joint.sum(1), torch.ones(6))
    h = torch.randn(1, 2)
    layout = joint_probs([first, second], h, 999)[0].reshape(2, 3)  # [light/dark, no/yes/maybe]
    assert torch.allclose(layout.sum(1), first.probs(h, 999)[0])
    # Row (dark, maybe) of the joint confusion is dark's row times maybe's row, in that layout.
    expected = first.confusion[0, 1][:, None] * second.confusion[0, 2][None, :]
    assert torch.allclose(joint[1 * 3 + 2].reshape(2, 3), expected)


def test_distribution_guidance_aims_the_probe_mean_at_the_confusion_corrected_target():
    """With a confused probe, a batch whose labels follow pi shows the probe mean M^T pi, so
    that is where guidance must steer the mean; without the correction it steers to pi."""
    probe, H, labels = noisy_class_mean_probe()
    probe.measure_confusion(H, labels)
    target = [0.6, 0.3, 0.1]
    h = H[0, :64].clone()

    class Batch:
        t, progress, state = 999, 0.0, {}

    means, aims = {}, {}
    for correct in (True, False):
        method = DistributionGuidance([probe], target, scale=0.5, correct_confusion=correct)
        guided = h.clone()
        for _ in range(60):
            guided = method.on_h(guided, Batch)
        means[correct], aims[correct] = probe.probs(guided, 999).mean(0), Batch.state["probe_target"]
    corrected = probe.step_confusion(999).T @ torch.tensor(target)
    assert (corrected - torch.tensor(target)).abs().max() > 0.05  # the two aims really differ
    assert torch.allclose(means[True], corrected, atol=0.01), (means[True], corrected)
    assert torch.allclose(means[False], torch.tensor(target), atol=0.01), means[False]
    assert aims == {True: pytest.approx(corrected.tolist(), abs=1e-4), False: pytest.approx(target)}
