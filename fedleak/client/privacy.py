"""Thin helpers over Opacus's privacy accountants (imported lazily: opacus takes seconds to import).

Both helpers describe ``steps`` compositions of the Poisson-subsampled Gaussian mechanism with noise
multiplier ``z`` (noise std = z * clipping norm) and sampling rate ``q``, under Opacus's add/remove-one
neighbouring relation. ``accountant`` is ``"rdp"`` (Renyi DP, Mironov 2017 / Mironov et al. 2019) or
``"prv"`` (privacy random variables, Gopi et al. 2021); both return an upper bound on epsilon.
"""
from __future__ import annotations

import math
import warnings

from fedleak.errors import ConfigError

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


#: :func:`epsilon` under a name that calibration's ``epsilon`` argument does not shadow
_epsilon_of = epsilon


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
        except ValueError:  # "The privacy budget is too low.": beyond Opacus's largest noise multiplier
            from opacus.accountants.utils import MAX_SIGMA

            floor = _epsilon_of(MAX_SIGMA, q, steps, delta, accountant)
            raise ConfigError(f"epsilon={epsilon} is unreachable at delta={delta} (sample rate {q}, {steps} step(s)): "
                              f"the smallest reachable epsilon is about {floor:.3g} (noise multiplier {MAX_SIGMA:g})"
                              ) from None


# ---------------------------------------------------------------------------------------------------------
# Many rounds (issue 14): the epsilon of R federated rounds of one of the mechanisms above


def _rounds_arguments(noise_multiplier, rounds, participation, sample_rate, steps_per_round) -> tuple[float, int]:
    """Check the arguments of :func:`rounds_epsilon` / :func:`rounds_rdp`; return ``(q, steps)`` to account."""
    from fedleak.errors import ConfigError

    def number(name, v, lo, hi=None, lo_open=False):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                or (v <= lo if lo_open else v < lo) or (hi is not None and v > hi):
            span = f"({lo}, {hi}]" if hi is not None else (f"> {lo}" if lo_open else f">= {lo}")
            raise ConfigError(f"{name} must be a finite number {span}, got {v!r}")

    number("noise_multiplier", noise_multiplier, 0.0)
    number("participation", participation, 0.0, 1.0, lo_open=True)
    number("sample_rate", sample_rate, 0.0, 1.0, lo_open=True)
    for name, v, lo in (("rounds", rounds, 0), ("steps_per_round", steps_per_round, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ConfigError(f"{name} must be an integer >= {lo}, got {v!r}")
    if participation < 1 and steps_per_round > 1:
        raise ConfigError("participation < 1 with steps_per_round > 1 is not a composition of independent "
                          "subsampled steps; pass participation=1 (a valid upper bound) or steps_per_round=1")
    return float(participation) * float(sample_rate), rounds * steps_per_round


def rounds_epsilon(noise_multiplier: float, rounds: int, delta: float, *, participation: float = 1.0,
                   sample_rate: float = 1.0, steps_per_round: int = 1, accountant: str = "rdp") -> float:
    """Epsilon at ``delta`` of ``rounds`` federated rounds of a Gaussian mechanism, by the Opacus accountant.

    Each round the client takes part with probability ``participation`` (Poisson, independent across
    rounds) and, when it does, runs ``steps_per_round`` releases of the Gaussian mechanism with noise
    multiplier ``z`` at sampling rate ``sample_rate``: the ``ldp`` step is one release per round at sample
    rate 1 (the whole clipped update); ``dpsgd`` is one release per local step at ``q = B / N``.

    * ``participation = 1``: ``rounds * steps_per_round`` compositions at rate ``sample_rate`` (exact
      composition; ``epsilon(z, q, R * s, delta)``).
    * ``participation < 1`` (needs ``steps_per_round = 1``): an example enters a round's release with
      probability ``participation * sample_rate``, independently across rounds, so the rounds are ``R``
      Poisson-subsampled Gaussian steps at that product rate. This amplification only holds against an
      observer who does not learn whether the client took part (e.g. users of the final model); the server
      that picks the clients knows it, so against the server use ``participation = 1`` and count only the
      rounds the client took part in.

    Raises ConfigError (one line) on invalid arguments; ``z = 0`` gives ``inf``, ``rounds = 0`` gives 0.
    """
    q, steps = _rounds_arguments(noise_multiplier, rounds, participation, sample_rate, steps_per_round)
    try:
        return epsilon(float(noise_multiplier), q, steps, delta, accountant)
    except ValueError as e:  # delta / accountant: the shared checks word the message
        from fedleak.errors import ConfigError

        raise ConfigError(str(e)) from None


def rounds_rdp(noise_multiplier: float, rounds: int, *, participation: float = 1.0, sample_rate: float = 1.0,
               steps_per_round: int = 1) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Renyi-DP curve ``(orders, rdp)`` of the same ``rounds`` as :func:`rounds_epsilon` (same arguments and
    the same composition rule), at Opacus's default orders (``RDPAccountant.DEFAULT_ALPHAS``), from
    ``opacus.accountants.analysis.rdp.compute_rdp``. ``z = 0`` gives ``inf`` at every order."""
    q, steps = _rounds_arguments(noise_multiplier, rounds, participation, sample_rate, steps_per_round)
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis.rdp import compute_rdp

    orders = tuple(float(a) for a in RDPAccountant.DEFAULT_ALPHAS)
    if steps == 0:
        return orders, tuple(0.0 for _ in orders)
    if noise_multiplier == 0:
        return orders, tuple(math.inf for _ in orders)
    return orders, tuple(float(r) for r in compute_rdp(q=q, noise_multiplier=float(noise_multiplier),
                                                      steps=steps, orders=list(orders)))
