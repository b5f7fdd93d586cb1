import os

import pytest
import torch

from defence_helpers import linear_problem as linear_problem_data

# Under pytest-xdist each worker gets one thread, so two workers use the two cores without
# oversubscribing them.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)



@pytest.fixture
def linear_problem():
    """A float64 ``nn.Linear`` with a few inputs and labels (see ``defence_helpers.linear_problem``)."""
    return linear_problem_data()
