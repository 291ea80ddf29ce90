"""Steering the language a model writes: the interventions, each a class in a module of its own and registered
by name (:mod:`tl_langneurons.registry`), their setting (:class:`~.setting.SteeringConfig`), and generation.

- ``clamp`` (:mod:`.clamp`): overwrite the language's top/bottom-k neurons with their median (times a scale):
  the paper's method (Kojima et al. 2024) and the default;
- ``add`` (:mod:`.add`): add ``alpha * (mu_on - mu_off)`` to those neurons (Gurgurov et al. 2025), optionally
  deactivating a source language's;
- ``diffmean`` (:mod:`.diffmean`): add ``alpha * ||h_L|| * u`` to the residual stream at one layer (CLaS-Bench
  2026);
- ``sparse`` (:mod:`.sparse`): overwrite the K residual dimensions where the target's mean differs most (Zhong
  et al. 2026).

Every intervention's hooks are an ordinary list of TransformerLens ``fwd_hooks``; positions and the token
schedule are documented in :mod:`.positions`.
"""

from ..registry import register
from .add import Add
from .clamp import Clamp
from .diffmean import Diffmean
from .sparse import Sparse
from .setting import SteeringConfig  # noqa: F401  (what registry.steering builds)

# the registry: a new intervention is its module and a line here (or ``register(MyIntervention)`` in your code)
for _cls in (Clamp, Add, Diffmean, Sparse):
    register(_cls)
