"""Build a continual-learning method by name: EWC, L2, behaviour-cloning replay, PackNet or none."""

from __future__ import annotations

from agents.continual.ewc import EWC, FISHER_FLOOR, L2Regularizer, NoRegularizer, Regularizer
from agents.continual.packnet import PackNet
from agents.continual.replay import BehaviourCloningReplay

REGULARIZER_KINDS = ("ewc", "l2", "replay", "packnet", "none")


def make_regularizer(
    kind: str,
    *,
    strength: float = 1.0,
    mode: str = "online",
    gamma: float = 1.0,
    normalize: str | None = None,
    floor: float = FISHER_FLOOR,
    memory_size: int = 2048,
    replay_batch: int = 256,
    seed: int = 0,
    prune_share: float = 0.5,
) -> Regularizer:
    """The regulariser named `kind`; EWC/L2 take mode, gamma, normalize, floor (`agents.continual.ewc`),
    replay takes memory_size, replay_batch and seed (`agents.continual.replay`), packnet prune_share
    (`agents.continual.packnet`)."""
    if kind not in REGULARIZER_KINDS:
        raise ValueError(f"kind: must be one of {REGULARIZER_KINDS}, got {kind!r}")
    if kind == "packnet":
        return PackNet(prune_share=prune_share)
    if kind == "replay":
        return BehaviourCloningReplay(strength=strength, memory_size=memory_size, batch_size=replay_batch, seed=seed)
    cls = {"ewc": EWC, "l2": L2Regularizer, "none": NoRegularizer}[kind]
    return cls(strength=strength, mode=mode, gamma=gamma, normalize=normalize, floor=floor)
