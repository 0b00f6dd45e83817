"""The built-in LR schedules: warmup, then linear / cosine / constant."""

from __future__ import annotations

import math

import pytest
import torch

import lorakit.builtin.lr_schedulers
from lorakit.plugins import Plugins, new_manager

BASE_LR = 0.1
WARMUP = 10
TOTAL = 110


@pytest.fixture
def plugins() -> Plugins:
    pm = new_manager(load_entrypoints=False)
    pm.register_plugin(lorakit.builtin.lr_schedulers, "lr_schedulers", "lorakit", "0")
    return Plugins(pm)


def lrs(
    plugins: Plugins, name: str, warmup: int = WARMUP, total: int = TOTAL, steps: int = TOTAL + 5
) -> list[float]:
    """The learning rate in force at each optimizer step 0..steps-1."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=BASE_LR)
    scheduler = plugins.lr_schedulers().get(name).build(optimizer, warmup, total)
    seen = []
    for _ in range(steps):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return seen


def test_registers_all(plugins: Plugins) -> None:
    assert list(plugins.lr_schedulers()) == ["constant", "cosine", "linear"]


# Steps: 0, mid-warmup, end of warmup, a quarter and half of the decay, the end, past the end.
@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("linear", [0.0, 0.5, 1.0, 0.75, 0.5, 0.0, 0.0]),
        ("cosine", [0.0, 0.5, 1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.0, 0.0]),
        ("constant", [0.0, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0]),
    ],
)
def test_schedule_shape(plugins: Plugins, name: str, expected: list[float]) -> None:
    seen = lrs(plugins, name)
    at = [seen[step] for step in (0, 5, 10, 35, 60, 110, 114)]
    assert at == pytest.approx([BASE_LR * m for m in expected], abs=1e-12)


def test_no_warmup_starts_at_full_rate(plugins: Plugins) -> None:
    for name in ("linear", "cosine", "constant"):
        assert lrs(plugins, name, warmup=0, total=10, steps=1) == [pytest.approx(BASE_LR)]


def test_state_dict_resumes_where_it_stopped(plugins: Plugins) -> None:
    spec = plugins.lr_schedulers().get("cosine")
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=BASE_LR)
    scheduler = spec.build(optimizer, WARMUP, TOTAL)
    for _ in range(40):
        optimizer.step()
        scheduler.step()
    state = scheduler.state_dict()

    fresh_optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=BASE_LR)
    resumed = spec.build(fresh_optimizer, WARMUP, TOTAL)
    resumed.load_state_dict(state)
    for _ in range(3):
        optimizer.step()
        scheduler.step()
        fresh_optimizer.step()
        resumed.step()
    assert resumed.get_last_lr() == pytest.approx(scheduler.get_last_lr())
    assert isinstance(resumed, torch.optim.lr_scheduler.LambdaLR)


def test_negative_steps_are_a_bug() -> None:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=BASE_LR)
    with pytest.raises(ValueError, match=">= 0"):
        lorakit.builtin.lr_schedulers.build_linear(optimizer, -1, 10)
