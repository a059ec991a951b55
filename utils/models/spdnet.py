"""SPDNet (Yi et al., "Structure-Preserving Deraining with Residue Channel Prior Guidance", ICCV 2021).

An independent implementation of the official architecture (Joyies/SPDNet, ``src/model/spdnet.py``,
class ``Rainnet``), written so that official checkpoints load one to one:

- module names follow the official ones, so the 930 keys of an official state dict (n_feats=32,
  n_resblocks=3: 3,318,741 parameters plus the Haar filter buffers of pytorch_wavelets) map exactly;
  modules the official forward never calls (the ``ins`` InstanceNorms of every ``convd``, some
  ``branch*_d``/``_u`` and ``down*`` layers, ``Fuse.conv``) are kept for that reason and stay unused;
- ``forward`` takes images in 0-255 (the official trainer's rgb_range) and returns
  ``(out3, out2, out1)``, out3 being the derained image;
- the one-level Haar DWT / inverse DWT are computed directly from 2x2 pixel blocks, equal to
  pytorch_wavelets' ``DWTForward(J=1, wave='haar', mode='zero')`` and ``DWTInverse(wave='haar')``
  (zero padding at the bottom/right for odd sizes, subbands in its LH, HL, HH order), with no
  dependency on that unmaintained package;
- nothing calls ``.cuda()``; the model follows ``.to(device)`` like any module;
- ``Prior_Sp`` gets the model's width (the official code always builds it 32 wide, so it only runs
  at n_feats=32; at 32 the two are identical), so narrow models work for CPU demos;
- ``gradient_checkpointing = True`` recomputes each stage's activations during backward instead of
  keeping them, trading compute for memory when training at 640x640.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from utils.runtime.checkpoint import load_weights_file
from utils.runtime.errors import SettingError, UserError

HAAR = 1.0 / math.sqrt(2.0)
# pytorch_wavelets' buffers: analysis filters reversed for conv2d's correlation, synthesis as is.
HAAR_FILTERS = {
    "h0": (HAAR, HAAR), "h1": (HAAR, -HAAR),  # DWTForward: reversed dec_lo, reversed dec_hi
    "g0": (HAAR, HAAR), "g1": (HAAR, -HAAR),  # DWTInverse: rec_lo, rec_hi
}
WAVELET_BUFFER_SHAPES = {"col": (1, 1, 2, 1), "row": (1, 1, 1, 2)}


# ----------------------------------------------------------------------------------------------
# The Haar transform


def haar_dwt(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One-level 2-D Haar DWT. (B, C, H, W) -> low (B, C, H', W'), highs (B, C, 3, H', W').

    H' = ceil(H / 2), W' = ceil(W / 2): odd sizes are zero-padded at the bottom / right, as
    pytorch_wavelets' mode 'zero' does. highs are (LH, HL, HH) in its order: low-pass along the
    width and high-pass along the height first, then the reverse, then high-pass along both.
    """
    height, width = x.shape[-2:]
    if height % 2 or width % 2:
        x = F.pad(x, (0, width % 2, 0, height % 2))
    top_left, top_right = x[..., 0::2, 0::2], x[..., 0::2, 1::2]
    bottom_left, bottom_right = x[..., 1::2, 0::2], x[..., 1::2, 1::2]
    top_sum, top_diff = top_left + top_right, top_left - top_right
    bottom_sum, bottom_diff = bottom_left + bottom_right, bottom_left - bottom_right
    low = (top_sum + bottom_sum) * 0.5
    highs = torch.stack(
        ((top_sum - bottom_sum) * 0.5, (top_diff + bottom_diff) * 0.5, (top_diff - bottom_diff) * 0.5), dim=2
    )
    return low, highs


