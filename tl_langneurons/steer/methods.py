"""The names this module held before the interventions became one class each (kept so earlier code and
notebooks run): the builders live in :mod:`.clamp`, :mod:`.add`, :mod:`.diffmean` and :mod:`.sparse`, the
setting in :mod:`.setting`, the residual helpers in :mod:`.residual` and positions in :mod:`.positions`."""

from __future__ import annotations

from ..registry import NAMES as METHODS  # noqa: F401
from ..registry import Hooks  # noqa: F401
from .add import EQUAL_NORMS, add, band_factors, equal_norm_factors, parse_bands  # noqa: F401
from .base import LATER_FIELDS  # noqa: F401
from .clamp import clamp  # noqa: F401
from .diffmean import diffmean  # noqa: F401
from .interventions import add_hooks  # noqa: F401
from .positions import (GEN_STEP, POSITIONS, PROMPT_PASS, only_after_tokens, only_first_tokens,  # noqa: F401
                        only_generated, prompt_pass)
from .residual import (DEFAULT_OUTLIER_FACTOR, default_layer, default_n_dims, outlier_dims,  # noqa: F401
                       residual_add_hook, residual_overwrite_hook)
from .setting import (SETTING_FIELDS, SteeringConfig, check_not_empty, full_count, neuron_count,  # noqa: F401
                      parse_setting, setting_from_json)
from .sparse import sparse  # noqa: F401

BUILDERS = {"clamp": clamp, "add": add, "diffmean": diffmean, "sparse": sparse}
