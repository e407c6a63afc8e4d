"""The optimizers a run trains with: Adam, AdamW, or Muon for the hidden matrices beside AdamW.

Muon (`torch.optim.Muon`) orthogonalises the momentum of each 2-D weight with a few Newton-Schulz
iterations, so every direction of a matrix learns at the same rate; it suits the blocks' hidden
matrices only. Embeddings, the output head, norms and biases stay on AdamW (as in the
modded-nanogpt speedrun and Moonshot's Muon). Lightning steps one optimizer per module under
automatic optimisation, so `CombinedOptimizer` presents the two as one: one `param_groups` list
(the learning-rate schedule and gradient clipping see every parameter), one step, one state dict.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


class CombinedOptimizer(torch.optim.Optimizer):
    """Several optimizers over disjoint parameters, stepped together as one.

    `param_groups` is the concatenation of theirs (the same dicts, so a scheduler that sets
    `group["lr"]` sets it where the inner optimizer reads it, and clipping sees every
    parameter); `state_dict` holds one entry per inner optimizer, in order, so checkpoints
    resume each exactly.
    """

    def __init__(self, optimizers: list[torch.optim.Optimizer]):
        # torch.optim.Optimizer.__init__ would register the parameters a second time: the inner
        # optimizers own them; this object only routes calls (it stays an Optimizer instance,
        # which Lightning and LR schedulers check for)
        self.optimizers = optimizers
        self.defaults = {}
        self._optimizer_step_pre_hooks = {}
        self._optimizer_step_post_hooks = {}
        self._optimizer_state_dict_pre_hooks = {}
        self._optimizer_state_dict_post_hooks = {}
        self._optimizer_load_state_dict_pre_hooks = {}
        self._optimizer_load_state_dict_post_hooks = {}

    @property
    def param_groups(self) -> list[dict]:
        # read through every time: an inner load_state_dict replaces its group dicts
        return [group for opt in self.optimizers for group in opt.param_groups]

    @property
    def state(self) -> dict:
        return {p: s for opt in self.optimizers for p, s in opt.state.items()}

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for opt in self.optimizers:
            opt.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"optimizers": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state_dict: dict) -> None:
        saved = state_dict.get("optimizers")
        if not isinstance(saved, list) or len(saved) != len(self.optimizers):
            raise ValueError(
                "the checkpoint's optimizer state does not match this run's optimizers "
                f"({len(self.optimizers)} combined); resume with the optimizer it was trained with"
            )
        for opt, state in zip(self.optimizers, saved, strict=True):
            opt.load_state_dict(state)

    def __repr__(self) -> str:
        return f"CombinedOptimizer({', '.join(type(o).__name__ for o in self.optimizers)})"


def is_hidden_matrix(name: str, param: torch.Tensor) -> bool:
    """The 2-D weights inside the transformer blocks (attention and MLP matrices): Muon's."""
    return param.dim() == 2 and name.startswith("blocks.")


def build_optimizer(model: torch.nn.Module, hp) -> torch.optim.Optimizer:
    """The optimizer the module's hyper-parameters name (shared with the benchmarks' plain loop,
    so that both sides of the overhead comparison step the same optimizer).

    Weight decay shrinks matrices (embeddings, linear weights), never biases or norms.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    impl = hp.get("optimizer_impl", "auto")
    kwargs = {"foreach": {"foreach": True}, "fused": {"fused": True}}.get(impl, {})
    kwargs = {"foreach": False} if impl == "loop" else kwargs
    adam_cls = torch.optim.Adam if hp.optimizer == "adam" else torch.optim.AdamW
    muon = hp.optimizer == "muon"
    hidden, rest = [], []
    for name, p in named:
        (hidden if muon and is_hidden_matrix(name, p) else rest).append(p)
    adam = adam_cls(
        [
            {"params": [p for p in rest if p.dim() >= 2], "weight_decay": hp.weight_decay},
            {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0},
        ],
        lr=hp.learning_rate,
        betas=tuple(hp.betas),
        **kwargs,
    )
    if not muon:
        return adam
    # Muon's rate is the same schedule scaled: `match_rms_adamw` sizes its updates like AdamW's,
    # so one learning rate (and weight decay) serves both (Moonshot, "Muon is Scalable")
    orthogonal = torch.optim.Muon(
        hidden,
        lr=hp.learning_rate * hp.get("muon_lr_scale", 1.0),
        weight_decay=hp.weight_decay,
        momentum=hp.get("muon_momentum", 0.95),
        ns_steps=hp.get("muon_ns_steps", 5),
        adjust_lr_fn="match_rms_adamw",
    )
    return CombinedOptimizer([orthogonal, adam])


def set_muon_momentum(optimizer: torch.optim.Optimizer, momentum: float) -> None:
    """Set the momentum of the Muon groups of `optimizer` (a CombinedOptimizer or Muon)."""
    inner = getattr(optimizer, "optimizers", [optimizer])
    for opt in inner:
        if isinstance(opt, torch.optim.Muon):
            for group in opt.param_groups:
                group["momentum"] = momentum
