"""Files that survive crashes and full disks: atomic, durable writes; the last checkpoints kept and the
newest usable one chosen; RNG states; weights-only loading."""

from __future__ import annotations

import io
import json
import os
import pickle
import random
import re
import secrets
from typing import BinaryIO, Callable, Sequence

import numpy as np
import torch

from utils.runtime.errors import FileWriteError, MissingFileError, UserError


def _fsync_directory(directory: str) -> None:
    """Flush a folder's entries (a rename in it) to disk; a no-op where folders cannot be opened."""
    try:
        handle = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass  # some filesystems refuse fsync on a folder; the file itself was flushed
    finally:
        os.close(handle)


def write_atomically(path: str, write: Callable[[BinaryIO], None],
                     before_rename: Callable[[], None] = lambda: None) -> str:
    """The project's one way to write a file: ``write(file)`` into a temporary file beside ``path``,
    flushed to disk, renamed over ``path``, the folder flushed too. A crash or a power cut leaves the
    old file or the new one, never half of one; the new file gets the mode the user's umask gives
    (0644 under 022), like any other file. A write that fails (a full disk, a quota, a file-size
    limit, no permission) removes the temporary file, leaves ``path`` as it was and raises a
    FileWriteError naming ``path`` and the cause. ``before_rename`` runs once the new file is complete
    on disk (``save_checkpoint`` moves the older checkpoints there). Returns ``path``."""
    directory = os.path.dirname(os.path.abspath(path))
    temporary = os.path.join(directory, f".tmp_{os.path.basename(path)}.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        os.makedirs(directory, exist_ok=True)
        handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        before_rename()
        os.replace(temporary, path)
        _fsync_directory(directory)
    except OSError as error:
        raise FileWriteError.of(path, error) from None
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return path


def atomic_save(obj, path: str, before_rename: Callable[[], None] = lambda: None) -> str:
    """``torch.save`` through ``write_atomically``. The bytes are made in memory first, so that a full
    disk surfaces as the operating system's error (torch's own writer would only say "unexpected pos")."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return write_atomically(path, lambda file: file.write(buffer.getbuffer()), before_rename)


def atomic_write_json(path: str, content, indent: int | None = 2) -> str:
    """JSON through ``write_atomically`` (its folder made if need be): the one JSON writer of the
    project; returns ``path``."""
    text = json.dumps(content, indent=indent)
    return write_atomically(path, lambda file: file.write(text.encode()))


def append_line(path: str, line: str) -> None:
    """Append ``line`` and a newline to a log file (JSONL). A write that fails is cut back to the
    file's previous end, so that no half line is left, and raises a FileWriteError naming the file."""
    size = os.path.getsize(path) if os.path.exists(path) else 0
    try:
        with open(path, "a") as file:
            file.write(line + "\n")
    except OSError as error:
        if os.path.exists(path):
            os.truncate(path, size)
        raise FileWriteError.of(path, error) from None


def checkpoint_paths(path: str, keep: int) -> list[str]:
    """``path`` and the ``keep - 1`` older checkpoints kept beside it, newest first:
    checkpoint.pt, checkpoint.1.pt, checkpoint.2.pt, ..."""
    stem, suffix = os.path.splitext(path)
    return [path] + [f"{stem}.{index}{suffix}" for index in range(1, keep)]


def save_checkpoint(obj, path: str, keep: int, rotate: bool = True) -> str:
    """``atomic_save`` to ``path``, the checkpoint it replaces kept as ``path``'s ``.1`` and so on: the
    last ``keep`` checkpoints stay on disk (``checkpoint_paths``). The new file is complete on disk
    before any older one moves; a crash between the renames leaves every checkpoint but the new one
    under some name, and ``load_checkpoint`` takes the newest usable one. ``rotate=False`` replaces
    ``path`` alone (a later checkpoint of the same step)."""
    paths = checkpoint_paths(path, keep if rotate else 1)

    def move_older() -> None:
        for older, newer in zip(reversed(paths[1:]), reversed(paths[:-1])):
            if os.path.exists(newer):
                os.replace(newer, older)

    return atomic_save(obj, path, move_older)


def load_checkpoint(path: str, keep: int, setting: str, finite_keys: Sequence[str] = ()) -> tuple[dict, str]:
    """The newest usable checkpoint of ``checkpoint_paths(path, keep)``, and its path.

    A checkpoint is usable when it loads weights-only and the tensors under ``finite_keys`` are finite.
    When the newest is not, the next older one is taken with a warning that names both; when none is,
    one WeightsFileError (a missing ``path`` with nothing older: MissingFileError) names what was tried.
    """
    problems, unusable = [], []
    for candidate in checkpoint_paths(path, max(keep, 1)):
        if not os.path.exists(candidate):
            continue
        try:
            checkpoint = load_weights_file(candidate, setting)
            missing = [key for key in finite_keys if not isinstance(checkpoint, dict) or key not in checkpoint]
            if missing:
                raise WeightsFileError(f"{setting}: {candidate!r} is not a training checkpoint (no {missing[0]!r})")
            check_finite({key: checkpoint[key] for key in finite_keys}, f"checkpoint {candidate}")
        except (WeightsFileError, NonFiniteTensorError) as error:
            problems.append(str(error))
            unusable.append(candidate)
            continue
        if problems or candidate != path:
            # The unusable files move aside (kept for a post-mortem), so that the next saves rotate
            # usable checkpoints only.
            for name in unusable:
                os.replace(name, name + ".unusable")
            newest = problems[0] if problems else f"{setting}: {path!r} does not exist"
            moved = f" (moved to {unusable[0]}.unusable)" if unusable else ""
            print(f"warning: {newest}{moved}; resuming from the previous checkpoint {candidate} instead", flush=True)
        return checkpoint, candidate
    if not problems:
        raise MissingFileError(f"{setting}: {path!r} does not exist")
    raise WeightsFileError(f"no usable checkpoint to resume from: {'; '.join(problems)}")


class NonFiniteTensorError(UserError, ValueError):
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


class WeightsFileError(UserError, ValueError):
    """A weights or checkpoint file that cannot be read: names the setting and the file."""


def load_weights_file(path: str, setting: str):
    """A weights or checkpoint file, loaded with ``weights_only=True`` onto the CPU.

    ``setting`` (e.g. "SPDNET_WEIGHTS", "RESUME") names where the path came from. A missing file, a
    file that is not one torch wrote, or one holding objects weights-only loading refuses ends in
    one line naming both; weights-only loading is never turned off (that would run any code the
    file carries).
    """
    if not os.path.isfile(path):
        raise MissingFileError(f"{setting}: {path!r} does not exist")
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
