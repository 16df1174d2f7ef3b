"""Many rounds (issue 14): a client holding the same local data takes part in R federated rounds.

Every round the server sends the same model (a malicious server keeps its planted structure in place), the
client runs its protocol on the same data -- FedSGD on the same batch, or FedAvg epochs over it -- and its
obfuscation pipeline adds **fresh noise** (one generator, advanced round after round). Round 1 therefore
equals the single-round update bit for bit (same generator seed), and ``protocol.rounds = 1`` with
``participation = 1`` never enters this module.

Participation: in each of the R rounds the client takes part with probability ``participation`` (drawn from
a generator of its own, so the noise stream does not depend on it); the server receives updates only from
the rounds the client took part in, and knows which.

What the server records (:class:`RoundsUpdate`):

* ``tensors``: the plain mean of the received updates (what any attack that reads one update sees);
* ``rounds``: per received round, the tensors the server keeps for its attack (:func:`recorded_tensors`:
  the imprint rows when a ``malicious-imprint`` structure is planted, else none: only the mean is kept, so
  R rounds cost no more memory than one);
* ``stats['rounds']``: the count, the participated round indices and the privacy of all rounds.

Privacy of all rounds (:func:`rounds_privacy`): the Opacus accountant (each DP step's ``accountant``, RDP or
PRV) over the R rounds, with ``participation`` as a Poisson sampling rate (``epsilon``; valid against an
observer who does not learn in which rounds the client took part), and over the rounds actually taken part in
at rate 1 (``epsilon_against_server``: the server knows). Laplace ``ldp``: basic composition of pure epsilon
(``rounds * C / b``, participation not credited). Several DP steps: basic composition of their epsilons.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from fedleak.client.obfuscations import ObfContext, Pipeline
from fedleak.client.obfuscations.dp import DPSGD, LDP
from fedleak.client.protocols import fedavg, fedsgd
from fedleak.client.update import Update
from fedleak.errors import DataError


@dataclass
class RoundsUpdate(Update):
    """An :class:`Update` of R rounds: ``tensors`` is the mean of the received rounds, ``rounds`` the tensors
    the server recorded from each received round (in round order), ``participated`` their round indices."""

    rounds: list[dict[str, torch.Tensor]] = field(default_factory=list)
    participated: list[int] = field(default_factory=list)


@dataclass
class RoundsResult:
    """What :func:`run_rounds` computed: mean raw / sent tensors, the per-round records, the update kind."""

    raw: dict[str, torch.Tensor]
    sent: dict[str, torch.Tensor]
    kind: str
    rounds: list[dict[str, torch.Tensor]]
    participated: list[int]
    total: int


def recorded_tensors(server_extra: dict[str, Any]) -> list[str]:
    """Names of the tensors the server keeps from every round: the imprint rows (weight and bias of the
    planted layer) when the server planted a structure, else none (the mean of the rounds is always kept)."""
    lay = (server_extra or {}).get("imprint")
    return [lay["weight"], lay["bias"]] if lay else []


def one_round(model, params, buffers, x, y, pipeline: Pipeline, ctx: ObfContext, protocol
              ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], str]:
    """One client round: ``(raw, sent, kind)``, exactly what :meth:`fedleak.experiment.case.Case.client_update`
    computes for a single round (FedSGD gradient, or FedAvg delta / pseudo-gradient, then the pipeline)."""
    p = protocol
    if p.name == "fedsgd":
        raw, kind = fedsgd(model, params, buffers, x, y, pipeline, ctx), "gradient"
    else:
        delta, _ = fedavg(model, params, buffers, x, y, pipeline, ctx, p.lr, p.local_steps, p.local_batch_size,
                          p.epochs)
        raw = {k: v / p.lr for k, v in delta.items()} if p.send == "pseudo-gradient" else delta
        kind = p.send
    return raw, pipeline.apply(raw, ctx), kind


def participation_draws(rounds: int, participation: float, seed: int) -> list[int]:
    """Indices of the rounds the client takes part in: Bernoulli(``participation``) per round from a generator
    seeded ``seed + 2`` (all rounds when ``participation = 1``)."""
    if participation >= 1.0:
        return list(range(rounds))
    gen = torch.Generator().manual_seed(seed + 2)
    u = torch.rand(rounds, generator=gen, dtype=torch.float64)
    return [int(i) for i in torch.nonzero(u < participation).flatten()]


def run_rounds(model, params, buffers, x, y, pipeline: Pipeline, ctx: ObfContext, protocol, seed: int,
               keep: Optional[list[str]] = None) -> RoundsResult:
    """Run ``protocol.rounds`` rounds of the client on the same data and model, fresh noise each round (the
    generator in ``ctx`` advances), taking part with probability ``protocol.participation``. Returns the mean
    raw and sent tensors of the received rounds and, per received round, the tensors named in ``keep``."""
    R = int(protocol.rounds)
    took = participation_draws(R, float(protocol.participation), seed)
    if not took:
        raise DataError(f"the client took part in none of the {R} round(s) at participation "
                        f"{protocol.participation}; raise protocol.rounds or protocol.participation, or change seed")
    keep = list(keep or [])
    raw_sum: dict[str, torch.Tensor] = {}
    sent_sum: dict[str, torch.Tensor] = {}
    records: list[dict[str, torch.Tensor]] = []
    kind = "gradient"
    for _ in took:
        raw, sent, kind = one_round(model, params, buffers, x, y, pipeline, ctx, protocol)
        for acc, src in ((raw_sum, raw), (sent_sum, sent)):
            for k, t in src.items():
                acc[k] = acc[k] + t.double() if k in acc else t.double().clone()
        records.append({k: sent[k].detach().clone() for k in keep if k in sent})
    n = len(took)
    dtypes = {k: t.dtype for k, t in sent.items()}
    raw_mean = {k: (v / n).to(raw[k].dtype) for k, v in raw_sum.items()}
    sent_mean = {k: (v / n).to(dtypes[k]) for k, v in sent_sum.items()}
    return RoundsResult(raw=raw_mean, sent=sent_mean, kind=kind, rounds=records, participated=took, total=R)


def _step_epsilon(step, ctx: ObfContext, rounds: int, participation: float) -> tuple[float, float, str]:
    """(epsilon, delta, accountant) of ``rounds`` rounds of one DP step at Poisson participation rate."""
    from fedleak.client.privacy import rounds_epsilon

    if isinstance(step, LDP):
        z = step.effective_noise_multiplier()
        if step.mechanism == "laplace":
            return rounds / z, 0.0, "pure (basic composition)"
        return rounds_epsilon(z, rounds, step.delta, participation=participation,
                              accountant=step.accountant), step.delta, step.accountant
    z = step.effective_noise_multiplier(ctx)
    s = max(1, ctx.local_steps)
    part = participation if s == 1 else 1.0  # no amplification by participation over several local steps
    return rounds_epsilon(z, rounds, step.delta, participation=part, sample_rate=step.sample_rate(ctx),
                          steps_per_round=s, accountant=step.accountant), step.delta, step.accountant


def rounds_privacy(pipeline: Pipeline, ctx: ObfContext, total: int, participated: int,
                   participation: float) -> Optional[dict]:
    """Privacy of all rounds (see the module docstring), or None when the pipeline has no DP step."""
    steps = [s for s in pipeline.steps if isinstance(s, (LDP, DPSGD))]
    if not steps:
        return None
    eps = delta = eps_server = 0.0
    accountants = []
    for s in steps:
        e, d, a = _step_epsilon(s, ctx, total, participation)
        e_srv, _, _ = _step_epsilon(s, ctx, participated, 1.0)
        eps, delta, eps_server = eps + e, delta + d, eps_server + e_srv
        accountants.append(a)
    one = pipeline.privacy(ctx) or {}
    return {"epsilon": eps, "delta": delta, "mechanism": one.get("mechanism", "composed"),
            "epsilon_per_round": one.get("epsilon"), "epsilon_against_server": eps_server, "rounds": total,
            "rounds_participated": participated, "participation": participation, "accountant": accountants}


def wrap(update: Update, res: RoundsResult) -> RoundsUpdate:
    """The single-round :class:`Update` fields of ``update`` plus the per-round records of ``res``."""
    fields = {f.name: getattr(update, f.name) for f in dataclasses.fields(Update)}
    fields["stats"] = {**update.stats, "rounds": {"rounds": res.total, "participated": list(res.participated),
                                                  "recorded": sorted(res.rounds[0]) if res.rounds else []}}
    return RoundsUpdate(**fields, rounds=res.rounds, participated=list(res.participated))


def first_rounds(update: RoundsUpdate, count: int) -> RoundsUpdate:
    """The server's record after only the first ``count`` received rounds of ``update``: ``rounds`` cut to
    ``count`` and the recorded tensors of ``tensors`` replaced by their mean over those rounds (the others keep
    the mean of all rounds: they were not recorded per round). Rounds share one noise stream, so this equals
    running ``count`` rounds (for ``count = 1``, the single-round update's recorded tensors bit for bit)."""
    if not 1 <= count <= len(update.rounds):
        raise DataError(f"count must be between 1 and {len(update.rounds)} received rounds, got {count}")
    recs = update.rounds[:count]
    tensors = dict(update.tensors)
    for k in recs[0]:
        tensors[k] = recs[0][k].clone() if count == 1 else \
            (sum(r[k].double() for r in recs) / count).to(recs[0][k].dtype)
    fields = {f.name: getattr(update, f.name) for f in dataclasses.fields(Update)}
    fields["tensors"] = tensors
    return RoundsUpdate(**fields, rounds=list(recs), participated=list(update.participated[:count]))
