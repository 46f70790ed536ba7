"""Shared by the model tests (fixtures returning functions): a seeded model whose attention reaches the
gradients, and one train step."""
from __future__ import annotations

import pytest
import torch

from sasa.models import create_model


def _seeded_model(name: str, **overrides) -> torch.nn.Module:
    """``create_model(name, num_classes=5)`` from seed 0, every BN weight drawn from U(0.5, 1.5): the
    zero-init residual BN would otherwise hide the attention from the gradients."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=5, **overrides)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(module.weight, 0.5, 1.5)
    return model


def _train_step(model, x):
    """(output, parameter gradients) of one forward/backward of ``out.square().sum()``."""
    model.zero_grad()
    out = model(x)
    out.square().sum().backward()
    return out.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.fixture
def seeded_model():
    return _seeded_model


@pytest.fixture
def train_step():
    return _train_step
