"""Named gradient-matching attacks: presets of the engine. Any engine option can be overridden.

=====================  ==============================================================================
``dlg``                Deep Leakage from Gradients (Zhu et al., NeurIPS 2019): full-resolution pixels,
                       unconstrained, squared L2, L-BFGS as in its reference code (lr 1, 20 inner
                       iterations per outer iteration, no line search; 50 outer iterations), dummy
                       labels optimised jointly.
``idlg``               iDLG (Zhao et al., 2020): DLG with the label read off the last layer's gradient.
``inverting-gradients``Inverting Gradients (Geiping et al., NeurIPS 2020): cosine similarity, TV prior
                       (weight 0.05 at 128x128, proportional to the image side), signed Adam (lr 0.1),
                       step decay at 3/8, 5/8, 7/8, box constraint, randn init, 1000 iterations.
``rog``                ROG (Yue et al., 2023): a 4x-downsampled latent, bicubically upsampled, uniform
                       init, squared L2, Adam lr 0.05 with cosine decay to 0.1 x lr, 100 iterations
                       (``sign_iterations`` 300 when the update is sign-compressed).
``rog-refine``         Three stages, coarse to fine (:mod:`fedleak.attacks.engine.stages`): ``rog``'s 4x
                       low-resolution latent (60 iterations), a 2x latent started from it (40), both squared
                       L2, then full-resolution pixels (90) matched by ``l2-relative`` (squared L2 over the
                       received update's energy, so the TV weight 0.08 means the same for any update scale:
                       FedSGD, a FedAvg pseudo-gradient, a noisy update); obfuscation-aware. For a sparsified
                       update (top-k, random-k, pruning) the pixel stage matches by cosine similarity (TV 0.05,
                       lr decaying to 0.3 x) instead, with TV 0.035 when it kept at least 5 % of its entries
                       (``sparse_mild``, ``sparse_kept``: top-k 90 %); for a sign-compressed one by l1 sign
                       agreement, the large linear layers weighted x 4 (``big_weight``, in the 4x stage as
                       well), with TV 5 (x sqrt(batch / 4) below batch 4: 2.5 for one image), after 100
                       iterations of the 4x stage and none of the 2x stage (440 pixel iterations), returning the
                       final iterate (``result: last``); for a QSGD-quantised one with TV 0.1, and with at most 4
                       levels by ``qsgd-likelihood`` (the exact likelihood of the received levels). Not a
                       paper's preset; tuned on the 8 builtin photos (and crops of them) at 64x64 and 128x128
                       (docs/results.md, "rog-refine, coarse to fine", "budget split", "relative L2", "sparse
                       pixel stage", "QSGD likelihood in the pixel stage", "rog-refine under signSGD",
                       "top-k 90 %: TV 0.035", "signSGD: big_weight 4, TV 2.5 for one image", "big_weight 4 in
                       the x4 stage too" and "TV 0.08 in the pixel stage").
=====================  ==============================================================================

A stage option of ``rog-refine`` is set as ``attack.stages.2.iterations=300`` (stages numbered from 0; see
:mod:`fedleak.attacks.engine.stages`); options such as ``labels``, ``aware``, ``seed`` or ``precision`` hold for
all stages and are set on the attack itself.

``rog`` and ``inverting-gradients`` use ``precision: auto``: for a batch of 4 or more images on a CPU with native
bfloat16 (AVX512-BF16 / AMX) the simulated update is computed under bfloat16 autocast, 1.5-2.5x faster per
iteration with reconstruction quality within the float-noise spread of float32 runs (docs/results.md, sections 3 and 3b).
``precision: float32`` restores full precision; dlg/idlg (L-BFGS) always run in full precision.

Each preset registers a typed options model (:data:`PRESET_OPTIONS`):
:class:`~fedleak.attacks.engine.EngineConfig` with the preset's defaults, so ``ATTACKS.options("rog", {...})`` gives validated engine options of that preset.

All presets match obfuscation-aware by default (``aware: auto``): top-k / random-k / pruned updates are
matched only on the coordinates that were sent, sign-compressed ones by their l1 sign agreement and
deterministically quantised ones after the same rounding (straight-through). ``aware: none`` gives the plain
matching of the original papers.
"""
from __future__ import annotations

