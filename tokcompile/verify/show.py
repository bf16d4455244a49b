"""``tokcompile show``: which patches each reduction layer of a bundle kept or merged, on one image.

The maps come from the bundle's own outputs (``runner.run``), i.e. from the token ops the bundle
executes, never from a re-implementation:

* ``kept_ids_<block>`` [B, k] int64: original token ids kept by that layer (ids < P are prefix
  tokens; -1 is EViT's fused token or, in staged bundles, bucket padding: never a patch). Drawn
  as the EViT paper (Liang et al., ICLR'22) draws attentive tokens: kept patches in colour, the
  others greyed, labelled with what the method did to them (its ``Method.legend``): EViT fuses them into
  the layer's extra token (tinted and hatched) or prunes them; ATS drops the tokens its sampling
  did not pick; A-ViT halts tokens; all three for good (dark grey in later layers). AdaViT skips
  a token in one block only: it is computed again in the next, so its panels are independent.
* ToMe, ``merge_map_<block>`` [B, N0] int64: for every original token its position in that
  layer's output. Drawn as in the ToMe paper (Bolya et al., ICLR'23) and its ``tome/vis.py``:
  every group of two or more merged patches is filled with its mean colour and outlined in a
  colour of its own; a patch still alone is left as the image.

Geometry: the manifest's ``model.grid`` (rows, columns), ``model.patch_size`` and
``model.num_prefix_tokens`` P. Prefix tokens are not patches; original token t ≥ P is patch
t − P in raster order.
"""

from __future__ import annotations

import colorsys
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..errors import TokcompileError
from ..methods import METHODS
from ..methods.legend import Legend
from ..outputs import replace_atomically
from ..passes.names import KEPT_IDS, MERGE_MAP, is_kind, parse_output_name
from ..runtime.caveats import caveats

logger = logging.getLogger(__name__)

# patch states of kept_ids_* layers
KEPT, FUSED, PRUNED, EARLIER = 0, 1, 2, 3


def state_labels(legend: Legend) -> dict[int, str]:
    """Patch state → its label under a method's legend (only the states the method can produce)."""
    labels = {KEPT: legend.kept}
    if legend.fused is not None:
        labels[FUSED] = legend.fused
    labels[PRUNED] = legend.dropped
    if legend.earlier is not None:
        labels[EARLIER] = legend.earlier
    return labels


def method_legend(method: str) -> Legend:
    """The legend a method declares (``Method.legend``); the generic wording for any other."""
    known = METHODS.get(method)
    return known.legend if known is not None and known.legend is not None else Legend()


FUSED_TINT = np.array([0.62, 0.74, 1.0])  # grey × this: a cool blue-grey, distinct from plain grey
HATCH_PERIOD = 6  # px between diagonal hatch lines on fused patches
MAX_COLUMNS = 6  # panels per row of the figure
PRUNED_GREY, EARLIER_GREY, FUSED_GREY = 0.75, 0.38, 0.6  # grey levels (image luminance kept faintly)


def evit_patch_states(
    kept_ids: Sequence[np.ndarray], num_patches: int, num_prefix: int, fuse: bool = True, cumulative: bool = True
) -> list[np.ndarray]:
    """Per reduction layer (in order), the state of every patch: [num_patches] int.

    kept_ids: per layer, the original token ids it kept ([k] int; ids < P and -1, a fused token
    or bucket padding, are not patches). A patch present in a layer's input and kept is KEPT;
    present but not kept is FUSED (``fuse``) or PRUNED; absent from the input (dropped by an
    earlier layer, only when drops are ``cumulative``) is EARLIER.
    """
    present = np.ones(num_patches, dtype=bool)
    states = []
    for ids in kept_ids:
        ids = np.asarray(ids).reshape(-1)
        patches = ids[ids >= num_prefix] - num_prefix
        if patches.size and patches.max() >= num_patches:
            raise TokcompileError(f"kept token id {patches.max() + num_prefix} exceeds the {num_patches} patches")
        kept = np.zeros(num_patches, dtype=bool)
        kept[patches] = True
        state = np.full(num_patches, EARLIER, dtype=np.int64)
        state[present & kept] = KEPT
        state[present & ~kept] = FUSED if fuse else PRUNED
        states.append(state)
        if cumulative:
            present &= kept
    return states


