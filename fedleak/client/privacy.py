"""Thin helpers over Opacus's privacy accountants (imported lazily: opacus takes seconds to import).

Both helpers describe ``steps`` compositions of the Poisson-subsampled Gaussian mechanism with noise
multiplier ``z`` (noise std = z * clipping norm) and sampling rate ``q``, under Opacus's add/remove-one
neighbouring relation. ``accountant`` is ``"rdp"`` (Renyi DP, Mironov 2017 / Mironov et al. 2019) or
``"prv"`` (privacy random variables, Gopi et al. 2021); both return an upper bound on epsilon.
"""
from __future__ import annotations

import math
import warnings

ACCOUNTANTS = ("rdp", "prv")


def _check_common(sample_rate, steps, delta, accountant) -> tuple[float, int, float, str]:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, float)) or not 0 < sample_rate <= 1:
        raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")
    if not isinstance(accountant, str) or accountant.lower() not in ACCOUNTANTS:
        raise ValueError(f"accountant must be one of {', '.join(ACCOUNTANTS)}, got {accountant!r}")
    return float(sample_rate), steps, float(delta), accountant.lower()


def epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str = "rdp") -> float:
    """Epsilon after ``steps`` steps of DP-SGD with noise multiplier ``z`` and sampling rate ``q``, at ``delta``.

    Equals ``opacus.accountants.<RDP|PRV>Accountant`` stepped ``steps`` times with ``(z, q)`` and queried
    with ``get_epsilon(delta)`` (default options). ``z = 0`` gives ``inf``; ``steps = 0`` gives 0.
    """
    q, steps, delta, accountant = _check_common(sample_rate, steps, delta, accountant)
    if isinstance(noise_multiplier, bool) or not isinstance(noise_multiplier, (int, float)) \
            or not noise_multiplier >= 0 or not math.isfinite(noise_multiplier):
        raise ValueError(f"noise_multiplier must be a finite number >= 0, got {noise_multiplier!r}")
    if steps == 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    import numpy as np
    from opacus.accountants import create_accountant

    acc = create_accountant(mechanism=accountant)
    acc.history = [(float(noise_multiplier), q, steps)]  # what `steps` calls of acc.step(...) would record
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        # PRV takes log(1 - q) = log(0) at q = 1; the result is still correct
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(acc.get_epsilon(delta=delta))


def noise_multiplier_for(epsilon: float, delta: float, sample_rate: float, steps: int,
                         accountant: str = "rdp", tolerance: float = 0.01) -> float:
    """Smallest noise multiplier (Opacus's binary search, to ``tolerance`` in epsilon) whose epsilon is
    <= ``epsilon`` after ``steps`` steps at sampling rate ``q`` and ``delta`` (``opacus...get_noise_multiplier``)."""
    q, steps, delta, accountant = _check_common(sample_rate, steps, delta, accountant)
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not 0 < epsilon < math.inf:
        raise ValueError(f"epsilon must be a finite number > 0, got {epsilon!r}")
    if steps < 1:
        raise ValueError("steps must be >= 1 to calibrate a noise multiplier")
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not tolerance > 0:
        raise ValueError(f"tolerance must be > 0, got {tolerance!r}")
    import numpy as np
    from opacus.accountants.utils import get_noise_multiplier

    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        # the binary search probes very large multipliers, where RDP's best order is the largest one tried
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        try:
            return float(get_noise_multiplier(target_epsilon=float(epsilon), target_delta=delta, sample_rate=q,
                                              steps=steps, accountant=accountant, epsilon_tolerance=tolerance))
        except ValueError as e:  # "The privacy budget is too low."
            raise ValueError(f"cannot reach epsilon={epsilon} at delta={delta}, q={q}, steps={steps}: {e}") from None
