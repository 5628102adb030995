"""Shared test settings: one thread so timings and results do not depend on the machine."""

import matplotlib
import torch

matplotlib.use("Agg")
torch.set_num_threads(1)
