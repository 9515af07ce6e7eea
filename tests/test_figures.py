import struct

import numpy as np
import pytest

from scaling.figures import isoflop_figure, power_law_figure
from scaling.laws import FitOptions, fit_laws, paper_law
from scaling.runs_table import RunPoint
from scaling.surface import PAPER_BUDGETS, SURFACES, synthetic_study


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def fit():
    rng = np.random.default_rng(0)
    points = synthetic_study(SURFACES["chinchilla"], PAPER_BUDGETS, rng,
                             offset=[0, 0, 0, 0, 0, 1.0])  # one refused budget
    points = [RunPoint(p.compute, p.params, p.loss, fid=30 * p.loss**2) for p in points]
    return fit_laws(points, FitOptions(draws=100, approach3=False))


def test_isoflop_figure(tmp_path, fit):
    path = isoflop_figure(fit, tmp_path / "figs" / "isoflop.png")
    assert path == tmp_path / "figs" / "isoflop.png"
    width, height = png_size(path)
    assert 600 <= width <= 2000 and 400 <= height <= 1500
    assert path.stat().st_size > 20_000


def test_power_law_figure_with_fid(tmp_path, fit):
    assert fit.fid is not None
    width, height = png_size(power_law_figure(fit, tmp_path / "laws.png"))
    assert 800 <= width <= 2000 and height >= 800  # 2 x 2 panels
    assert (tmp_path / "laws.png").stat().st_size > 30_000


def test_power_law_figure_of_the_paper_law(tmp_path):
    width, height = png_size(power_law_figure(paper_law(), tmp_path / "paper.png"))
    assert width > 800 and height > 800
    with pytest.raises(ValueError, match="no budgets"):
        isoflop_figure(paper_law(), tmp_path / "none.png")
