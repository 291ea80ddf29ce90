"""The earlier name of :mod:`tl_langneurons.steer.pairs` (the ``steer`` command's pairs of samples); importing it
warns. ``analyses/compare.py`` compares neuron sets across runs, which is another thing."""

import warnings

from .pairs import *  # noqa: F401,F403
from .pairs import SteerPair, SteerPairsConfig, check_steer, steer_label, steer_pairs, steering_of, with_sweep_pick  # noqa: F401

warnings.warn("tl_langneurons.steer.compare is deprecated; use tl_langneurons.steer.pairs", DeprecationWarning,
              stacklevel=2)
