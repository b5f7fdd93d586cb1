import os

import torch

# Under pytest-xdist each worker gets one thread, so two workers use the two cores without
# oversubscribing them.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
