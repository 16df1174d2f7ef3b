"""Plain words for a differential-privacy epsilon, shown beside every epsilon fedleak prints or writes.

An (epsilon, delta)-DP release bounds every test that tries to tell two neighbouring inputs apart:
``TPR <= exp(epsilon) * FPR + delta`` (the hypothesis-testing reading of DP, Kairouz et al. 2015). The bands
below follow how fast that bound loses its force as epsilon grows:

==========================  ============  =========================================================================
band                        epsilon       why
==========================  ============  =========================================================================
``strong``                  <= 1          ``exp(1) = 2.7``: an attacker's odds about the protected record change at
                                          most 2.7-fold; the range of formal guarantees generally called strong
                                          (tier 1 of Ponomareva et al. 2023, "How to DP-fy ML").
``moderate``                (1, 10]       the range most deployed DP training reports (for example DP-SGD at
                                          epsilon 8); ``exp(10) = 22026``: the bound still limits attacks that must
                                          keep their false-positive rate below about 1 in 22 000 (tier 2).
``weak``                    (10, 20]      the bound only limits tests with a false-positive rate below 1 in
                                          ``exp(10)`` to 1 in ``exp(20)`` (4.5e-5 to 2e-9): little formal meaning.
``no meaningful protection``  > 20        ``exp(20) = 4.9e8``: the bound says nothing about any test whose false
                                          positives stay above 1 in 500 million, i.e. about every real attack.
==========================  ============  =========================================================================

:data:`NO_PROTECTION_ABOVE` is the documented threshold (20). The words describe the guarantee for the
neighbouring relation it was computed under (:data:`RELATIONS`): for ``ldp`` the protected record is one
client's whole update, for ``dpsgd`` one training example; an epsilon of one relation says nothing about the
other, so fedleak never puts the two on one line.
"""
from __future__ import annotations

import math
from typing import Any, Optional

#: ``(upper bound of epsilon, words)`` from the strongest band to the weakest
BANDS: tuple[tuple[float, str], ...] = ((1.0, "strong"), (10.0, "moderate"), (20.0, "weak"),
                                        (math.inf, "no meaningful protection"))
#: above this epsilon the guarantee is "no meaningful protection" (see the module docstring for the reason)
NO_PROTECTION_ABOVE = 20.0
#: the neighbouring relation behind the epsilon of each DP obfuscation (``privacy["mechanism"]``)
RELATIONS = {"ldp": "update-level: one client's whole update",
             "dpsgd": "example-level: one training example",
             "composed": "several DP steps, epsilons added"}


def protection(epsilon: Any) -> Optional[str]:
    """The plain-words band of ``epsilon`` (``"strong"``, ``"moderate"``, ``"weak"`` or ``"no meaningful
    protection"``); None when ``epsilon`` is not a number. ``inf`` is "no meaningful protection"; a NaN is
    None (nothing can be said)."""
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or math.isnan(epsilon):
        return None
    for upper, words in BANDS:
        if epsilon <= upper:
            return words
    return BANDS[-1][1]


def describe(epsilon: Any, mechanism: Optional[str] = None, fmt: str = "{:.4g}") -> str:
    """``"5612 (no meaningful protection)"`` or, with the mechanism, ``"8 (moderate; example-level: one
    training example)"``; an empty string when ``epsilon`` is not a number."""
    words = protection(epsilon)
    if words is None:
        return ""
    rel = RELATIONS.get(str(mechanism)) if mechanism else None
    return f"{fmt.format(epsilon)} ({words}" + (f"; {rel}" if rel else "") + ")"


def relation(mechanism: Optional[str]) -> str:
    """The neighbouring relation of a DP mechanism's epsilon, in words (the name itself when unknown)."""
    return RELATIONS.get(str(mechanism), str(mechanism)) if mechanism else "unknown relation"
