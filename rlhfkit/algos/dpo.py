"""Direct preference losses: DPO, IPO, conservative DPO and SimPO, behind one registry.

Every loss reads per-sequence log-probabilities summed over response tokens, shape (B,): the
policy's for the chosen and rejected responses of B pairs and, for all but SimPO, the frozen
reference's. With the implicit reward of a response y (Rafailov et al. 2023, section 5)

    r(y) = beta * (log pi(y|x) - log pi_ref(y|x))

and h = r(y_c) - r(y_r), the losses per pair are

    sigmoid  -log sigmoid(h)                                       DPO, Rafailov et al. 2023, eq. 7
    cdpo     -(1 - eps) log sigmoid(h) - eps log sigmoid(-h)        conservative DPO, Mitchell 2023
    ipo      (h / beta - 1 / (2 beta))^2                            IPO, Azar et al. 2023, eq. 17
    simpo    -log sigmoid(beta |y_c|^-1 log pi(y_c) - beta |y_r|^-1 log pi(y_r) - gamma)
                                                                    SimPO, Meng et al. 2024, eq. 6

SimPO's implicit reward is the length-normalized r(y) = beta / |y| * log pi(y|x): no reference.
The trainer fills one `PreferenceInputs` and calls `preference_loss(name, inputs, normalizer)`;
it never branches on the loss's name (`PREFERENCE_LOSSES[name].needs_reference` says which
models to load). The per-pair losses are reduced by `aggregate_loss`, like every other loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from rlhfkit.algos.masking import aggregate_loss


@dataclass
class PreferenceInputs:
    """Everything a preference loss may read. Every tensor is (B,), one entry per pair."""

    chosen_logps: torch.Tensor
    """(B,) log pi(y_c | x) of the policy being trained, summed over the chosen response's tokens."""
    rejected_logps: torch.Tensor
    """(B,) log pi(y_r | x), summed over the rejected response's tokens."""
    ref_chosen_logps: torch.Tensor | None = None
    """(B,) the frozen reference's log pi_ref(y_c | x); required by every loss but "simpo"."""
    ref_rejected_logps: torch.Tensor | None = None
    """(B,) log pi_ref(y_r | x); required with ref_chosen_logps."""
    chosen_lengths: torch.Tensor | None = None
    """(B,) number of response tokens of y_c (|y_c| > 0); required by "simpo"."""
    rejected_lengths: torch.Tensor | None = None
    """(B,) |y_r|; required by "simpo"."""
    beta: float = 0.1
    """Inverse temperature of the implicit reward (DPO/cDPO/SimPO); IPO's regularization tau."""
    label_smoothing: float = 0.0
    """"cdpo" only: the probability eps in [0, 0.5) that a pair's label is flipped."""
    gamma: float = 0.0
    """"simpo" only: the target reward margin gamma (in reward units; the paper's gamma)."""

    def __post_init__(self) -> None:
        shape = self.chosen_logps.shape
        if self.chosen_logps.dim() != 1:
            raise ValueError(f"PreferenceInputs.chosen_logps must be (B,), got {tuple(shape)}")
        for name in ("rejected_logps", "ref_chosen_logps", "ref_rejected_logps", "chosen_lengths",
                     "rejected_lengths"):
            t = getattr(self, name)
            if t is not None and t.shape != shape:
                raise ValueError(f"PreferenceInputs.{name} has shape {tuple(t.shape)}, expected (B,) = {tuple(shape)}")
        if (self.ref_chosen_logps is None) != (self.ref_rejected_logps is None):
            raise ValueError("PreferenceInputs: give both ref_chosen_logps and ref_rejected_logps, or neither")
        if not self.beta > 0:
            raise ValueError(f"PreferenceInputs.beta must be > 0, got {self.beta}")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ValueError(f"PreferenceInputs.label_smoothing must be in [0, 0.5), got {self.label_smoothing}")


