"""Checkpoints that survive crashes: atomic writes, RNG states, weights-only loading."""

from __future__ import annotations

import os
import random
import tempfile

import numpy as np
import torch


def atomic_save(obj, path: str) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename: a crash never leaves half a file."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=".tmp_", suffix=".pt")
    os.close(handle)
    try:
        torch.save(obj, temporary)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def atomic_write_json(path: str, content) -> None:
    """Write JSON to a temporary name, then rename: a reader never sees half a file."""
    import json

    with open(path + ".tmp", "w") as file:
        json.dump(content, file, indent=2)
    os.replace(path + ".tmp", path)


class NonFiniteTensorError(ValueError):
    """A weights or checkpoint file holding a NaN or inf: names the file and the tensor."""


def nonfinite_tensors(value, name: str = "") -> list[str]:
    """The names (dotted paths through dicts and lists) of the floating tensors in ``value`` that hold a NaN or inf."""
    if isinstance(value, torch.Tensor):
        return [name] if value.is_floating_point() and not bool(torch.isfinite(value).all()) else []
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return []
    return [found for key, item in items for found in nonfinite_tensors(item, f"{name}.{key}" if name else str(key))]


def check_finite(value, source: str) -> None:
    """Raise a NonFiniteTensorError naming ``source`` and the first non-finite tensors of ``value``."""
    bad = nonfinite_tensors(value)
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise NonFiniteTensorError(f"{source}: tensor {shown} holds NaN or inf values; these weights cannot be used")


def load_checkpoint(path: str) -> dict:
    """A checkpoint written by this project, loaded with ``weights_only=True`` onto the CPU."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    return torch.load(path, map_location="cpu", weights_only=True)


def rng_states() -> dict:
    """Python, NumPy, torch (and CUDA) random states in types ``weights_only`` loading accepts."""
    numpy_state = np.random.get_state()
    states = {
        "python": random.getstate(),
        "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].copy()), *numpy_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict) -> None:
    random.setstate(_as_tuples(states["python"]))
    name, keys, *rest = states["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _as_tuples(value):
    # random.setstate wants the nested tuples back, whatever serialisation made of them.
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value
