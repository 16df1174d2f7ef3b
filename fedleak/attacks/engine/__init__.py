"""The gradient-matching attack engine. Named attacks (``presets.py``) are settings of :func:`run_engine`.

Parts:

* parameterisation of the unknown images (:data:`~fedleak.attacks.engine.latent.PARAMETERISATIONS`):
  full-resolution ``pixels`` or a ``lowres`` latent upsampled bicubically by ``scale`` (ROG); ``box`` (projected
  to [0, 1] after each step) or ``sigmoid`` mapping;
* matching loss: ``l2``, ``cosine``, ``l2-relative`` or ``qsgd-likelihood`` (:data:`~fedleak.attacks.losses.LOSSES`),
  per-parameter ``layer_weights`` (and ``big_weight`` on the large linear layers), obfuscation-aware ``aware`` mode;
* priors (:data:`~fedleak.attacks.priors.PRIORS`): total variation ``tv`` (optionally scaled by image side /
  ``tv_size``: the mean pixel difference of a natural image shrinks with resolution, so one weight then suits
  32x32 and 128x128) and any registered prior by ``priors: {name: weight}``; with ``tv_batch`` every prior weight
  is x sqrt(batch size / tv_batch) (fewer bits per image in a larger batch: more weight on the prior), at most
  x 1 with ``tv_batch_cap``, at least x 1 with ``tv_batch_floor``; outputs
  are clamped to [0, 1];
* optimisers: ``adam`` (optionally ``signed`` steps, as Inverting Gradients), ``lbfgs`` (DLG);
  schedules (:data:`~fedleak.attacks.schedules.SCHEDULES`) ``cosine`` (to ``final_lr_factor`` x lr),
  ``multistep`` (x0.1 at 3/8, 5/8, 7/8), ``none``;
* ``restarts``; ``result`` picks the iterate a restart returns and by which score restarts are compared:
  ``best-loss`` (the lowest matching loss, the default), ``best-objective`` (the lowest matching loss plus
  weighted priors) or ``last`` (the final iterate, scored by its matching loss). Under a coarse obfuscation
  the matching loss can reach its minimum early, on a worse image than the final one (signSGD, docs/results.md);
* labels: ``known`` (shared with the server), ``idlg``, ``yin``, ``llg``, ``optimize`` (DLG's joint soft
  labels) or ``auto`` (known if shared, else idlg for one image, llg for a batch);
* FedAvg updates are attacked by unrolling the client's local steps (``simulate.ForwardModel.fedavg``).

Long runs checkpoint atomically every ``checkpoint_every`` iterations to ``checkpoint`` and resume from it.

Modules: ``options`` (:class:`EngineConfig`, the typed options of one stage), ``parts`` (named options resolved
through their registries, in one place), ``latent`` (parameterisations), ``loop`` (:func:`run_engine`,
:func:`prepare`, :func:`optimise`), ``checkpoint`` (snapshots, checkpoint files), ``precision``, ``stages``
(multi-stage attacks: :func:`run_stages`, :class:`StagedConfig`; a stage option is set as
``attack.stages.1.iterations=300``).
"""
from __future__ import annotations

from fedleak.attacks.engine.checkpoint import fingerprint, load_checkpoint, save_checkpoint
from fedleak.attacks.engine.latent import PARAMETERISATIONS, Latent, Parameterisation
from fedleak.attacks.engine.options import PRECISIONS, EngineConfig
from fedleak.attacks.engine.parts import Parts, resolve_parts
from fedleak.attacks.engine.precision import AUTO_BF16_MIN_BATCH, native_bfloat16, resolve_precision
from fedleak.attacks.engine.loop import (Problem, check_update, optimise, prepare, resolve_labels,
                                         run_engine)
from fedleak.attacks.engine.stages import SHARED, StagedConfig, StageOptions, merge_stages, run_stages
from fedleak.attacks.engine import loop  # noqa: F401  (the module, e.g. for tests that patch its Matcher)
from fedleak.attacks.matching import Matcher, matching_mode
from fedleak.attacks.priors import total_variation

__all__ = ["AUTO_BF16_MIN_BATCH", "EngineConfig", "Latent", "Matcher", "PARAMETERISATIONS", "PRECISIONS",
           "Parameterisation", "Parts", "Problem", "check_update", "matching_mode", "native_bfloat16", "optimise",
           "prepare", "resolve_labels", "run_stages", "SHARED", "StagedConfig", "StageOptions", "merge_stages",
           "resolve_parts", "resolve_precision", "run_engine", "total_variation"]