# fn(inputs) -> (losses (B,), chosen_rewards (B,), rejected_rewards (B,)); rewards are implicit rewards.
PairLossFn = Callable[[PreferenceInputs], "tuple[torch.Tensor, torch.Tensor, torch.Tensor]"]


@dataclass(frozen=True)
class PreferenceLoss:
    """A registered loss: its function and what it needs, so a trainer decides from data."""

    fn: PairLossFn
    needs_reference: bool
    """True: the trainer must supply the reference's log-probabilities."""
    citation: str


def dpo_loss(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, ref_chosen_logps: torch.Tensor,
             ref_rejected_logps: torch.Tensor, beta: float, label_smoothing: float = 0.0):
    """DPO (Rafailov et al. 2023, eq. 7), conservative with label_smoothing > 0 (Mitchell 2023).

    All inputs (B,) -> (losses (B,), chosen_rewards (B,), rejected_rewards (B,)):
      r_c = beta (log pi(y_c) - log pi_ref(y_c)),  r_r likewise,  h = r_c - r_r,
      loss = -(1 - eps) log sigmoid(h) - eps log sigmoid(-h),  eps = label_smoothing.
    eps = 0 is DPO; eps > 0 is the loss of a Bradley-Terry model whose labels are flipped with
    probability eps, whose optimum keeps h finite (log((1 - eps) / eps)). Uses logsigmoid, so
    |h| of 1000 gives finite values.
    """
    chosen_rewards = beta * (chosen_logps - ref_chosen_logps)
    rejected_rewards = beta * (rejected_logps - ref_rejected_logps)
    h = chosen_rewards - rejected_rewards
    losses = -(1.0 - label_smoothing) * F.logsigmoid(h)
    if label_smoothing:
        losses = losses - label_smoothing * F.logsigmoid(-h)
    return losses, chosen_rewards, rejected_rewards


def ipo_loss(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, ref_chosen_logps: torch.Tensor,
             ref_rejected_logps: torch.Tensor, beta: float):
    """IPO (Azar et al. 2023, eq. 17; their tau is `beta` here): a squared loss on the log-ratio gap.

    All inputs (B,) -> (losses (B,), chosen_rewards (B,), rejected_rewards (B,)):
      g = (log pi(y_c) - log pi_ref(y_c)) - (log pi(y_r) - log pi_ref(y_r)),
      loss = (g - 1 / (2 beta))^2.
    The regression target 1/(2 beta) keeps g bounded even for deterministic preferences, where
    DPO's loss only reaches 0 as h -> infinity. Log-probabilities are summed over tokens, as in
    the paper. The rewards are DPO's implicit rewards beta * log-ratio (for the same stats).
    """
    chosen_ratio = chosen_logps - ref_chosen_logps
    rejected_ratio = rejected_logps - ref_rejected_logps
    losses = (chosen_ratio - rejected_ratio - 1.0 / (2.0 * beta)) ** 2
    return losses, beta * chosen_ratio, beta * rejected_ratio


def simpo_loss(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, chosen_lengths: torch.Tensor,
               rejected_lengths: torch.Tensor, beta: float, gamma: float):
    """SimPO (Meng et al. 2024, eq. 6): reference-free, length-normalized, with a target margin.

    All inputs (B,) -> (losses (B,), chosen_rewards (B,), rejected_rewards (B,)):
      r_c = beta / |y_c| * log pi(y_c),  r_r = beta / |y_r| * log pi(y_r),
      loss = -log sigmoid(r_c - r_r - gamma).
    Dividing by the length makes the reward the mean token log-probability (what generation
    ranks by), so a long response is not penalized for having more tokens. Lengths must be > 0.
    """
    if bool((chosen_lengths <= 0).any()) or bool((rejected_lengths <= 0).any()):
        raise ValueError("simpo_loss: every response needs at least one token (lengths must be > 0)")
    chosen_rewards = beta * chosen_logps / chosen_lengths.to(chosen_logps.dtype)
    rejected_rewards = beta * rejected_logps / rejected_lengths.to(rejected_logps.dtype)
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards - gamma)
    return losses, chosen_rewards, rejected_rewards


