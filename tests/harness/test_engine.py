"""`harness/engine.py` on real CIFAR-10 images: schedules, optimisers, hooks, the release-order clip, evaluation."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from harness.cifar10 import CifarLoader, load_cifar10
from harness.config import TrainConfig
from harness.distributed import Runtime
from harness.engine import (
    Hook,
    TrainLoss,
    build_loss,
    build_optimizer,
    build_scheduler,
    clip_grad_norm_release_order,
    train_one_epoch,
    validate,
)
from harness.errors import ConfigError
from methods.binary import BinaryConv2d, XnorWeight, binary_sign

REPO = Path(__file__).resolve().parents[2]


def _lrs(sched, opt, steps):
    out = []
    for s in steps:
        sched.step(s)
        out.append((opt.param_groups[0]["lr"], opt.param_groups[0].get("momentum")))
    return out


@pytest.mark.filterwarnings("ignore:Detected call of")
def test_onecycle_matches_the_bnas_cifar_recipe():
    # docs/bnas.md §5.3: lr_max 0.05, 600 epochs x 196 iterations; 2.5e-3 at epoch 0, 2.676e-3 at epoch 1,
    # peak 0.05 at 45%, back to 2.5e-3 at 90%, 2.5e-5 at the end; momentum 0.95 -> 0.85 -> 0.95.
    cfg = TrainConfig(epochs=600, lr=0.05)
    p = nn.Parameter(torch.zeros(1))
    opt = build_optimizer(cfg, nn.ParameterList([p]))
    sched = build_scheduler(cfg, opt, 196)
    assert opt.param_groups[0]["lr"] == pytest.approx(2.5e-3)
    assert opt.param_groups[0]["momentum"] == pytest.approx(0.95)
    total = 600 * 196
    seen = {}
    for step in range(1, total):
        sched.step(step)
        if step in (196, int(0.45 * total) - 1, int(0.9 * total) - 2, total - 1):
            seen[step] = (opt.param_groups[0]["lr"], opt.param_groups[0]["momentum"])
    assert seen[196][0] == pytest.approx(2.676e-3, rel=1e-3)
    assert seen[int(0.45 * total) - 1] == pytest.approx((0.05, 0.85))
    assert seen[int(0.9 * total) - 2] == pytest.approx((2.5e-3, 0.95))
    assert seen[total - 1][0] == pytest.approx(2.5e-5)


def test_cosine_warm_restarts_match_the_bnas_imagenet_recipe():
    # docs/bnas.md §5.4: CosineAnnealingWarmRestarts(T_0=50, eta_min=0) over 250 epochs, stepped per iteration.
    cfg = TrainConfig(epochs=250, lr=0.05, sched="cosine_restarts", restart_epochs=50, min_lr=0.0)
    p = nn.Parameter(torch.zeros(1))
    opt = build_optimizer(cfg, nn.ParameterList([p]))
    sched = build_scheduler(cfg, opt, 10)
    got = [lr for lr, _ in _lrs(sched, opt, [0, 250, 499, 500, 750, 2000, 2250, 2499])]
    assert got[0] == pytest.approx(0.05) and got[3] == pytest.approx(0.05) and got[5] == pytest.approx(0.05)
    assert got[1] == pytest.approx(0.025) and got[4] == pytest.approx(0.025) and got[6] == pytest.approx(0.025)
    assert got[2] < 1e-4 and got[7] < 1e-4


def test_optimizer_is_plain_momentum_sgd_with_decay_on_everything():
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    opt = build_optimizer(TrainConfig(weight_decay=3e-6), m)
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["nesterov"] is False
    assert all(g["weight_decay"] == 3e-6 for g in opt.param_groups)
    assert sum(len(g["params"]) for g in opt.param_groups) == 4  # conv weight+bias, BN weight+bias


class SignWeights(Hook):
    """An XNOR-style weight hook: forward/backward with sign(W), then restore W and scale its gradient by 2."""

    def __init__(self) -> None:
        self.latent: dict[nn.Parameter, torch.Tensor] = {}
        self.calls: list[str] = []

    def _convs(self, model):
        return [m.weight for m in model.modules() if isinstance(m, nn.Conv2d)]

    def before_forward(self, model):
        self.calls.append("before_forward")
        for w in self._convs(model):
            self.latent[w] = w.detach().clone()
            w.data.copy_(torch.where(w >= 0, 1.0, -1.0))

    def after_backward(self, model):
        self.calls.append("after_backward")
        for w in self._convs(model):
            w.data.copy_(self.latent[w])
            w.grad.mul_(2.0)

    def after_step(self, model):
        self.calls.append("after_step")


def test_weight_hooks_binarise_restore_and_rescale(cifar_cache):
    ds = load_cifar10(cifar_cache)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)
    )
    loader = CifarLoader(ds.train_x[:64], ds.train_y[:64], 64, train=False)
    batch = next(iter(loader))
    w0 = model[0].weight.detach().clone()
    # reference: the gradient of the loss at the sign-binarised weights
    ref = nn.Sequential(*[m for m in model])
    with torch.no_grad():
        ref[0].weight.copy_(torch.where(w0 >= 0, 1.0, -1.0))
    g = torch.autograd.grad(nn.functional.cross_entropy(ref(batch[0]), batch[1]), ref[0].weight)[0]
    with torch.no_grad():
        ref[0].weight.copy_(w0)
    cfg = TrainConfig(lr=0.1, weight_decay=0.0, sched="constant", opt="momentum")
    opt = build_optimizer(cfg, model)
    hook = SignWeights()
    train_one_epoch(
        model,
        [batch],
        opt,
        build_scheduler(cfg, opt, 1),
        TrainLoss(nn.CrossEntropyLoss()),
        cfg,
        Runtime(torch.device("cpu")),
        epoch=0,
        global_step=0,
        hooks=[hook],
    )
    assert hook.calls == ["before_forward", "after_backward", "after_step"]
    torch.testing.assert_close(model[0].weight.detach(), w0 - 0.1 * 2.0 * g)  # latent weights, rescaled gradient


def test_linear_schedule_decays_to_min_lr():
    cfg = TrainConfig(epochs=10, lr=0.001, sched="linear", opt="adam", min_lr=0.0)
    p = nn.Parameter(torch.zeros(1))
    opt = build_optimizer(cfg, nn.ParameterList([p]))
    sched = build_scheduler(cfg, opt, 10)
    got = [lr for lr, _ in _lrs(sched, opt, [0, 50, 99])]
    assert got == pytest.approx([0.001, 0.0005, 0.00001], abs=1e-9)


def test_cpu_amp_autocasts_to_bf16_on_cpu_only_when_asked():
    from harness.config import TrainConfig
    from harness.engine import autocast

    x, lin = torch.randn(2, 4), torch.nn.Linear(4, 3)
    with autocast(TrainConfig(), torch.device("cpu")):
        assert lin(x).dtype == torch.float32  # default: CPU runs stay float32
    with autocast(TrainConfig(cpu_amp=True), torch.device("cpu")):
        assert lin(x).dtype == torch.bfloat16


# --- the gradient clip in the release's order (docs/bnas.md §1.2: clip dL/dW_b, then restore W and rescale) ---


class _XnorNet(nn.Module):
    """A real stem, BN, two XNOR "xnor_rescale" convs (the second with two full-precision filters, `binary_rows`)
    and a real classifier, in float64."""

    def __init__(self) -> None:
        super().__init__()

        def xconv(c_in: int, c_out: int) -> nn.Module:
            q = XnorWeight(center=True, clamp=True, grad="xnor_rescale")
            return BinaryConv2d(c_in, c_out, 3, 1, 1, input_quantizer="ste_sign", weight_quantizer=q)

        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv1, self.conv2 = xconv(8, 8), xconv(8, 6)
        self.conv2.weight_quantizer.binary_rows = torch.tensor([True, True, False, True, False, True])
        self.fc = nn.Linear(6, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.bn(self.stem(x))
        h = self.conv2(self.conv1(h, relu=True))
        return self.fc(h.mean(dim=(2, 3)))


def _xnor_setup():
    torch.manual_seed(0)
    net = _XnorNet().double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64, generator=g)
    y = torch.randint(0, 10, (4,), generator=g)
    return net, x, y


def _release_reference(net: nn.Module, x: torch.Tensor, y: torch.Tensor, max_norm: float | None):
    """The release's step by hand, on a copy of `net` after its forward (latent weights centred and clamped): W_b =
    alpha*sign(W) written into the weights (plain autograd, no rescale), backward, torch's clip on those raw
    gradients, then the rescale n(1 - 1/C_in)[alpha*g + sign(W)*mean(sign(W)*g)] on the binarised filters.
    Returns (raw total norm, {name: final gradient})."""
    ref = copy.deepcopy(net)
    latent = {}
    with torch.no_grad():
        for name in ("conv1", "conv2"):
            conv = getattr(ref, name)
            rows = conv.weight_quantizer.binary_rows
            w = conv.weight.detach().clone()
            latent[name] = (w, rows)
            wb = w.abs().mean(dim=(1, 2, 3), keepdim=True) * binary_sign(w)
            if rows is not None:
                wb = torch.where(rows.view(-1, 1, 1, 1), wb, w)
            conv.weight.copy_(wb)
            conv.weight_quantizer = None
    nn.functional.cross_entropy(ref(x), y).backward()
    params = dict(ref.named_parameters())
    total = nn.utils.get_total_norm([p.grad for p in params.values()])
    if max_norm is not None:
        total = nn.utils.clip_grad_norm_(list(params.values()), max_norm)
    final = {n: p.grad.clone() for n, p in params.items()}
    for name, (w, rows) in latent.items():
        g = final[f"{name}.weight"]
        s = binary_sign(w)
        alpha = w.abs().mean(dim=(1, 2, 3), keepdim=True)
        n, c_in = w[0].numel(), w.shape[1]
        rescaled = n * (1 - 1 / c_in) * (alpha * g + s * (s * g).mean(dim=(1, 2, 3), keepdim=True))
        final[f"{name}.weight"] = rescaled if rows is None else torch.where(rows.view(-1, 1, 1, 1), rescaled, g)
    return total, final


def test_clip_sees_the_raw_binary_weight_gradients_as_the_release():
    net, x, y = _xnor_setup()
    with torch.no_grad():  # large latent weights: the in-place clamp fires
        net.conv1.weight.mul_(20.0)
    nn.functional.cross_entropy(net(x), y).backward()
    assert float(net.conv1.weight.detach().abs().max()) == 1.0
    raw_norm, _ = _release_reference(net, x, y, None)
    max_norm = float(raw_norm) / 3  # the clip fires in the release order
    ref_norm, ref_final = _release_reference(net, x, y, max_norm)
    rescaled = {n: p.grad.clone() for n, p in net.named_parameters()}
    # (a) the norm the clip uses is the norm of the raw gradients (dL/dW_b for binary weights)
    seen = clip_grad_norm_release_order(net, net.parameters(), max_norm)
    torch.testing.assert_close(seen, ref_norm, rtol=1e-12, atol=0)
    # (b) clip-then-rescale: the release's final gradients, every parameter scaled by the same factor
    for n, p in net.named_parameters():
        torch.testing.assert_close(p.grad, ref_final[n], rtol=1e-10, atol=1e-14, msg=n)
    # (c) a plain clip of the rescaled gradients (the old order) sees a much larger norm and shrinks far more
    old = {n: torch.zeros_like(g, requires_grad=True) for n, g in rescaled.items()}
    for n, t in old.items():
        t.grad = rescaled[n].clone()
    old_norm = nn.utils.clip_grad_norm_(list(old.values()), max_norm)
    assert float(old_norm) > 2 * float(seen)  # (3.4x here; 17-23x on a small BNAS-D)
    for n in ("fc.weight", "stem.weight", "conv1.weight"):
        assert not torch.allclose(old[n].grad, ref_final[n], rtol=1e-3), n


def test_release_order_clip_is_torch_clip_without_xnor_rescaled_weights():
    torch.manual_seed(0)
    # an "exact"-gradient XNOR conv is an ordinary autograd gradient: clipped as it is
    a = nn.Sequential(
        nn.Conv2d(3, 4, 3), BinaryConv2d(4, 4, 3, weight_quantizer="xnor_weight"), nn.Flatten(), nn.Linear(64, 3)
    )
    x = torch.randn(2, 3, 8, 8)
    a(x).square().sum().backward()
    b = copy.deepcopy(a)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        q.grad = p.grad.clone()
    ref = nn.utils.clip_grad_norm_(b.parameters(), 0.5)
    got = clip_grad_norm_release_order(a, a.parameters(), 0.5)
    assert float(ref) > 0.5 and torch.equal(got, ref)
    assert all(torch.equal(p.grad, q.grad) for p, q in zip(a.parameters(), b.parameters(), strict=True))


@pytest.mark.parametrize("loss_scale", [None, 1024.0], ids=["fp32", "grad_scaler"])
def test_engine_step_with_clip_grad_is_the_release_step(loss_scale):
    """train_one_epoch with train.clip_grad on a model with XNOR convs: the SGD update is -lr times the release's
    clipped-then-rescaled gradient (a GradScaler unscales before the clip: the same update)."""
    net, x, y = _xnor_setup()
    ref_net = copy.deepcopy(net)
    nn.functional.cross_entropy(ref_net(x), y)  # the forward's in-place centring and clamping, as the engine's
    raw_norm, _ = _release_reference(ref_net, x, y, None)
    max_norm = float(raw_norm) / 4
    _, ref_final = _release_reference(ref_net, x, y, max_norm)
    # NCHW as the reference: binary conv outputs are multiples of alpha, often exactly 0, and another summation
    # order (channels_last) can move such a tie to +-1e-17 and flip its ReLU gradient
    cfg = TrainConfig(
        lr=0.5,
        momentum=0.0,
        weight_decay=0.0,
        sched="constant",
        opt="momentum",
        clip_grad=max_norm,
        amp=False,
        channels_last=False,
    )
    opt = build_optimizer(cfg, net)
    scaler = None
    if loss_scale is not None:
        scaler = torch.amp.GradScaler("cpu", init_scale=loss_scale)
    train_one_epoch(
        net,
        [(x, y)],
        opt,
        build_scheduler(cfg, opt, 1),
        TrainLoss(nn.CrossEntropyLoss()),
        cfg,
        Runtime(torch.device("cpu")),
        epoch=0,
        global_step=0,
        scaler=scaler,
    )
    start = dict(ref_net.named_parameters())
    for n, p in net.named_parameters():
        torch.testing.assert_close(p.detach(), start[n].detach() - 0.5 * ref_final[n], rtol=1e-10, atol=1e-12, msg=n)


def test_validate_centres_and_clamps_the_xnor_weights_once_per_pass():
    """The release's `infer` binarises once before its first batch: a pass over several batches centres and clamps
    the latent weights once (the old per-forward prep did it at every batch), and each new pass once more."""
    net, x, y = _xnor_setup()
    with torch.no_grad():
        net.conv1.weight.mul_(20.0)
    w0 = net.conv1.weight.detach().clone()

    def prep(w: torch.Tensor) -> torch.Tensor:
        return (w - w.mean(dim=1, keepdim=True)).clamp(-1.0, 1.0)

    assert not torch.equal(prep(prep(w0)), prep(w0))  # not idempotent where the clamp fired
    cfg = TrainConfig(channels_last=False, amp=False)
    rt = Runtime(torch.device("cpu"))
    validate(net, [(x, y)] * 3, cfg, rt)
    assert torch.equal(net.conv1.weight.detach(), prep(w0))
    validate(net, [(x, y)] * 2, cfg, rt)
    assert torch.equal(net.conv1.weight.detach(), prep(prep(w0)))


def test_official_lr_offset_trains_each_epoch_at_the_next_epochs_value_and_the_last_at_zero():
    """ReActNet's release: LambdaLR(1 - e/E) stepped at the start of every epoch, so epoch e (0-based) runs at
    lr (1 - (e + 1)/E), constant within the epoch."""
    cfg = TrainConfig(epochs=4, lr=0.01, sched="linear", opt="adam", official_lr_offset=True)
    p = nn.Parameter(torch.zeros(1))
    opt = build_optimizer(cfg, nn.ParameterList([p]))
    sched = build_scheduler(cfg, opt, 3)  # 3 updates per epoch
    seen = []
    for update in range(12):
        seen.append(opt.param_groups[0]["lr"])  # the lr this update trains at
        opt.step()
        sched.step(update + 1)
    expected = [0.01 * (1 - (e + 1) / 4) for e in range(4) for _ in range(3)]
    assert seen == pytest.approx(expected, abs=1e-12)
    assert seen[-3:] == [0.0, 0.0, 0.0]
    with pytest.raises(ConfigError, match="train.official_lr_offset"):
        build_scheduler(TrainConfig(epochs=4, sched="cosine", official_lr_offset=True), opt, 3)


def test_distillation_is_the_cross_entropy_against_the_frozen_teachers_softmax():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4))
    x, y = torch.randn(5, 6), torch.tensor([0, 1, 2, 3, 0])
    logits = torch.randn(5, 4, requires_grad=True)
    loss = build_loss(TrainConfig(teacher="unused-here"), teacher).train()
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    with torch.no_grad():
        target = teacher(x).softmax(1)
    kd = -(target * logits.log_softmax(1)).sum(1).mean()
    torch.testing.assert_close(loss(logits, y, x), kd)  # distillation only: no label term (ReActNet)
    mixed = TrainLoss(nn.CrossEntropyLoss(), teacher, distill_weight=0.25)
    torch.testing.assert_close(mixed(logits, y, x), 0.25 * kd + 0.75 * nn.functional.cross_entropy(logits, y))
    plain = build_loss(TrainConfig(label_smoothing=0.0))
    torch.testing.assert_close(plain(logits, y, x), nn.functional.cross_entropy(logits, y))
    loss(logits, y, x).backward()
    assert logits.grad is not None and all(p.grad is None for p in teacher.parameters())


def test_multistep_decays_at_the_milestone_epochs():
    cfg = TrainConfig(epochs=6, lr=0.1, sched="multistep", decay_milestones=[2, 4], decay_rate=0.1, opt="momentum")
    p = nn.Parameter(torch.zeros(1))
    opt = build_optimizer(cfg, nn.ParameterList([p]))
    sched = build_scheduler(cfg, opt, 5)
    seen = []
    for update in range(30):  # 5 updates per epoch
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step(update + 1)
    assert seen == pytest.approx([0.1] * 10 + [0.01] * 10 + [0.001] * 10)
    with pytest.raises(ConfigError, match="train.decay_milestones"):
        build_scheduler(TrainConfig(epochs=6, sched="multistep"), opt, 5)