def merge_groups(merge_map: np.ndarray, num_prefix: int, num_patches: int) -> np.ndarray:
    """merge_map: [N0] output position of each original token → [num_patches] group id per patch.

    Patches with the same output position were merged into one token; group ids are those
    positions.
    """
    merge_map = np.asarray(merge_map).reshape(-1)
    if merge_map.shape[0] != num_prefix + num_patches:
        raise TokcompileError(
            f"merge map has {merge_map.shape[0]} entries; expected {num_prefix} prefix + {num_patches} patches"
        )
    return merge_map[num_prefix:].astype(np.int64)


def _patch_pixels(values: np.ndarray, grid: tuple[int, int], patch: tuple[int, int]) -> np.ndarray:
    """[rows·cols] per-patch values → [rows·ph, cols·pw] per-pixel values (raster order)."""
    return np.kron(values.reshape(grid), np.ones(patch, dtype=values.dtype))


def _grey(image: np.ndarray, level: float, contrast: float = 0.25) -> np.ndarray:
    """Desaturated image around ``level``, keeping a little texture: [h, w] luminance."""
    lum = image @ np.array([0.299, 0.587, 0.114])
    return np.clip(level + contrast * (lum - 0.5), 0.0, 1.0)


def paint_patch_states(
    image: np.ndarray, states: np.ndarray, grid: tuple[int, int], patch: tuple[int, int]
) -> np.ndarray:
    """image: [H, W, 3] float in [0, 1]; states: [rows·cols] → painted copy (same shape).

    KEPT: unchanged; PRUNED: light grey; EARLIER: dark grey (R = G = B for both); FUSED: grey
    tinted blue-grey with diagonal hatching.
    """
    out = image.copy()
    h, w = grid[0] * patch[0], grid[1] * patch[1]
    region = out[:h, :w]
    state_px = _patch_pixels(np.asarray(states), grid, patch)
    for state, level in ((PRUNED, PRUNED_GREY), (EARLIER, EARLIER_GREY)):
        mask = state_px == state
        region[mask] = _grey(region, level)[mask][:, None]
    mask = state_px == FUSED
    if mask.any():
        tinted = _grey(region, FUSED_GREY)[..., None] * FUSED_TINT
        yy, xx = np.mgrid[0:h, 0:w]
        hatch = ((xx + yy) % HATCH_PERIOD) == 0
        tinted[hatch] *= 0.55
        region[mask] = tinted[mask]
    return out


def group_colors(count: int) -> np.ndarray:
    """``count`` well-separated saturated colours ([count, 3] in [0, 1]), golden-ratio hues."""
    hues = (np.arange(count) * 0.6180339887) % 1.0
    return np.array([colorsys.hsv_to_rgb(h, 0.85, 0.95) for h in hues]).reshape(count, 3)


