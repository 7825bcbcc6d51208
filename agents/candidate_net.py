"""A policy network that scores each candidate site with the same weights.

The flat observation holds K candidates' features side by side (see
``mecrl.envs.observation``). A plain MLP learns a separate function for
every candidate slot; :class:`CandidateScoringPolicy` instead encodes each
candidate with one shared encoder, pools the encodings (their mean and the
encoding of candidate 0, the current site) as context, and scores every
candidate by one shared head: the logit of candidate k depends on k's
features and the context only. The critic reads the same kind of pooled
context through its own encoder.

The default features extractor (flattening) is kept and the actor's scores
are the logits, so the exported graph of ``mecrl.serving.export`` is the
same chain of modules as for an MLP policy.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy
from torch import nn

SCORE_GAIN = 0.01
"""Initial scale of the scoring head's output layer: near-uniform logits."""


class CandidateEncoder(nn.Module):
    """Encodes each candidate and the context it is seen in.

    Args:
        n_candidates: K.
        n_features: Features per candidate (F).
        units: Units of each hidden layer of the per-candidate encoder.
        activation: Activation module class.
    """

    def __init__(
        self,
        n_candidates: int,
        n_features: int,
        units: tuple[int, ...],
        activation: type[nn.Module],
    ) -> None:
        super().__init__()
        self.n_candidates = n_candidates
        self.n_features = n_features
        layers: list[nn.Module] = []
        width = n_features + 1  # the episode's progress joins every candidate
        for size in units:
            layers += [nn.Linear(width, size), activation()]
            width = size
        self.encode = nn.Sequential(*layers)
        self.width = width

    def forward(self, observation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return per-candidate codes (N, K, E) and the context (N, 2E)."""
        table = observation[:, :-1].reshape(-1, self.n_candidates, self.n_features)
        progress = observation[:, -1:, None].expand(-1, self.n_candidates, 1)
        codes = self.encode(torch.cat([table, progress], dim=2))
        context = torch.cat([codes.mean(dim=1), codes[:, 0]], dim=1)
        return codes, context


class CandidateExtractor(nn.Module):
    """Actor and critic latents in SB3's ``MlpExtractor`` interface.

    The actor's latent is already the K candidate scores; the critic's is a
    hidden layer over the pooled context.

    Args:
        n_candidates: K.
        n_features: Features per candidate (F).
        units: Hidden units of the encoders and heads.
        activation: Activation module class.
    """

    def __init__(
        self,
        n_candidates: int,
        n_features: int,
        units: tuple[int, ...],
        activation: type[nn.Module],
    ) -> None:
        super().__init__()
        self.actor = CandidateEncoder(n_candidates, n_features, units, activation)
        self.critic = CandidateEncoder(n_candidates, n_features, units, activation)
        width = self.actor.width
        self.score_out = nn.Linear(width, 1)
        self.score = nn.Sequential(
            nn.Linear(3 * width, width), activation(), self.score_out
        )
        self.value = nn.Sequential(nn.Linear(2 * width, width), activation())
        self.latent_dim_pi = n_candidates
        self.latent_dim_vf = width

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the actor's and the critic's latents."""
        return self.forward_actor(features), self.forward_critic(features)

    def forward_actor(self, features: torch.Tensor) -> torch.Tensor:
        """Return the (N, K) candidate scores."""
        codes, context = self.actor(features)
        shared = context[:, None, :].expand(-1, codes.shape[1], -1)
        return self.score(torch.cat([codes, shared], dim=2))[..., 0]

    def forward_critic(self, features: torch.Tensor) -> torch.Tensor:
        """Return the critic's latent."""
        _, context = self.critic(features)
        return self.value(context)


class CandidateScoringPolicy(MaskableActorCriticPolicy):
    """MaskablePPO's actor-critic with :class:`CandidateExtractor` inside.

    ``net_arch`` (a list of ints) gives the hidden units of the encoders;
    the observation must be the flat candidate layout with ``K`` equal to
    the number of actions.
    """

    def _build_mlp_extractor(self) -> None:
        n_candidates = int(self.action_space.n)  # type: ignore[attr-defined]
        size = int(self.observation_space.shape[0])  # type: ignore[index]
        if (size - 1) % n_candidates:
            raise ValueError(
                f"an observation of {size} values is not {n_candidates} "
                "candidates' features plus the progress"
            )
        units = tuple(int(u) for u in self.net_arch)
        self.mlp_extractor = CandidateExtractor(  # type: ignore[assignment]
            n_candidates, (size - 1) // n_candidates, units, self.activation_fn
        )

    def _build(self, lr_schedule: Any) -> None:
        super()._build(lr_schedule)
        # the scores are the logits: no layer mixes candidates after them
        self.action_net = nn.Identity()
        last = cast(CandidateExtractor, self.mlp_extractor).score_out
        nn.init.orthogonal_(last.weight, gain=SCORE_GAIN)
        nn.init.zeros_(last.bias)
        # SB3's optimizer still holds the replaced action layer's weights
        self.optimizer = self.optimizer_class(
            self.parameters(),
            lr=lr_schedule(1),  # type: ignore[call-arg]
            **self.optimizer_kwargs,
        )
