"""A smooth 2-D density drawn from a picture: one Gaussian per lit pixel."""

from __future__ import annotations

from importlib import resources

import torch
from torch import Tensor

from pyro_snf.targets.gmm import GaussianMixture


class ImageDensity(GaussianMixture):
    r"""The density of a grayscale picture, smoothed: an isotropic Gaussian mixture with one
    component per pixel of positive intensity, at the pixel's centre, weighted by the intensity,

    .. math:: p(x) = \sum_{ij} \frac{I_{ij}}{\sum I} \, N(x; c_{ij}, s^2 I_2),

    so ``log Z = 0`` and exact samples are available. Pixel ``(i, j)`` (row ``i`` from the top) sits at
    ``c_ij = pixel_size * (j - (W - 1) / 2, (H - 1) / 2 - i)``: the picture is centred at the origin,
    upright. With ``std`` about half a pixel the strokes are smooth and flat inside.

    :param image: ``(H, W)`` non-negative intensities (bool or float).
    :param pixel_size: side of a pixel in target units.
    :param std: component standard deviation; default ``0.5 * pixel_size``.

    Example::

        >>> target = ImageDensity(torch.tensor([[1.0, 0.0], [0.0, 3.0]]), pixel_size=2.0)
        >>> target.means.tolist(), target.weights.tolist()
        ([[-1.0, 1.0], [1.0, -1.0]], [0.25, 0.75])
    """

    def __init__(self, image: Tensor, pixel_size: float = 1.0, std: float | None = None) -> None:
        image = torch.as_tensor(image, dtype=torch.float64)
        if image.dim() != 2 or not bool((image >= 0).all()) or not image.sum() > 0:
            raise ValueError(f"image must be a 2-D array of non-negative intensities with some positive "
                             f"pixels, got shape {tuple(image.shape)}")
        height, width = image.shape
        rows, cols = torch.nonzero(image > 0, as_tuple=True)
        centres = torch.stack([cols - (width - 1) / 2, (height - 1) / 2 - rows], dim=-1).to(torch.float64)
        super().__init__(pixel_size * centres, 0.5 * pixel_size if std is None else std, image[rows, cols])
        self.image, self.pixel_size = image, float(pixel_size)


class SNFLetters(ImageDensity):
    """The letters "SNF" (DejaVu Sans Bold rasterised by matplotlib to 18 x 50 pixels, 462 lit,
    shipped as ``targets/data/snf_letters.txt``), 8 units wide and 2.9 high, centred at 0.

    Made once, offline: ``fig = plt.figure(figsize=(8, 3), dpi=10)``,
    ``fig.text(0.5, 0.5, "SNF", ha="center", va="center", fontsize=170, fontweight="bold")``, the
    red channel of the drawn canvas below 128 marks a lit pixel, cropped to the lit bounding box.

    Example::

        >>> target = SNFLetters()
        >>> target.num_modes, tuple(target.image.shape), target.log_Z
        (462, (18, 50), 0.0)
    """

    def __init__(self, pixel_size: float = 0.16, std: float | None = None) -> None:
        text = resources.files("pyro_snf.targets").joinpath("data/snf_letters.txt").read_text()
        image = torch.tensor([[ch == "#" for ch in line] for line in text.split()], dtype=torch.float64)
        super().__init__(image, pixel_size, std)
