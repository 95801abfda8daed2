"""Batched tensor augmentations (CPU or GPU), each switchable.

SimCLR's views (:func:`augment_batch`,
:func:`two_views`) and fine-tuning's light one (:func:`light_augment`).

SimCLR (the KSN 2025 study's list plus vertical flip, optional grayscale/blur): random resized crop, flips,
any-angle rotation (corners filled by reflection, no black corners to use as a shortcut), colour jitter, grayscale,
gaussian blur, HED stain jitter, CLAHE (OpenCV on uint8, in the data loader: :func:`apply_clahe`), resize. Crop,
flips, rotation and resize are ONE affine transform per image applied by a single ``grid_sample``. Inputs are uint8
NHWC batches already resized to about ``image_size`` by the cache, so the crop only magnifies.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from glomlib.core import runtime
from glomlib.models.backbones import IMAGENET_MEAN, IMAGENET_STD

FILL_MODES = ("reflection", "border", "zeros")


@dataclasses.dataclass
class AugmentParams:
    """Switches and strengths of every augmentation. Probability 0 switches one off."""

    image_size: int = 96
    crop_p: float = 1.0  # probability of a random resized crop (else the whole image)
    crop_scale_min: float = 0.2  # smallest crop, as a fraction of the image area
    crop_scale_max: float = 1.0
    crop_ratio_min: float = 3 / 4
    crop_ratio_max: float = 4 / 3
    hflip_p: float = 0.5
    vflip_p: float = 0.5
    rotate_p: float = 1.0
    rotate_degrees: float = 180.0  # any angle
    rotate_fill: str = "reflection"  # "reflection" | "border" | "zeros"
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    grayscale_p: float = 0.0
    blur_p: float = 0.0
    blur_sigma_min: float = 0.1
    blur_sigma_max: float = 2.0
    clahe_p: float = 0.0
    clahe_clip: float = 2.0
    clahe_grid: int = 8
    stain_augment: float = 0.0  # HED (optical-density) stain jitter strength, see hed_jitter; 0 = off

    def validate(self) -> None:
        for name in ("crop_p", "hflip_p", "vflip_p", "rotate_p", "jitter_p", "grayscale_p", "blur_p", "clahe_p"):
            v = getattr(self, name)
            if not 0.0 <= float(v) <= 1.0:
                raise ValueError(f"Augmentation parameter {name}={v} must be a probability in [0, 1].")
        if not 0 < self.crop_scale_min <= self.crop_scale_max <= 1.0:
            raise ValueError(
                f"Need 0 < crop_scale_min ({self.crop_scale_min}) <= crop_scale_max ({self.crop_scale_max}) <= 1."
            )
        if self.rotate_fill not in FILL_MODES:
            raise ValueError(f"rotate_fill={self.rotate_fill!r}; choose one of {list(FILL_MODES)}.")
        if self.image_size < 8:
            raise ValueError(f"image_size={self.image_size} is too small (>= 8).")
        for name in ("brightness", "contrast", "saturation"):
            if getattr(self, name) < 0:
                raise ValueError(f"Augmentation parameter {name} must be >= 0.")
        if not 0 <= self.hue <= 0.5:
            raise ValueError(f"hue={self.hue} must be in [0, 0.5].")
        if not 0 <= self.stain_augment < 1:
            raise ValueError(f"stain_augment={self.stain_augment} must be in [0, 1) (0 = off, 0.05 typical).")

    @classmethod
    def from_config(cls, cfg: Any, **overrides: Any) -> AugmentParams:
        """Pick the fields of this class from any object/dict with the same names (e.g. an SSLConfig)."""
        src = cfg if isinstance(cfg, dict) else cfg.__dict__
        kw = {f.name: src[f.name] for f in dataclasses.fields(cls) if f.name in src}
        kw.update(overrides)
        p = cls(**kw)
        p.validate()
        return p


# --------------------------------------------------------------------------------------------- CLAHE
def clahe_image(img: np.ndarray, clip: float = 2.0, grid: int = 8) -> np.ndarray:
    """CLAHE on the L channel (CIE Lab) of one uint8 RGB image; returns a new uint8 RGB image."""
    import cv2

    lab = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2LAB)
    cl = cv2.createCLAHE(clipLimit=float(clip), tileGridSize=(int(grid), int(grid)))
    lab[..., 0] = cl.apply(np.ascontiguousarray(lab[..., 0]))
    return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)


def apply_clahe(
    images: np.ndarray, p: float, clip: float = 2.0, grid: int = 8, rng: np.random.Generator | None = None
) -> np.ndarray:
    """CLAHE on each uint8 NHWC image with probability ``p`` (a copy; the input is never modified)."""
    out = np.array(images, dtype=np.uint8, copy=True)
    if p <= 0:
        return out
    rng = rng or np.random.default_rng()
    for i in np.nonzero(rng.random(len(out)) < p)[0]:
        out[i] = clahe_image(out[i], clip, grid)
    return out


# ------------------------------------------------------------------------------------ batched on tensors
def _uniform(n: int, lo: float, hi: float, g: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=g, device="cpu").to(device) * (hi - lo) + lo


def _bernoulli(n: int, p: float, g: torch.Generator, device) -> torch.Tensor:
    return (torch.rand(n, generator=g, device="cpu") < p).to(device)


def affine_matrices(n: int, params: AugmentParams, g: torch.Generator, device="cpu") -> torch.Tensor:
    """(n, 2, 3) matrices mapping output to input normalised coordinates: crop ∘ rotation ∘ flips."""
    p = params
    # random resized crop: area fraction s, aspect ratio r (log-uniform) -> width/height fractions
    s = _uniform(n, p.crop_scale_min, p.crop_scale_max, g, "cpu")
    logr = _uniform(n, math.log(p.crop_ratio_min), math.log(p.crop_ratio_max), g, "cpu")
    r = torch.exp(logr)
    w = torch.sqrt(s * r).clamp(max=1.0)
    h = torch.sqrt(s / r).clamp(max=1.0)
    do_crop = _bernoulli(n, p.crop_p, g, "cpu")
    w = torch.where(do_crop, w, torch.ones_like(w))
    h = torch.where(do_crop, h, torch.ones_like(h))
    cx = (torch.rand(n, generator=g) * 2 - 1) * (1 - w)
    cy = (torch.rand(n, generator=g) * 2 - 1) * (1 - h)
    # rotation
    ang = _uniform(n, -p.rotate_degrees, p.rotate_degrees, g, "cpu") * math.pi / 180
    ang = torch.where(_bernoulli(n, p.rotate_p, g, "cpu"), ang, torch.zeros_like(ang))
    cos, sin = torch.cos(ang), torch.sin(ang)
    # flips
    fx = torch.where(_bernoulli(n, p.hflip_p, g, "cpu"), -1.0, 1.0)
    fy = torch.where(_bernoulli(n, p.vflip_p, g, "cpu"), -1.0, 1.0)
    # p_in = c + S @ R @ Fl @ p_out
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = w * cos * fx
    theta[:, 0, 1] = -w * sin * fy
    theta[:, 1, 0] = h * sin * fx
    theta[:, 1, 1] = h * cos * fy
    theta[:, 0, 2] = cx
    theta[:, 1, 2] = cy
    return theta.to(device)


def geometric(x: torch.Tensor, params: AugmentParams, g: torch.Generator) -> torch.Tensor:
    """Crop + rotation + flips + resize of a float NCHW batch in one ``grid_sample``."""
    n = x.shape[0]
    theta = affine_matrices(n, params, g, x.device).to(x.dtype)
    size = params.image_size
    grid = F.affine_grid(theta, [n, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=params.rotate_fill, align_corners=False)


_GRAY = (0.299, 0.587, 0.114)
# RGB <-> YIQ, for hue rotation as a linear map
_RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ2RGB = torch.linalg.inv(_RGB2YIQ)


def _gray(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor(_GRAY, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def color(x: torch.Tensor, params: AugmentParams, g: torch.Generator) -> torch.Tensor:
    """Colour jitter (brightness, contrast, saturation, hue) and grayscale on a float NCHW batch in [0, 1]."""
    p = params
    n, dev, dt = x.shape[0], x.device, x.dtype
    on = _bernoulli(n, p.jitter_p, g, dev).to(dt).view(n, 1, 1, 1)
    if p.jitter_p > 0:
        if p.brightness > 0:
            b = _uniform(n, max(0.0, 1 - p.brightness), 1 + p.brightness, g, dev).to(dt).view(n, 1, 1, 1)
            x = x * (on * b + (1 - on))
        if p.contrast > 0:
            c = _uniform(n, max(0.0, 1 - p.contrast), 1 + p.contrast, g, dev).to(dt).view(n, 1, 1, 1)
            c = on * c + (1 - on)
            m = _gray(x).mean(dim=(2, 3), keepdim=True)
            x = ((x - m) * c + m).clamp(0, 1)
        if p.saturation > 0:
            s = _uniform(n, max(0.0, 1 - p.saturation), 1 + p.saturation, g, dev).to(dt).view(n, 1, 1, 1)
            s = on * s + (1 - on)
            gr = _gray(x)
            x = ((x - gr) * s + gr).clamp(0, 1)
        if p.hue > 0:
            ang = _uniform(n, -p.hue, p.hue, g, dev) * 2 * math.pi * on.view(n)
            cos, sin = torch.cos(ang), torch.sin(ang)
            rot = torch.zeros(n, 3, 3, device=dev)
            rot[:, 0, 0] = 1
            rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
            m = _YIQ2RGB.to(dev) @ rot @ _RGB2YIQ.to(dev)
            x = torch.einsum("nij,njhw->nihw", m.to(dt), x).clamp(0, 1)
    if p.grayscale_p > 0:
        gmask = _bernoulli(n, p.grayscale_p, g, dev).to(dt).view(n, 1, 1, 1)
        x = gmask * _gray(x).expand_as(x) + (1 - gmask) * x
    return x


def blur(x: torch.Tensor, params: AugmentParams, g: torch.Generator) -> torch.Tensor:
    """Gaussian blur with per-image sigma (probability ``blur_p``), separable, one grouped conv per axis."""
    p = params
    if p.blur_p <= 0:
        return x
    n, c, hh, ww = x.shape
    sig = _uniform(n, p.blur_sigma_min, p.blur_sigma_max, g, x.device) * (p.image_size / 224)
    on = _bernoulli(n, p.blur_p, g, x.device)
    sig = torch.where(on, sig, torch.full_like(sig, 1e-3))
    radius = max(1, int(math.ceil(3 * p.blur_sigma_max * p.image_size / 224)))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (t.view(1, -1) / sig.view(-1, 1).to(x.dtype)) ** 2)
    k = k / k.sum(1, keepdim=True)
    k = k.repeat_interleave(c, 0)  # (n*c, K)
    y = x.reshape(1, n * c, hh, ww)
    y = F.pad(y, (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, k.view(n * c, 1, 1, -1), groups=n * c)
    y = F.conv2d(y, k.view(n * c, 1, -1, 1), groups=n * c)
    return y.view(n, c, hh, ww)


def to_float_nchw(batch: Any, device: str | torch.device | None = None) -> torch.Tensor:
    """uint8 NHWC (numpy or tensor) -> float32 NCHW in [0, 1] on ``device``."""
    t = torch.from_numpy(np.ascontiguousarray(batch)) if isinstance(batch, np.ndarray) else batch
    if device is not None:
        t = t.to(device, non_blocking=True)
    if t.dtype == torch.uint8:
        t = t.permute(0, 3, 1, 2).float().div_(255.0)
    return t


def augment_batch(
    batch, params: AugmentParams, g: torch.Generator, *, device=None, normalize=True, channels_last=False
):
    """One augmented view of a uint8 NHWC batch -> float NCHW (ImageNet-normalised when ``normalize``). CLAHE
    needs OpenCV on uint8: :func:`apply_clahe` the batch first (SimCLR's data loader does)."""
    x = to_float_nchw(batch, device)
    x = geometric(x, params, g)
    x = color(x, params, g)
    x = hed_jitter(x, float(params.stain_augment), g)
    x = blur(x, params, g)
    if normalize:
        x = runtime.normalize(x, IMAGENET_MEAN, IMAGENET_STD)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def two_views(batch, params: AugmentParams, g=None, *, rng=None, device=None, normalize=True, channels_last=False):
    """Two independently augmented views of a uint8 NHWC batch (CLAHE included, with ``clahe_p``)."""
    g = g if g is not None else torch.Generator().manual_seed(int(np.random.SeedSequence().entropy % 2**63))
    rng = rng or np.random.default_rng()
    b = np.asarray(batch)
    v = []
    for _ in range(2):
        src = apply_clahe(b, params.clahe_p, params.clahe_clip, params.clahe_grid, rng) if params.clahe_p > 0 else b
        v.append(augment_batch(src, params, g, device=device, normalize=normalize, channels_last=channels_last))
    return v[0], v[1]


def light_augment(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Fine-tuning's light augmentation of a float NCHW batch in [0, 1]: flips, 90° rotations and
    brightness/contrast/saturation within ±15 %, always on (no crop: a classifier sees the whole patch)."""
    n, g = x.shape[0], generator
    flip_h, flip_v = torch.rand(n, generator=g) < 0.5, torch.rand(n, generator=g) < 0.5
    rot = torch.randint(0, 4, (n,), generator=g)
    x = torch.where(flip_h.view(-1, 1, 1, 1), x.flip(3), x)
    x = torch.where(flip_v.view(-1, 1, 1, 1), x.flip(2), x)
    if x.shape[2] == x.shape[3]:
        out = x.clone()
        for k in (1, 2, 3):
            if (rot == k).any():
                out[rot == k] = torch.rot90(x[rot == k], k, dims=(2, 3))
        x = out
    b, c, s = (1 + (torch.rand(n, 1, 1, 1, generator=g) - 0.5) * 0.3 for _ in range(3))
    x = x * b
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * c + mean
    grey = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
    return ((x - grey) * s + grey).clamp_(0, 1)


# ------------------------------------------------------------------------------ stain (HED) augmentation
#: RGB <- HED stain matrix of Ruifrok & Johnston (2001), rows haematoxylin, eosin, DAB (scikit-image's
#: ``rgb_from_hed``). PAS is not H&E, but the optical-density decomposition still separates the dominant stains.
RGB_FROM_HED = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])


def hed_jitter(x: torch.Tensor, sigma: float, g: torch.Generator | None = None) -> torch.Tensor:
    """Stain augmentation in optical-density (HED) space (Tellez et al. 2018) on a float NCHW batch in [0, 1].

    Each image's stain concentrations are scaled by ``U(1 - sigma, 1 + sigma)`` and shifted by
    ``U(-sigma, sigma)`` per channel, then mapped back to RGB. ``sigma = 0`` returns ``x`` unchanged.
    """
    if sigma <= 0:
        return x
    n = x.shape[0]
    m = RGB_FROM_HED.to(x.device, x.dtype)
    m = m / m.norm(dim=1, keepdim=True)
    inv = torch.linalg.inv(m)
    od = -torch.log(x.clamp(1.0 / 255, 1.0))  # N, 3, H, W
    hed = torch.einsum("nchw,cd->ndhw", od, inv)  # stain concentrations
    dev = g.device if g is not None else x.device  # draw where the generator lives (CPU or CUDA)
    alpha = 1 + (torch.rand(n, 3, 1, 1, generator=g, device=dev) * 2 - 1).to(x.device, x.dtype) * sigma
    beta = (torch.rand(n, 3, 1, 1, generator=g, device=dev) * 2 - 1).to(x.device, x.dtype) * sigma
    od2 = torch.einsum("ndhw,dc->nchw", hed * alpha + beta, m)
    return torch.exp(-od2).clamp_(0, 1)