def haar_idwt(low: torch.Tensor, highs: torch.Tensor) -> torch.Tensor:
    """Inverse of ``haar_dwt``. low (B, C, h, w), highs (B, C, 3, h, w) -> (B, C, 2h, 2w).

    Like pytorch_wavelets' DWTInverse, the output is always twice the subband size (an odd input
    of ``haar_dwt`` comes back one row / column larger, its zero padding included).
    """
    lh, hl, hh = highs.unbind(2)
    row_low_sum, row_low_diff = low + lh, low - lh  # low-pass along the width: top, bottom rows
    row_high_sum, row_high_diff = hl + hh, hl - hh
    top_left = (row_low_sum + row_high_sum) * 0.5
    top_right = (row_low_sum - row_high_sum) * 0.5
    bottom_left = (row_low_diff + row_high_diff) * 0.5
    bottom_right = (row_low_diff - row_high_diff) * 0.5
    batch, channels, height, width = low.shape
    top = torch.stack((top_left, top_right), dim=-1).reshape(batch, channels, height, 2 * width)
    bottom = torch.stack((bottom_left, bottom_right), dim=-1).reshape(batch, channels, height, 2 * width)
    return torch.stack((top, bottom), dim=-2).reshape(batch, channels, 2 * height, 2 * width)


class _HaarFilterBuffers(nn.Module):
    """Holds pytorch_wavelets' four Haar filter buffers so official state dicts map key for key.

    The transform itself is computed exactly in ``haar_dwt`` / ``haar_idwt``; ``load_spdnet_weights``
    checks that a checkpoint's filters are these Haar filters before accepting it.
    """

    def __init__(self, kinds: tuple[str, str]):
        super().__init__()
        for kind in kinds:
            for direction, shape in WAVELET_BUFFER_SHAPES.items():
                self.register_buffer(f"{kind}_{direction}", torch.tensor(HAAR_FILTERS[kind]).reshape(shape))


class HaarDWT(_HaarFilterBuffers):
    def __init__(self):
        super().__init__(("h0", "h1"))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return haar_dwt(x)


class HaarIDWT(_HaarFilterBuffers):
    def __init__(self):
        super().__init__(("g0", "g1"))

    def forward(self, low: torch.Tensor, highs: torch.Tensor) -> torch.Tensor:
        return haar_idwt(low, highs)


# ----------------------------------------------------------------------------------------------
# Building blocks (official names in comments where ours differ)


def run_maybe_checkpointed(function, enabled: bool, *inputs: torch.Tensor):
    """``function(*inputs)``, recomputed in backward instead of stored when ``enabled`` and training."""
    if enabled and torch.is_grad_enabled():
        return checkpoint(function, *inputs, use_reentrant=False)
    return function(*inputs)


def residue_channel(x: torch.Tensor) -> torch.Tensor:
    """The residue channel prior: max minus min over RGB. (B, 3, H, W) -> (B, 1, H, W)."""
    return x.amax(dim=1, keepdim=True) - x.amin(dim=1, keepdim=True)


class ReflectConvReLU(nn.Module):
    """Official ``convd``: reflection padding, convolution, ReLU. ``ins`` is never applied."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int):
        super().__init__()
        self.pad = kernel_size // 2
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride)
        self.ins = nn.InstanceNorm2d(out_channels, affine=True)  # unused by the official forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(F.pad(x, (self.pad,) * 4, mode="reflect")))


class UpsampleTo(nn.Module):
    """Official ``Upsample``: reflection pad, stride-2 transposed conv, ReLU, nearest resize to ``like``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int):
        super().__init__()
        self.pad = kernel_size // 2
        self.conv2d = nn.ConvTranspose2d(in_channels, out_channels, kernel_size, stride=stride)

    def forward(self, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv2d(F.pad(x, (self.pad,) * 4, mode="reflect")))
        return F.interpolate(x, like.shape[-2:])


