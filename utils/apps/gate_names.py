"""A bridge, to delete once utils/apps/gate_training.py reads the rain gate's settings by their GATE_*
names (being rewritten so): until then it reads them by their old names, which meant other things in
the SPDNet scripts. ``with_old_gate_names`` adds the old name beside each new one, same value; the
trainer then reads what it knows and ignores the rest, before and after its rewrite.
"""

from __future__ import annotations

# new name -> the name utils/apps/gate_training.py read before
OLD_GATE_NAMES = {
    "GATE_IMAGE_SIZE": "IMAGE_SIZE", "GATE_PERCENT_DATASET": "PERCENT_DATASET", "GATE_VAL_PERCENT": "VAL_PERCENT",
    "GATE_NUM_EPOCHS": "NUM_EPOCHS", "GATE_BATCH_SIZE": "BATCH_SIZE", "GATE_LEARNING_RATE": "LEARNING_RATE",
}


def with_old_gate_names(config: dict) -> dict:
    """``config`` plus each renamed gate setting under its old name too."""
    return {**config, **{old: config[new] for new, old in OLD_GATE_NAMES.items() if new in config}}