import copy
from typing import Any, Optional

from pydantic import Field, create_model

from fedleak.attacks.base import ATTACKS, Reconstruction
from fedleak.attacks.engine import EngineConfig, run_engine
from fedleak.attacks.engine.stages import StagedConfig, StageOptions, is_sign_compressed, run_stages, staged_options
from fedleak.options import Capabilities

PRESETS: dict[str, dict[str, Any]] = {
    "dlg": dict(iterations=50, lr=1.0, optimizer="lbfgs", lbfgs_inner=20, line_search=None, schedule="none",
                param="pixels", mapping="none", init="uniform", loss="l2", labels="optimize"),
    "idlg": dict(iterations=50, lr=1.0, optimizer="lbfgs", lbfgs_inner=20, line_search=None, schedule="none",
                 param="pixels", mapping="none", init="uniform", loss="l2", labels="auto"),
    "inverting-gradients": dict(iterations=1000, lr=0.1, optimizer="adam", signed=True, schedule="multistep",
                                param="pixels", mapping="box", init="randn", loss="cosine", tv=0.05, tv_size=128,
                                labels="auto", precision="auto"),
    "rog": dict(iterations=100, lr=0.05, optimizer="adam", schedule="cosine", final_lr_factor=0.1,
                param="lowres", scale=4, mapping="box", init="uniform", loss="l2", labels="auto",
                precision="auto"),
}

#: iterations for sign-compressed updates, per preset: the default of the preset's ``sign_iterations`` option.
#: ``iterations`` is the budget for every other update; for a sign-compressed one ``sign_iterations`` holds
#: (``null``: the same as ``iterations``), so a config's ``iterations`` never silently replaces the sign budget
SIGN_ITERATIONS = {"rog": 300}

_DOCS = {
    "dlg": "DLG (Zhu et al. 2019): pixels, L2, L-BFGS, joint dummy labels",
    "idlg": "iDLG (Zhao et al. 2020): DLG with labels from the last-layer gradient",
    "inverting-gradients": "Inverting Gradients (Geiping et al. 2020): cosine + TV, signed Adam",
    "rog": "ROG (Yue et al. 2023): 4x low-res latent, bicubic upsampling, L2, Adam + cosine",
}


def preset_options(preset: str) -> type[StageOptions]:
    """:class:`EngineConfig` with the defaults of ``preset`` (same fields, ranges and checks), plus
    ``sign_iterations`` (the preset's budget for sign-compressed updates, :data:`SIGN_ITERATIONS`)."""
    fields = {}
    for key, value in PRESETS[preset].items():
        info = copy.deepcopy(StageOptions.model_fields[key])
        info.default = value
        fields[key] = (info.annotation, info)
    # one stage: a sign budget of 0 (a multi-stage attack's "skip this stage") would leave nothing to run
    fields["sign_iterations"] = (Optional[int], Field(SIGN_ITERATIONS.get(preset), ge=1, le=10_000_000))
    title = "".join(w.capitalize() for w in preset.split("-"))
    return create_model(f"{title}Options", __base__=StageOptions, __doc__=f"Engine options of {_DOCS[preset]}.",
                        __module__=__name__, **fields)


#: preset name -> its typed options model
PRESET_OPTIONS: dict[str, type[EngineConfig]] = {name: preset_options(name) for name in PRESETS}


def sign_budget(preset: str, options: EngineConfig, update=None) -> EngineConfig:
    """``options`` with ``iterations`` replaced by ``sign_iterations`` when ``update`` is sign-compressed and
    the options have a sign budget (the preset's, or the user's); a copy, ``options`` is not changed."""
    sign_its = options.sign_iterations if isinstance(options, StageOptions) else None
    if sign_its and is_sign_compressed(update):
        return options.model_copy(update={"iterations": sign_its})
    return options