class SqueezeExcitation(nn.Module):
    """Channel attention from global average pooling (reduction 1, no biases)."""

    def __init__(self, channels: int):
        super().__init__()
        self.fc = nn.Sequential(
            nn.Linear(channels, channels, bias=False), nn.ReLU(inplace=True),
            nn.Linear(channels, channels, bias=False), nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.fc(x.mean(dim=(2, 3)))
        return x * weights[:, :, None, None]


class ResidualBlock(nn.Module):
    """Official ``RB``: conv-ReLU-conv-ReLU, squeeze-excitation, identity skip."""

    def __init__(self, n_feats: int):
        super().__init__()
        self.module_body = nn.Sequential(
            nn.Conv2d(n_feats, n_feats, 3, padding=1), nn.ReLU(),
            nn.Conv2d(n_feats, n_feats, 3, padding=1), nn.ReLU(),
        )
        self.se = SqueezeExcitation(n_feats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.se(self.module_body(x)) + x


class ResidualGroup(nn.Module):
    """Official ``RIR``: ``n_blocks`` residual blocks and a conv, a long skip, then ReLU."""

    def __init__(self, n_feats: int, n_blocks: int):
        super().__init__()
        self.module_body = nn.Sequential(
            *[ResidualBlock(n_feats) for _ in range(n_blocks)], nn.Conv2d(n_feats, n_feats, 3, padding=1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.module_body(x) + x)


class ResidueEncoder(nn.Module):
    """Official ``res_ch``: features of the residue-channel image. (B, 3, H, W) -> (B, n_feats, H, W)."""

    def __init__(self, n_feats: int, n_blocks: int):
        super().__init__()
        self.conv_init1 = ReflectConvReLU(3, n_feats // 2, 3, 1)
        self.conv_init2 = ReflectConvReLU(n_feats // 2, n_feats, 3, 1)
        self.extra = ResidualGroup(n_feats, n_blocks)
        self.checkpoint_groups = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_maybe_checkpointed(self.extra, self.checkpoint_groups, self.conv_init2(self.conv_init1(x)))


class Fuse(nn.Module):
    """Upsample the coarser features to ``y``'s size, add, residual block, ReLU."""

    def __init__(self, n_feats: int):
        super().__init__()
        self.up = UpsampleTo(n_feats, n_feats, 3, 2)
        self.conv = ReflectConvReLU(n_feats, n_feats, 3, 1)  # unused by the official forward
        self.rb = ResidualBlock(n_feats)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.relu(self.rb(self.up(x, y) + y))


class PriorGuidance(nn.Module):
    """Official ``Prior_Sp``: mutual attention between image features and residue-prior features."""

    def __init__(self, n_feats: int):
        super().__init__()
        self.query_conv = nn.Conv2d(n_feats, n_feats, 3, 1, 1)
        self.key_conv = nn.Conv2d(n_feats, n_feats, 3, 1, 1)
        self.gamma1 = nn.Conv2d(n_feats * 2, 2, 3, 1, 1)
        self.gamma2 = nn.Conv2d(n_feats * 2, 2, 3, 1, 1)

    def forward(self, x: torch.Tensor, prior: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        attention = torch.sigmoid(self.query_conv(x) * self.key_conv(prior))
        attended_x, attended_prior = x * attention, prior * attention
        x_gamma = self.gamma1(torch.cat((x, attended_x), dim=1))
        prior_gamma = self.gamma2(torch.cat((prior, attended_prior), dim=1))
        x_out = x * x_gamma[:, 0:1] + attended_x * x_gamma[:, 1:2]
        prior_out = prior * prior_gamma[:, 0:1] + attended_prior * prior_gamma[:, 1:2]
        return x_out, prior_out


class WaveletStage(nn.Module):
    """Official ``subnet``: one deraining stage over three wavelet scales.

    (B, n, H, W) image features and residue features -> (B, n, H, W). Scale 2 and 3 are reached
    by a Haar DWT (4n subband channels, convolved back to n), processed by three residual groups
    each, and brought back up through inverse DWTs and ``Fuse`` blocks.
    """

    def __init__(self, n_feats: int, n_blocks: int):
        super().__init__()
        n = n_feats
        self.DWT = HaarDWT()
        self.IDWT = HaarIDWT()
        self.DWT_2 = ReflectConvReLU(n * 4, n, 3, 1)
        self.DWT_3 = ReflectConvReLU(n * 4, n, 3, 1)
        self.IDWT_2 = ReflectConvReLU(n, n * 4, 3, 1)
        self.IDWT_3 = ReflectConvReLU(n, n * 4, 3, 1)
        self.prior = PriorGuidance(n)
        self.fuse_res = ReflectConvReLU(n * 2, n, 3, 1)
        for scale in (1, 2, 3):
            for column in (1, 2, 3):
                setattr(self, f"branch{scale}_{column}", ResidualGroup(n, n_blocks))
        # Layers the official model builds but its forward never uses; kept for the checkpoint keys.
        self.branch1_1_d = ReflectConvReLU(n, n, 3, 2)
        self.branch1_2_d = ReflectConvReLU(n, n, 3, 2)
        self.down2 = ReflectConvReLU(n, n, 3, 2)
        self.branch2_1_u = UpsampleTo(n, n, 3, 2)
        self.branch2_1_d = ReflectConvReLU(n, n, 3, 2)
        self.branch2_2_u = UpsampleTo(n, n, 3, 2)
        self.branch2_2_d = ReflectConvReLU(n, n, 3, 2)
        self.down3 = ReflectConvReLU(n, n, 3, 2)
        self.branch3_1_u = UpsampleTo(n, n, 3, 2)
        self.branch3_2_u = UpsampleTo(n, n, 3, 2)
        self.fuse12 = Fuse(n)
        self.fuse23 = Fuse(n)
        self.checkpoint_groups = False

    def _to_subband_channels(self, x: torch.Tensor) -> torch.Tensor:
        """DWT, then (LH, HL, HH, LL) concatenated along channels: (B, n, H, W) -> (B, 4n, H', W')."""
        low, highs = self.DWT(x)
        return torch.cat((*highs.unbind(2), low), dim=1)

    def _from_subband_channels(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 4n, h, w) read as n groups of (LL, LH, HL, HH), inverse DWT -> (B, n, 2h, 2w).

        This grouping differs from ``_to_subband_channels``' layout; the official model does the
        same, and the convolutions in between learn whatever layout they are given.
        """
        batch, channels, height, width = x.shape
        grouped = x.reshape(batch, channels // 4, 4, height, width)
        return self.IDWT(grouped[:, :, 0], grouped[:, :, 1:])

    def _encode(self, x: torch.Tensor,
                residue_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Prior guidance, then the three scales: (B, n, H, W), (B, n, H/2, W/2), (B, n, H/4, W/4)."""
        x, residue_features = self.prior(x, residue_features)
        scale1 = self.fuse_res(torch.cat((x, residue_features), dim=1))
        scale2 = self.DWT_2(self._to_subband_channels(scale1))
        scale3 = self.DWT_3(self._to_subband_channels(scale2))
        return scale1, scale2, scale3

    def _decode(self, scale1: torch.Tensor, scale2: torch.Tensor, scale3: torch.Tensor) -> torch.Tensor:
        """Inverse DWTs and fusion back to the finest scale: (B, n, H, W)."""
        scale2 = self.fuse23(self._from_subband_channels(self.IDWT_3(scale3)), scale2)
        return self.fuse12(self._from_subband_channels(self.IDWT_2(scale2)), scale1)

    def forward(self, x: torch.Tensor, residue_features: torch.Tensor) -> torch.Tensor:
        segmented = self.checkpoint_groups  # each piece below recomputed on its own in backward
        scale1, scale2, scale3 = run_maybe_checkpointed(self._encode, segmented, x, residue_features)
        for column in (1, 2, 3):
            scale1 = run_maybe_checkpointed(getattr(self, f"branch1_{column}"), segmented, scale1)
            scale2 = run_maybe_checkpointed(getattr(self, f"branch2_{column}"), segmented, scale2)
            scale3 = run_maybe_checkpointed(getattr(self, f"branch3_{column}"), segmented, scale3)
        return run_maybe_checkpointed(self._decode, segmented, scale1, scale2, scale3)


# ----------------------------------------------------------------------------------------------
# The network


class SPDNet(nn.Module):
    """Three wavelet stages guided by the residue channel prior, each refining the previous output.

    forward: images (B, 3, H, W) in 0-255 -> (out3, out2, out1), each (B, 3, H, W) in the same range
    (not clamped); out3 is the final derained image. Any H, W >= 4 work (odd sizes included).
    """

    def __init__(self, n_feats: int = 32, n_resblocks: int = 3, gradient_checkpointing: bool = False):
        super().__init__()
        if n_feats < 2 or n_feats % 2:
            raise SettingError(f"n_feats must be an even number >= 2, got {n_feats}")
        n = n_feats
        self.n_feats, self.n_resblocks = n_feats, n_resblocks
        self.conv_init1 = ReflectConvReLU(3, n // 2, 3, 1)
        self.conv_init2 = ReflectConvReLU(n // 2, n, 3, 1)
        for stage in (1, 2, 3):
            setattr(self, f"res_extra{stage}", ResidueEncoder(n, n_resblocks))
            setattr(self, f"sub{stage}", WaveletStage(n, n_resblocks))
        self.ag1 = ReflectConvReLU(n * 2, n, 3, 1)
        self.ag2 = ReflectConvReLU(n * 3, n, 3, 1)
        self.ag2_en = ReflectConvReLU(n * 2, n, 3, 1)
        self.ag_en = ReflectConvReLU(n * 3, n, 3, 1)
        self.output1 = nn.Conv2d(n, 3, 3, 1, padding=1)
        self.output2 = nn.Conv2d(n, 3, 3, 1, padding=1)
        self.output3 = nn.Conv2d(n, 3, 3, 1, padding=1)
        self.gradient_checkpointing = gradient_checkpointing

    @property
    def gradient_checkpointing(self) -> bool:
        return self._gradient_checkpointing

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, enabled: bool) -> None:
        # Two nested levels: each stage keeps only its inputs during forward, and while a stage is
        # recomputed in backward its residual groups and encode / decode pieces are recomputed once
        # more, so one stage's boundary tensors and one piece's activations are alive at a time.
        self._gradient_checkpointing = bool(enabled)
        for stage in (1, 2, 3):
            getattr(self, f"res_extra{stage}").checkpoint_groups = bool(enabled)
            getattr(self, f"sub{stage}").checkpoint_groups = bool(enabled)

    def _wavelet_stage(self, stage: int, features: torch.Tensor, previous_output: torch.Tensor) -> torch.Tensor:
        residue = residue_channel(previous_output).expand(-1, 3, -1, -1)
        return getattr(self, f"sub{stage}")(features, getattr(self, f"res_extra{stage}")(residue))

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_init2(self.conv_init1(x))

    def _stage1(self, x_init: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x1 = self._wavelet_stage(1, x_init, x)
        return x1, self.output1(x1)

    def _stage2(self, x_init: torch.Tensor, x1: torch.Tensor, out1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x2 = self._wavelet_stage(2, self.ag1(torch.cat((x1, x_init), dim=1)), out1)
        return x2, self.output2(self.ag2_en(torch.cat((x2, x1), dim=1)))

    def _stage3(self, x_init: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor, out2: torch.Tensor) -> torch.Tensor:
        x3 = self._wavelet_stage(3, self.ag2(torch.cat((x2, x1, x_init), dim=1)), out2)
        return self.output3(self.ag_en(torch.cat((x3, x2, x1), dim=1)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # With checkpointing, only the tensors passed between these four calls stay alive through
        # the forward pass; each stage (its 64-96-channel concatenations included) is recomputed
        # in backward, and inside it each residual group and encode/decode piece once more.
        segmented = self._gradient_checkpointing
        x_init = run_maybe_checkpointed(self._stem, segmented, x)
        x1, out1 = run_maybe_checkpointed(self._stage1, segmented, x_init, x)
        x2, out2 = run_maybe_checkpointed(self._stage2, segmented, x_init, x1, out1)
        out3 = run_maybe_checkpointed(self._stage3, segmented, x_init, x1, x2, out2)
        return out3, out2, out1


# ----------------------------------------------------------------------------------------------
# Loading weights


class SPDNetCheckpointError(UserError, ValueError):
    """A checkpoint that does not fit the model: names the missing, unexpected or mis-shaped keys."""


_WAVELET_SUFFIXES = tuple(
    f"{module}.{kind}_{direction}"
    for module, kinds in (("DWT", ("h0", "h1")), ("IDWT", ("g0", "g1")))
    for kind in kinds
    for direction in WAVELET_BUFFER_SHAPES
)


def _is_wavelet_buffer(key: str) -> bool:
    return key.endswith(_WAVELET_SUFFIXES)


def _extract_state_dict(source) -> tuple[Mapping[str, torch.Tensor], str]:
    """The SPDNet state dict inside a path or dict (official, DataParallel, nested, or ours)."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        source, name = load_weights_file(path, "SPDNet weights"), path
    else:
        name = "the given state dict"
    if not isinstance(source, Mapping):
        raise SPDNetCheckpointError(f"{name} holds a {type(source).__name__}, not a state dict")
    for key in ("spdnet", "state_dict", "model"):
        if key in source and isinstance(source[key], Mapping):
            source = source[key]
            break
    state_dict = OrderedDict()
    for key, value in source.items():
        if not isinstance(value, torch.Tensor):
            raise SPDNetCheckpointError(f"{name}: entry {key!r} is a {type(value).__name__}, not a tensor")
        state_dict[key[len("module."):] if key.startswith("module.") else key] = value
    return state_dict, name


def _listing(keys, limit: int = 8) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return f"{len(keys)} ({shown}{', ...' if len(keys) > limit else ''})"


def load_spdnet_weights(model: SPDNet, source) -> SPDNet:
    """Load official or our own SPDNet weights into ``model``; returns the model.

    Args:
        model: an SPDNet whose size matches the weights.
        source: a file path (loaded with ``weights_only=True``) or a dict: a plain state dict, one
            whose keys carry DataParallel's ``module.`` prefix, or one nested under ``'spdnet'``,
            ``'state_dict'`` or ``'model'`` (our checkpoints and spdnet_adapted.pt).

    Every learned tensor must be present with its shape. Wavelet filter buffers, when present
    (official checkpoints have them), must be Haar filters; when absent, the model keeps its own.

    Raises:
        FileNotFoundError: the path does not exist.
        SPDNetCheckpointError: missing, unexpected or mis-shaped keys, or non-Haar wavelet filters.
    """
    state_dict, name = _extract_state_dict(source)
    expected = model.state_dict()
    learned = {key for key in expected if not _is_wavelet_buffer(key)}
    missing = learned - state_dict.keys()
    unexpected = state_dict.keys() - expected.keys()
    mis_shaped = [
        f"{key} {tuple(state_dict[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in state_dict.keys() & expected.keys()
        if state_dict[key].shape != expected[key].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    if mis_shaped:
        problems.append(f"mis-shaped keys: {_listing(mis_shaped)}")
    if problems:
        raise SPDNetCheckpointError(
            f"{name} does not fit SPDNet(n_feats={model.n_feats}, n_resblocks={model.n_resblocks}): "
            + "; ".join(problems)
        )
    for key in state_dict:
        if _is_wavelet_buffer(key):
            reference = expected[key].to(torch.float64)
            if not torch.allclose(state_dict[key].to(torch.float64), reference, rtol=0, atol=1e-6):
                raise SPDNetCheckpointError(
                    f"{name}: wavelet filter {key} = {state_dict[key].flatten().tolist()} is not the Haar filter "
                    f"{reference.flatten().tolist()}; this SPDNet implements the Haar wavelet only"
                )
    with torch.no_grad():
        for key, tensor in expected.items():
            if key in state_dict and not _is_wavelet_buffer(key):
                tensor.copy_(state_dict[key])
    return model