def _require(inputs: PreferenceInputs, field: str, loss: str, hint: str) -> torch.Tensor:
    value = getattr(inputs, field)
    if value is None:
        raise ValueError(f"preference loss {loss!r} needs PreferenceInputs.{field}: {hint}")
    return value


def _with_reference(name: str, fn) -> PairLossFn:
    def run(x: PreferenceInputs):
        ref_c = _require(x, "ref_chosen_logps", name, "the reference's summed log-probabilities (B,)")
        return fn(x.chosen_logps, x.rejected_logps, ref_c, x.ref_rejected_logps, x)

    return run


def _simpo(x: PreferenceInputs):
    lengths = _require(x, "chosen_lengths", "simpo", "response token counts (B,)")
    rejected = _require(x, "rejected_lengths", "simpo", "response token counts (B,)")
    return simpo_loss(x.chosen_logps, x.rejected_logps, lengths, rejected, x.beta, x.gamma)


PREFERENCE_LOSSES: dict[str, PreferenceLoss] = {
    "sigmoid": PreferenceLoss(_with_reference("sigmoid", lambda c, r, rc, rr, x: dpo_loss(c, r, rc, rr, x.beta)),
                              True, "Rafailov et al. 2023, arXiv:2305.18290"),
    "cdpo": PreferenceLoss(_with_reference("cdpo", lambda c, r, rc, rr, x: dpo_loss(c, r, rc, rr, x.beta,
                                                                                     x.label_smoothing)),
                           True, "Mitchell 2023, 'A note on DPO with noisy preferences'"),
    "ipo": PreferenceLoss(_with_reference("ipo", lambda c, r, rc, rr, x: ipo_loss(c, r, rc, rr, x.beta)),
                          True, "Azar et al. 2023, arXiv:2310.12036"),
    "simpo": PreferenceLoss(_simpo, False, "Meng et al. 2024, arXiv:2405.14734"),
}


def preference_loss(name: str, inputs: PreferenceInputs,
                    normalizer: float | torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss registered as `name`, averaged over pairs -> (loss, stats).

    loss = sum_b loss_b / normalizer (default B), through `aggregate_loss`: pass the whole
    minibatch's pair count as `normalizer` to every micro-batch and their losses (and stats) add
    up to the minibatch's exactly. stats (detached scalars, each a sum over pairs / normalizer):
      loss; reward_accuracy: fraction with r_c > r_r (ties count as wrong: 0 at the start of DPO);
      chosen_reward, rejected_reward: implicit rewards; reward_margin: r_c - r_r;
      chosen_logps, rejected_logps: the policy's summed log-probabilities (their fall is the
      known DPO failure: both responses lose probability while the margin grows).
    """
    try:
        spec = PREFERENCE_LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown preference loss {name!r}; valid names: {', '.join(PREFERENCE_LOSSES)}") from None
    losses, chosen_rewards, rejected_rewards = spec.fn(inputs)  # (B,) each
    ones = torch.ones_like(losses)[:, None]  # (B, 1): one "token" per pair
    loss = aggregate_loss(losses[:, None], ones, "token-mean", normalizer)
    denom = losses.shape[0] if normalizer is None else normalizer
    with torch.no_grad():
        per_pair = {
            "loss": losses, "reward_accuracy": (chosen_rewards > rejected_rewards).to(losses.dtype),
            "chosen_reward": chosen_rewards, "rejected_reward": rejected_rewards,
            "reward_margin": chosen_rewards - rejected_rewards,
            "chosen_logps": inputs.chosen_logps, "rejected_logps": inputs.rejected_logps,
        }
        stats = {k: v.detach().sum() / denom for k, v in per_pair.items()}
    return loss, stats
