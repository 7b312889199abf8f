"""The figures a person reads instead of a table: what they show must fit on them."""
import cv2
import numpy as np

from diffusion import figures


def test_the_folds_figure_shows_each_candidate_name_whole_below_the_dots(tmp_path, monkeypatch):
    # eval.crossval names a candidate by its runs' paths joined with " + ": often wider than the axes
    names = [f"candidate {c}: runs/tumor_seg_20261204 + wip/tumor_lever_all_last … wip/tumor_fold4_last + "
             f"runs/tumor_fold{{k}}_e450/average@uptake_fraction=0.3" for c in range(4)]
    rng = np.random.default_rng(0)
    per_fold = {n: [list(rng.uniform(0, 1, 30)) for _ in range(5)] for n in names}
    kept = []
    monkeypatch.setattr(figures.plt, "close", kept.append)  # keep the figure to measure it
    out = tmp_path / "crossval.png"
    figures.plot_folds(per_fold, out)
    fig = kept[0]
    ax = fig.axes[0]
    renderer = fig.canvas.get_renderer()
    box = (fig.legends or [ax.get_legend()])[0]
    legend = box.get_window_extent(renderer)
    dots = ax.get_window_extent(renderer)
    height, width = cv2.imread(str(out)).shape[:2]
    scale = 100 / fig.dpi  # saved at dpi 100
    assert [t.get_text() for t in box.get_texts()] == names
    assert legend.y1 <= min(dots.y0, ax.xaxis.label.get_window_extent(renderer).y0)  # below the axes and their label
    assert width >= legend.width * scale and height >= (dots.height + legend.height) * scale  # nothing cut off