def paint_merge_groups(
    image: np.ndarray, groups: np.ndarray, grid: tuple[int, int], patch: tuple[int, int], border: Optional[int] = None
) -> np.ndarray:
    """image: [H, W, 3] in [0, 1]; groups: [rows·cols] group id per patch → painted copy.

    A group of ≥ 2 patches is filled with the mean colour of its pixels and outlined (``border``
    px inside its edge, default patch/8) in its own colour; a singleton patch is left as is.
    """
    out = image.copy()
    h, w = grid[0] * patch[0], grid[1] * patch[1]
    region = out[:h, :w]
    groups = np.asarray(groups).reshape(-1)
    ids, counts = np.unique(groups, return_counts=True)
    merged = ids[counts >= 2]
    if merged.size == 0:
        return out
    label = _patch_pixels(groups, grid, patch)
    t = max(1, min(patch) // 8) if border is None else border
    # edge: a pixel within t px of a pixel of another group (or of the picture's edge)
    padded = np.pad(label, t, constant_values=np.iinfo(np.int64).min)
    edge = np.zeros((h, w), dtype=bool)
    for d in range(1, t + 1):
        for dy, dx in ((-d, 0), (d, 0), (0, -d), (0, d)):
            edge |= padded[t + dy : t + dy + h, t + dx : t + dx + w] != label
    colors = group_colors(len(merged))
    for color, gid in zip(colors, merged):
        mask = label == gid
        region[mask] = region[mask].mean(axis=0)
        region[mask & edge] = color
    return out


@dataclass
class ShowResult:
    output: Path
    panels: list[str] = field(default_factory=list)  # titles, original first
    caveats: list[str] = field(default_factory=list)  # written on the figure too
    title: str = ""
    legend: list[str] = field(default_factory=list)  # patch-state labels, as drawn


def _load_image(path: Path, preprocess: Any) -> np.ndarray:
    from ..data.images import read_image

    if not path.is_file():
        raise TokcompileError(f"image '{path}' does not exist")
    try:
        return read_image(path, [preprocess])[0][None]
    except Exception as exc:
        raise TokcompileError(
            f"cannot decode image '{path}' ({type(exc).__name__}); pass a JPEG/PNG/... file"
        ) from None


def output_path(output: Optional[Path | str], image: Path, bundle: Path) -> Path:
    """Where the figure goes: ``output``, or ``IMAGE-BUNDLE.png`` inside it when it is a folder
    (or in the current folder by default). Raises TokcompileError when its folder is missing or
    not writable, before anything runs."""
    name = f"{image.stem}-{bundle.name}.png"
    out = Path(output) if output is not None else Path(name)
    if out.is_dir():
        out = out / name
    folder = out.parent
    if not folder.is_dir():
        raise TokcompileError(f"-o '{out}': folder '{folder}' does not exist; create it or choose another -o")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise TokcompileError(f"-o '{out}': folder '{folder}' is not writable; choose another -o")
    return out


def denormalise(x: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """[3, H, W] normalised by timm's transform → [H, W, 3] float in [0, 1] for display."""
    img = x.transpose(1, 2, 0) * np.asarray(std) + np.asarray(mean)
    return np.clip(img, 0.0, 1.0)


def _block(name: str) -> int:
    block = parse_output_name(name)[1]
    return -1 if block is None else block


def show(bundle: Path | str, image: Path | str, output: Optional[Path | str] = None, dpi: int = 110) -> ShowResult:
    """Draw ``image`` (the model's preprocessed crop) and, per reduction layer, what it kept or merged.

    ``output``: a PNG path, or an existing folder to write ``IMAGE-BUNDLE.png`` into.
    """
    from ..data.images import preprocessing
    from ..runtime.runner import load

    directory, image = Path(bundle), Path(image)
    out = output_path(output, image, directory)
    runner = load(directory)
    m = runner.manifest
    geometry = m.model
    grid, patch = (geometry.grid[0], geometry.grid[1]), (geometry.patch_size[0], geometry.patch_size[1])
    prefix, patches = geometry.num_prefix_tokens, grid[0] * grid[1]
    preprocess = preprocessing(geometry.timm_name, geometry.input_shape)
    x = _load_image(image, preprocess)
    outputs = runner.run(x)
    names = sorted((n for n in outputs if is_kind(n, KEPT_IDS, MERGE_MAP)), key=_block)
    method = m.method.name
    if not names:
        raise TokcompileError(
            f"bundle '{directory}' (method {method}) has no kept_ids_*/merge_map_* outputs; nothing to show"
        )
    picture = denormalise(x[0], preprocess.mean, preprocess.std)
    legend = method_legend(method)
    fuse = legend.fuses(m.method.params)
    panels: list[tuple[str, np.ndarray]] = [(f"input ({picture.shape[1]}×{picture.shape[0]})", picture)]
    kept_names = [n for n in names if is_kind(n, KEPT_IDS)]
    kept_ids = [outputs[n][0] for n in kept_names]
    states = dict(zip(kept_names, evit_patch_states(kept_ids, patches, prefix, fuse, legend.cumulative)))
    used: set[int] = set()
    for name in names:
        block = _block(name)
        if name in states:
            state = states[name]
            kept = int((state == KEPT).sum())
            # -1 is EViT's fused token only there; in staged bundles it is bucket padding
            extra = " + fused token" if fuse and (outputs[name][0] == -1).any() else ""
            used.update(np.unique(state).tolist())
            panels.append(
                (
                    f"block {block}: {kept}/{patches} {legend.noun}{extra}",
                    paint_patch_states(picture, state, grid, patch),
                )
            )
        else:
            groups = merge_groups(outputs[name][0], prefix, patches)
            counts = np.unique(groups, return_counts=True)[1]
            tokens = np.unique(outputs[name][0]).size
            panels.append(
                (
                    f"block {block}: {tokens} tokens, {int((counts >= 2).sum())} merged groups",
                    paint_merge_groups(picture, groups, grid, patch),
                )
            )
    title = f"{geometry.name} · {method} · {image.name}"
    tags = caveats(m)
    if tags:
        title += f"\n{' and '.join(tags)}: these selections say nothing about the trained model"
    labels = {s: state_labels(legend)[s] for s in sorted(used)}
    _draw(panels, labels, title, out, dpi)
    logger.info("show: wrote %s (%d panels)", out, len(panels))
    return ShowResult(out, [name for name, _ in panels], tags, title, list(labels.values()))


def _draw(panels: list[tuple[str, np.ndarray]], states: dict[int, str], title: str, path: Path, dpi: int) -> None:
    """The figure, written to a temporary sibling of ``path`` and renamed (no half-written PNG).

    states: patch state → its legend label, for the states the panels use."""
    # Figure + Agg canvas directly: no pyplot, so no global backend or display is touched.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    n = len(panels)
    rows = -(-n // MAX_COLUMNS)
    cols = -(-n // rows)  # balanced rows: 7 panels → 4 + 3, 13 → 5 + 5 + 3
    legend_rows = 1 if states else 0
    fig = Figure(figsize=(3.0 * cols, 3.2 * rows + 0.3 + 0.35 * legend_rows), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    for i, (name, img) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(img, interpolation="nearest")
        ax.set_title(name, fontsize=8)
        ax.set_axis_off()
    fig.suptitle(title, fontsize=10)
    if states:
        swatch = np.full((1, 1, 3), 0.55)
        colours: dict[int, Any] = {
            KEPT: dict(facecolor="white", edgecolor="black"),
            FUSED: dict(facecolor=tuple(_grey(swatch, FUSED_GREY)[0, 0] * FUSED_TINT), edgecolor="0.2", hatch="///"),
            PRUNED: dict(facecolor=str(float(_grey(swatch, PRUNED_GREY)[0, 0])), edgecolor="0.2"),
            EARLIER: dict(facecolor=str(float(_grey(swatch, EARLIER_GREY)[0, 0])), edgecolor="0.2"),
        }
        handles = [
            Patch(label=f"{label} (image colours)" if s == KEPT else label, **colours[s]) for s, label in states.items()
        ]
        fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8, frameon=False)
    try:
        replace_atomically(path, lambda tmp: fig.savefig(tmp, format="png"))
    except OSError as exc:
        raise TokcompileError(f"cannot write '{path}' ({exc.strerror or exc}); choose another -o") from None
