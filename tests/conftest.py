import os

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    """Slow end-to-end tests run only with SASA_SLOW=1 (or -m slow); each has a small twin that always runs."""
    if os.environ.get("SASA_SLOW") == "1" or "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="slow: set SASA_SLOW=1 to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
