"""Optimiser parameter groups from what an encoder declares (layer-wise lr decay, weight decay).

Every encoder answers the optimiser with three members (timm's group_matcher / no_weight_decay):

- `num_layers`: int, its layer-decay depth D;
- `layer_id(name) -> int` in [0, D] for each of its parameter names (0: embeddings / input norm);
- `no_weight_decay() -> set[str]`: its parameter names exempt from weight decay.

An encoder without them is an error (a new encoder never silently gets one flat lr scale).
"""
from __future__ import annotations

from torch import nn

DECLARATIONS = ("num_layers", "layer_id", "no_weight_decay")


def check_declares_groups(encoder: nn.Module) -> None:
    """TypeError naming the encoder class and the missing members unless it declares all three."""
    missing = [m for m in DECLARATIONS if not hasattr(encoder, m)]
    if missing:
        raise TypeError(f"encoder {type(encoder).__name__} does not declare its optimiser groups: "
                        f"missing {', '.join(missing)} (every encoder defines num_layers, "
                        "layer_id(name) and no_weight_decay(); see models/param_groups.py)")


def encoder_layer_ids(encoder: nn.Module) -> dict[str, int]:
    """Parameter name -> layer id in [0, encoder.num_layers]; ValueError for an id out of range."""
    check_declares_groups(encoder)
    ids = {name: encoder.layer_id(name) for name, _ in encoder.named_parameters()}
    bad = {n: i for n, i in ids.items() if not 0 <= i <= encoder.num_layers}
    if bad:
        raise ValueError(f"encoder {type(encoder).__name__}: layer ids outside [0, "
                         f"{encoder.num_layers}]: {bad}")
    return ids


def finetune_param_groups(encoder: nn.Module, head: nn.Module, weight_decay: float,
                          layer_decay: float) -> list[dict]:
    """AdamW groups for encoder + head. A parameter at layer id d of D gets the lr scale
    layer_decay ** (D + 1 - d); the head is at D + 1 (scale 1). Weight decay is 0 on the
    encoder's `no_weight_decay()` names and on the head's 1-D parameters (its bias).

    Each group is {"params", "lr": scale (multiplied by the base lr later), "weight_decay"}.
    """
    ids = encoder_layer_ids(encoder)
    exempt = encoder.no_weight_decay()
    unknown = exempt - set(ids)
    if unknown:
        raise ValueError(f"encoder {type(encoder).__name__}: no_weight_decay() names unknown "
                         f"parameters {sorted(unknown)}")
    depth = encoder.num_layers
    entries = [(p, ids[n], 0.0 if n in exempt else weight_decay)
               for n, p in encoder.named_parameters()]
    entries += [(p, depth + 1, 0.0 if p.ndim <= 1 else weight_decay) for p in head.parameters()]
    groups: dict[tuple[float, float], list] = {}
    for param, layer, decay in entries:
        groups.setdefault((layer_decay ** (depth + 1 - layer), decay), []).append(param)
    return [{"params": params, "lr": scale, "weight_decay": decay}
            for (scale, decay), params in sorted(groups.items())]