def engine_config(preset: str, update=None, **options) -> EngineConfig:
    """The engine options of ``preset`` with ``options`` overridden (validated), for ``update`` if given."""
    return sign_budget(preset, ATTACKS.options(preset, options), update)


def _make(preset: str):
    def attack_fn(view, update, options: EngineConfig, *, callback=None) -> Reconstruction:
        run = sign_budget(preset, options, update)
        rec = run_engine(view, update, run, callback=callback)
        rec.info["attack"] = preset
        if run.iterations != options.iterations:
            rec.info["notes"] = [f"sign-compressed update: {preset} ran its sign budget of {run.iterations} "
                                 f"iterations (attack.sign_iterations), not iterations={options.iterations}"]
        return rec

    attack_fn.__name__ = preset.replace("-", "_")
    attack_fn.__doc__ = _DOCS[preset]
    return attack_fn


for _name in PRESETS:
    ATTACKS.register(_name, doc=_DOCS[_name], options=PRESET_OPTIONS[_name],
                     caps=Capabilities(seeds=True, checkpoints=True))(_make(_name))


#: multi-stage presets: name -> (stages, options shared by the stages); each stage's ``sign_iterations`` is its
#: budget for sign-compressed updates, used when the user did not set that stage's ``iterations``
#: what the refinement stages of rog-refine share: each starts from the previous stage's images
_REFINE = dict(iterations=40, lr=0.05, optimizer="adam", schedule="cosine", final_lr_factor=0.1,
               mapping="box", init="previous", loss="l2")

STAGED_PRESETS: dict[str, tuple[list[dict[str, Any]], dict[str, Any]]] = {
    "rog-refine": (
        [{k: v for k, v in PRESETS["rog"].items() if k not in ("labels", "precision")}
         | {"iterations": 60, "sign_iterations": 100, "signsgd": dict(big_weight=4.0)},
         _REFINE | dict(param="lowres", scale=2, sign_iterations=0),
         _REFINE | dict(param="pixels", iterations=90, sign_iterations=440, loss="l2-relative", tv=0.08, tv_size=128,
                        sparse=dict(loss="cosine", tv=0.05, final_lr_factor=0.3), sparse_mild=dict(tv=0.035),
                        signsgd=dict(loss="l2", big_weight=4.0, tv=5.0, tv_batch=4, tv_batch_cap=True, result="last"),
                        qsgd_any=dict(tv=0.1), qsgd=dict(loss="qsgd-likelihood"))],
        dict(labels="auto", precision="auto")),
}

_STAGED_DOCS = {
    "rog-refine": "coarse to fine: ROG's 4x low-res stage, a 2x low-res stage, then full-resolution pixels "
                  "(relative L2 + TV)",
}


def _make_staged(preset: str):
    def attack_fn(view, update, options: StagedConfig, *, callback=None) -> Reconstruction:
        configs = options.stage_configs(update)
        rec = run_stages(view, update, configs, callback=callback)
        rec.info["attack"] = preset
        its, plain = [c.iterations for c in configs], [c.iterations for c in options.stage_configs()]
        if its != plain:
            rec.info["notes"] = [f"sign-compressed update: {preset} ran its stages' sign budgets {its} "
                                 f"(attack.stages.N.sign_iterations; 0 skips a stage), not iterations {plain}"]
        return rec

    attack_fn.__name__ = preset.replace("-", "_")
    attack_fn.__doc__ = _STAGED_DOCS[preset]
    return attack_fn


#: multi-stage preset name -> its typed options model (:class:`~fedleak.attacks.engine.stages.StagedConfig`)
STAGED_OPTIONS: dict[str, type[StagedConfig]] = {
    name: staged_options("".join(w.capitalize() for w in name.split("-")) + "Options", stages,
                         f"Options of {_STAGED_DOCS[name]}.", **shared)
    for name, (stages, shared) in STAGED_PRESETS.items()}

for _name in STAGED_PRESETS:
    ATTACKS.register(_name, doc=_STAGED_DOCS[_name], options=STAGED_OPTIONS[_name],
                     caps=Capabilities(seeds=True, checkpoints=True))(_make_staged(_name))
