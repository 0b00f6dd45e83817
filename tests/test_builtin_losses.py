"""The built-in losses: cross-entropy and focal, their options and their validation."""

from __future__ import annotations

import math
import pickle

import pytest
import torch
import torch.nn.functional as F

import lorakit.builtin.losses
from lorakit.errors import ConfigError
from lorakit.plugins import Plugins, new_manager


@pytest.fixture
def plugins() -> Plugins:
    pm = new_manager(load_entrypoints=False)
    pm.register_plugin(lorakit.builtin.losses, "losses", "lorakit", "0")
    return Plugins(pm)


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(8, 3, generator=gen), torch.tensor([0, 1, 2, 2, 1, 0, 0, 2])


def test_registers_both(plugins: Plugins) -> None:
    assert list(plugins.losses()) == ["cross_entropy", "focal"]
    loss = plugins.losses().get("focal").build(num_labels=3, class_weights=None)
    assert isinstance(loss, torch.nn.Module)


@pytest.mark.parametrize("weights", [None, [1.0, 2.0, 0.5]])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_matches_torch(
    plugins: Plugins, batch: tuple[torch.Tensor, torch.Tensor], weights: list[float] | None, smoothing: float
) -> None:
    logits, labels = batch
    loss = (
        plugins.losses()
        .get("cross_entropy")
        .build(num_labels=3, class_weights=weights, label_smoothing=smoothing)
    )
    expected = F.cross_entropy(
        logits,
        labels,
        weight=None if weights is None else torch.tensor(weights),
        label_smoothing=smoothing,
    )
    assert torch.allclose(loss(logits, labels), expected)


def test_weights_follow_the_logits_dtype_and_stay_out_of_state_dict(
    batch: tuple[torch.Tensor, torch.Tensor],
) -> None:
    logits, labels = batch
    loss = lorakit.builtin.losses.build_cross_entropy(3, class_weights=[1, 2, 3])
    out = loss(logits.double(), labels)
    assert out.dtype == torch.float64
    assert loss.state_dict() == {}


def test_focal_with_gamma_zero_is_cross_entropy(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    logits, labels = batch
    focal = lorakit.builtin.losses.build_focal(3, gamma=0.0)
    assert torch.allclose(focal(logits, labels), F.cross_entropy(logits, labels))
    # With weights it is the plain mean of alpha-weighted rows (not torch's weighted mean).
    weights = [1.0, 2.0, 0.5]
    focal = lorakit.builtin.losses.build_focal(3, class_weights=weights, gamma=0)
    per_row = F.cross_entropy(logits, labels, reduction="none") * torch.tensor(weights)[labels]
    assert torch.allclose(focal(logits, labels), per_row.mean())


def test_focal_by_hand() -> None:
    # Row 1: p = (1/4, 3/4), label 1 -> p_y = 3/4.  Row 2: p = (1/2, 1/2), label 0 -> p_y = 1/2.
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]])
    labels = torch.tensor([1, 0])
    focal = lorakit.builtin.losses.build_focal(2, gamma=2.0)
    row1 = -((1 / 4) ** 2) * math.log(3 / 4)
    row2 = -((1 / 2) ** 2) * math.log(1 / 2)
    assert focal(logits, labels).item() == pytest.approx((row1 + row2) / 2, rel=1e-6)
    weighted = lorakit.builtin.losses.build_focal(2, class_weights=[2.0, 1.0], gamma=2.0)
    assert weighted(logits, labels).item() == pytest.approx((1.0 * row1 + 2.0 * row2) / 2, rel=1e-6)


def test_focal_skips_ignored_rows_like_cross_entropy(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    logits, labels = batch
    labels = labels.clone()
    labels[:3] = -100
    focal = lorakit.builtin.losses.build_focal(3, gamma=0)
    assert torch.allclose(focal(logits, labels), F.cross_entropy(logits, labels))
    assert focal(logits, torch.full((8,), -100)).item() == 0.0


def test_losses_pickle(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    logits, labels = batch
    focal = lorakit.builtin.losses.build_focal(3, class_weights=[1, 2, 3], gamma=1.5)
    clone = pickle.loads(pickle.dumps(focal))
    assert type(clone) is lorakit.builtin.losses.FocalLoss
    assert torch.allclose(clone(logits, labels), focal(logits, labels))


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        (
            "cross_entropy",
            {"gamma": 2.0},
            "train.loss_options.gamma: unknown option for loss 'cross_entropy' "
            "(known: class_weights, label_smoothing)",
        ),
        ("focal", {"alpha": 1}, "train.loss_options.alpha: unknown option for loss 'focal'"),
        ("focal", {"label_smoothing": 0.1}, "train.loss_options.label_smoothing: not supported"),
        ("focal", {"gamma": -1.0}, "train.loss_options.gamma: must be a number >= 0"),
        ("focal", {"gamma": True}, "train.loss_options.gamma"),
        ("cross_entropy", {"label_smoothing": 1.5}, "train.loss_options.label_smoothing: must be"),
        ("cross_entropy", {"class_weights": [1.0, 2.0]}, "train.loss_options.class_weights: has 2 values"),
        ("focal", {"class_weights": [1.0, 2.0, 3.0, 4.0]}, "train.loss_options.class_weights: has 4 values"),
        ("focal", {"class_weights": [1.0, -2.0, 3.0]}, "train.loss_options.class_weights: every weight"),
        ("cross_entropy", {"class_weights": "1,2,3"}, "train.loss_options.class_weights: must be a list"),
    ],
)
def test_bad_options_are_config_errors(
    plugins: Plugins, name: str, options: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        plugins.losses().get(name).build(num_labels=3, **options)
    assert message in str(info.value)


def test_every_unknown_option_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        lorakit.builtin.losses.build_cross_entropy(3, foo=1, bar=2)
    assert [line.split(":")[0] for line in info.value.lines()] == [
        "train.loss_options.foo",
        "train.loss_options.bar",
    ]


def test_neutral_smoothing_is_accepted_by_focal() -> None:
    assert lorakit.builtin.losses.build_focal(3, label_smoothing=0.0).gamma == 2.0
