"""Checkpoints that survive crashes: atomic writes, RNG states, weights-only loading."""

from __future__ import annotations

import json
import os
import pickle
import random
import re
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


def atomic_write_json(path: str, content, indent: int | None = 2) -> str:
    """Write JSON to a temporary name beside ``path`` (its folder made if need be), then rename: a
    reader never sees half a file. The one JSON writer of the project; returns ``path``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w") as file:
        json.dump(content, file, indent=indent)
    os.replace(path + ".tmp", path)
    return path


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


class WeightsFileError(ValueError):
    """A weights or checkpoint file that cannot be read: names the setting and the file."""


def load_weights_file(path: str, setting: str):
    """A weights or checkpoint file, loaded with ``weights_only=True`` onto the CPU.

    ``setting`` (e.g. "SPDNET_WEIGHTS", "RESUME") names where the path came from. A missing file, a
    file that is not one torch wrote, or one holding objects weights-only loading refuses ends in
    one line naming both; weights-only loading is never turned off (that would run any code the
    file carries).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{setting}: {path!r} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        if refused:
            reason = (f"holds a Python object ({refused.group(1)}) besides tensors and plain containers, which "
                      "weights-only loading refuses: save a state dict of tensors")
        else:
            reason = "is not a weights file written by torch.save"
        raise WeightsFileError(f"{setting}: {path!r} {reason}") from None
    except (EOFError, RuntimeError, OSError, ValueError) as error:
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise WeightsFileError(f"{setting}: {path!r} is not a weights file written by torch.save ({detail})") from None


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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
