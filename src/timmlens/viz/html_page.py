"""A small, self-contained interactive HTML page of explanations; nothing here runs a model.

The page needs no library and no network: a few kilobytes of plain JavaScript draw on
a ``<canvas>``. It shows the original photo with a heatmap over it, one button per
method, an opacity slider, a colormap menu, zoom (wheel) and pan (drag; double-click
resets), the value under the pointer, a labelled colour bar, the part of the photo the
preprocessing crop cut away hatched, and for ViTs a second view with a slider over the
attention blocks.

Why not plotly: plotly.js alone is 4.8 MB, so every page was 5-7 MB. Here the photo is
a JPEG of at most ``max_image_side`` pixels, and each map a greyscale PNG of at most
``max_side`` cells per side whose 8-bit levels span the map's own range (the colour bar
and the hover values are mapped back from them): pages of a few hundred kilobytes.

Labels reach the page only as escaped HTML or as JSON set with ``textContent``, so a
class called ``<script>alert(1)</script>`` is shown, never run.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..data import ImageGeometry
from .arrays import (
    HeatmapLike,
    PictureLike,
    crop_on_picture,
    downscaled,
    heatmap_on_picture,
    jpeg_data_uri,
    picture_array,
    scaled_size,
    value_range,
)

#: the page sets these attributes on <html>: a count of drawn views, and of JS errors
READY_ATTRIBUTE = "data-timmlens-plotted"
ERRORS_ATTRIBUTE = "data-timmlens-errors"
#: colormaps offered in the menu (matplotlib names); the first of a view is its default
COLORMAPS = ("inferno", "viridis", "magma", "jet", "gray", "RdBu_r")


@dataclass
class PageView:
    """One interactive view: a set of maps over the photo, switched by buttons or a slider.

    Attributes:
        title: the view's heading (plain text).
        maps: name -> ``(H, W)`` map in model-input coordinates (or a patch grid).
        control: ``"buttons"`` (one per map) or ``"slider"`` (attention blocks).
        colormap: the default colormap (`COLORMAPS`).
        opacity: the default opacity of the maps.
        label: the colour bar's label.
        max_side: maps are sampled to at most this many cells per side.
        stretch: colours span each map's own min to max (stated on the page), not 0 to max.
    """

    title: str
    maps: Mapping[str, HeatmapLike]
    control: str = "buttons"
    colormap: str = "inferno"
    opacity: float = 0.5
    label: str = "relevance"
    max_side: int = 224
    stretch: bool = False


def _lut(name: str) -> str:
    """256 RGB entries of a matplotlib colormap as one hex string."""
    from matplotlib import colormaps

    colours = colormaps[name](np.linspace(0, 1, 256))[:, :3]
    return bytes(np.round(colours * 255).astype(np.uint8).ravel()).hex()


def _sample(grid: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour sample of ``grid`` ``(H0, W0)`` -> ``(height, width)`` (NaN kept)."""
    rows = np.minimum(
        ((np.arange(height) + 0.5) * grid.shape[0] / height).astype(int), grid.shape[0] - 1
    )
    cols = np.minimum(
        ((np.arange(width) + 0.5) * grid.shape[1] / width).astype(int), grid.shape[1] - 1
    )
    return grid[np.ix_(rows, cols)]


def encode_map(full: np.ndarray, max_side: int, stretch: bool = False) -> dict[str, Any]:
    """A map on the photo ``(H0, W0)`` (NaN outside the crop) as an 8-bit greyscale PNG.

    Returns ``{"png", "lo", "hi", "vmin", "vmax"}``: level ``q`` of the PNG's grey channel
    is the value ``lo + q / 255 * (hi - lo)`` (its alpha is 0 where the map is NaN);
    ``vmin``/``vmax`` are the colour limits (`timmlens.viz.arrays.value_range`,
    or the map's min and max with ``stretch``).
    """
    vmin, vmax = value_range(full)
    finite = full[np.isfinite(full)]
    lo = float(min(finite.min(), vmin)) if finite.size else vmin
    hi = float(max(finite.max(), vmax)) if finite.size else vmax
    if stretch and finite.size and float(finite.max()) > float(finite.min()):
        vmin, vmax = float(finite.min()), float(finite.max())
    small = _sample(full, *scaled_size(*full.shape, max_side))
    valid = np.isfinite(small)
    span = hi - lo if hi > lo else 1.0
    levels = np.round(np.clip((np.nan_to_num(small, nan=lo) - lo) / span, 0, 1) * 255)
    pixels = np.stack([levels.astype(np.uint8), (valid * 255).astype(np.uint8)], axis=-1)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", optimize=True)  # (h, w, 2): "LA"
    uri = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    return {"png": uri, "lo": lo, "hi": hi, "vmin": float(vmin), "vmax": float(vmax)}


def _json_for_script(data: Any) -> str:
    """JSON safe inside ``<script>``: ``<``, ``>`` and ``&`` as unicode escapes."""
    text = json.dumps(data, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def write_page(
    path: str | os.PathLike[str],
    image: PictureLike,
    views: Sequence[PageView],
    geometry: ImageGeometry | None = None,
    *,
    title: str = "timmlens explanation",
    subtitle: str = "",
    max_image_side: int = 640,
) -> Path:
    """Write one self-contained page with ``views`` of the photo ``image``; returns the path.

    ``title`` and ``subtitle`` are plain text (escaped here). When the page has drawn its
    views, ``<html data-timmlens-plotted>`` holds their count; JavaScript errors are
    counted in ``data-timmlens-errors``.
    """
    if not views:
        raise ValueError("no views to show; pass at least one PageView.")
    picture = picture_array(image)
    height, width = picture.shape[:2]
    crop = None
    if geometry is not None:
        top, left, crop_h, crop_w = crop_on_picture(geometry)
        crop = [left, top, crop_w, crop_h]
    data = {
        "photo": jpeg_data_uri(downscaled(picture, max_image_side), quality=85),
        "width": width,
        "height": height,
        "crop": crop,
        "colormaps": {name: _lut(name) for name in COLORMAPS},
        "views": [],
    }
    for view in views:
        if not view.maps:
            raise ValueError(f"view '{view.title}' has no maps.")
        if view.control not in ("buttons", "slider"):
            raise ValueError(f"control must be 'buttons' or 'slider', got {view.control!r}.")
        maps = []
        for name, heatmap in view.maps.items():
            full = heatmap_on_picture(heatmap, (height, width), geometry)
            maps.append({"name": str(name), **encode_map(full, view.max_side, view.stretch)})
        data["views"].append(
            {
                "title": view.title,
                "control": view.control,
                "colormap": view.colormap if view.colormap in COLORMAPS else COLORMAPS[0],
                "opacity": float(view.opacity),
                "label": view.label,
                "stretch": view.stretch,
                "maps": maps,
            }
        )
    page = page_head(title, subtitle, css=_PAGE_CSS) + _PAGE_BODY.format(
        data=_json_for_script(data), script=_SCRIPT
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


#: every page's head: the error counter the browser test reads, the common style, the title
_HEAD = """<!DOCTYPE html>
<html lang="en" {errors}="0" {ready}="0">
<head>
<meta charset="utf-8">
<title>{title}</title>
<script>
(function () {{
  var root = document.documentElement;
  window.addEventListener("error", function (event) {{
    root.setAttribute("{errors}", String(Number(root.getAttribute("{errors}")) + 1));
    root.setAttribute("data-timmlens-last-error", String(event.message).slice(0, 300));
  }});
}})();
</script>
<style>
body {{ font-family: system-ui, sans-serif; margin: 12px 20px; color: #222; }}
h1 {{ font-size: 20px; margin: 4px 0; }}
p.note {{ color: #555; font-size: 13px; margin: 4px 0 10px; max-width: 900px; }}
{css}</style>
</head>
<body>
<h1>{title}</h1>
<p class="note">{subtitle}</p>
"""


def page_head(title: str, subtitle: str = "", *, css: str = "") -> str:
    """The start of a timmlens HTML page up to its heading: ``title`` and ``subtitle``
    are plain text (escaped here), ``css`` adds the page's own style rules. JavaScript
    errors are counted in ``data-timmlens-errors`` on ``<html>``."""
    return _HEAD.format(
        title=html.escape(title, quote=True),
        subtitle=html.escape(subtitle, quote=True),
        errors=ERRORS_ATTRIBUTE,
        ready=READY_ATTRIBUTE,
        css=css,
    )


_PAGE_CSS = """h2 { font-size: 16px; margin: 18px 0 6px; }
.view { margin-bottom: 24px; }
.controls { display: flex; flex-wrap: wrap; gap: 10px; align-items: center; font-size: 13px;
  margin: 6px 0; }
.controls button { font: inherit; padding: 3px 9px; border: 1px solid #999; background: #f4f4f4;
  border-radius: 4px; cursor: pointer; }
.controls button.active { background: #333; color: #fff; border-color: #333; }
.stage { display: flex; gap: 8px; align-items: flex-start; }
canvas.photo { border: 1px solid #ccc; cursor: crosshair; touch-action: none; }
.readout { font: 12px monospace; color: #333; min-height: 1.4em; }
.scale { font-size: 12px; color: #444; }
"""

_PAGE_BODY = """<div id="timmlens-views"></div>
<script type="application/json" id="timmlens-data">{data}</script>
<script>
{script}
</script>
</body>
</html>
"""

_SCRIPT = r"""
(function () {
  "use strict";
  var root = document.documentElement;
  var data = JSON.parse(document.getElementById("timmlens-data").textContent);
  var luts = {};
  Object.keys(data.colormaps).forEach(function (name) {
    var hex = data.colormaps[name], lut = new Uint8Array(768);
    for (var i = 0; i < 768; i++) lut[i] = parseInt(hex.substr(2 * i, 2), 16);
    luts[name] = lut;
  });
  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text !== undefined) node.textContent = text;
    return node;
  }
  function loadImage(src) {
    return new Promise(function (resolve, reject) {
      var img = new Image();
      img.onload = function () { resolve(img); };
      img.onerror = function () { reject(new Error("cannot decode an embedded image")); };
      img.src = src;
    });
  }
  function levels(img) {  // the PNG's grey levels and alpha, row-major
    var c = document.createElement("canvas");
    c.width = img.width; c.height = img.height;
    var ctx = c.getContext("2d");
    ctx.drawImage(img, 0, 0);
    return ctx.getImageData(0, 0, img.width, img.height).data;
  }
  function fmt(v) { return Math.abs(v) >= 100 ? v.toFixed(0) : v.toPrecision(3); }
  var W = data.width, H = data.height;
  var maxWidth = Math.min(760, window.innerWidth - 140);
  var fit = Math.min(maxWidth / W, 560 / H);  // small photos are enlarged
  var cw = Math.max(1, Math.round(W * fit)), ch = Math.max(1, Math.round(H * fit));

  function buildView(view, photo, maps) {
    var box = el("div", {"class": "view"});
    box.appendChild(el("h2", {}, view.title));
    var controls = el("div", {"class": "controls"});
    var stage = el("div", {"class": "stage"});
    var canvas = el("canvas", {"class": "photo", width: cw, height: ch});
    var bar = el("canvas", {"class": "bar", width: 86, height: ch});
    var readout = el("div", {"class": "readout"},
                     "hover for values; wheel to zoom, drag to pan, double-click to reset");
    var scale = el("div", {"class": "scale"});
    stage.appendChild(canvas); stage.appendChild(bar);
    box.appendChild(controls); box.appendChild(stage);
    box.appendChild(readout); box.appendChild(scale);
    var state = {index: view.control === "slider" ? maps.length - 1 : 0,
                 cmap: view.colormap, opacity: view.opacity, zoom: 1, x: 0, y: 0};
    var layer = document.createElement("canvas");
    function paintLayer() {
      var m = maps[state.index], lut = luts[state.cmap];
      layer.width = m.w; layer.height = m.h;
      var ctx = layer.getContext("2d"), out = ctx.createImageData(m.w, m.h);
      var span = (m.vmax - m.vmin) || 1;
      for (var i = 0; i < m.w * m.h; i++) {
        var value = m.lo + m.levels[4 * i] / 255 * (m.hi - m.lo);
        var t = Math.max(0, Math.min(255, Math.round((value - m.vmin) / span * 255)));
        out.data[4 * i] = lut[3 * t]; out.data[4 * i + 1] = lut[3 * t + 1];
        out.data[4 * i + 2] = lut[3 * t + 2];
        out.data[4 * i + 3] = m.levels[4 * i + 3] ? Math.round(255 * state.opacity) : 0;
      }
      ctx.putImageData(out, 0, 0);
    }
    function draw() {
      var ctx = canvas.getContext("2d");
      ctx.setTransform(1, 0, 0, 1, 0, 0);
      ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, cw, ch);
      ctx.setTransform(state.zoom * fit, 0, 0, state.zoom * fit, state.x, state.y);
      ctx.imageSmoothingEnabled = true;
      ctx.drawImage(photo, 0, 0, W, H);
      ctx.drawImage(layer, 0, 0, W, H);
      if (data.crop) {  // hatch what the model did not see, outline what it did
        var c = data.crop, x0 = Math.max(0, c[0]), y0 = Math.max(0, c[1]);
        var x1 = Math.min(W, c[0] + c[2]), y1 = Math.min(H, c[1] + c[3]);
        ctx.save();
        ctx.beginPath();
        ctx.rect(0, 0, W, H); ctx.rect(x0, y0, x1 - x0, y1 - y0);
        ctx.clip("evenodd");
        ctx.fillStyle = "rgba(38,38,38,0.5)"; ctx.fillRect(0, 0, W, H);
        ctx.strokeStyle = "rgba(255,255,255,0.45)"; ctx.lineWidth = 1 / (state.zoom * fit);
        ctx.beginPath();
        for (var d = -H; d < W; d += 14 / fit) { ctx.moveTo(d, H); ctx.lineTo(d + H, 0); }
        ctx.stroke();
        ctx.restore();
        ctx.setLineDash([6 / fit, 4 / fit]);
        ctx.strokeStyle = "#fff"; ctx.lineWidth = 1.5 / (state.zoom * fit);
        if (x1 - x0 < W - 0.5 || y1 - y0 < H - 0.5) ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
        ctx.setLineDash([]);
      }
      drawBar();
    }
    function drawBar() {
      var m = maps[state.index], lut = luts[state.cmap], ctx = bar.getContext("2d");
      ctx.clearRect(0, 0, bar.width, bar.height);
      var top = 10, bottom = ch - 10, len = bottom - top;
      for (var y = 0; y < len; y++) {
        var t = Math.round((1 - y / (len - 1)) * 255);
        ctx.fillStyle = "rgb(" + lut[3 * t] + "," + lut[3 * t + 1] + "," + lut[3 * t + 2] + ")";
        ctx.fillRect(4, top + y, 14, 1);
      }
      ctx.strokeStyle = "#555"; ctx.strokeRect(4, top, 14, len);
      ctx.fillStyle = "#222"; ctx.font = "11px sans-serif";
      [0, 0.5, 1].forEach(function (f) {
        var v = m.vmin + f * (m.vmax - m.vmin), y = bottom - f * len;
        ctx.fillText(fmt(v), 22, y + 4);
      });
      ctx.save(); ctx.translate(80, top + len / 2); ctx.rotate(-Math.PI / 2);
      ctx.textAlign = "center"; ctx.fillText(view.label, 0, 0); ctx.restore();
      scale.textContent = "colour scale " + fmt(m.vmin) + " to " + fmt(m.vmax) +
        (view.stretch ? " (this map's own min to max)" : "") +
        (m.hi > m.vmax * 1.0001 && !view.stretch
          ? "; values above " + fmt(m.vmax) + " saturate" : "") +
        "; values are 8-bit levels of the map's range " + fmt(m.lo) + " to " + fmt(m.hi) + ".";
    }
    function select(i) {
      state.index = i; paintLayer(); draw();
      Array.prototype.forEach.call(controls.querySelectorAll("button"), function (b, j) {
        b.className = j === i ? "active" : "";
      });
      if (slider) { slider.value = String(i); sliderLabel.textContent = maps[i].name; }
    }
    var slider = null, sliderLabel = null;
    if (view.control === "slider") {
      controls.appendChild(el("span", {}, "block:"));
      slider = el("input", {type: "range", min: "0", max: String(maps.length - 1), step: "1"});
      sliderLabel = el("span", {}, "");
      slider.addEventListener("input", function () { select(Number(slider.value)); });
      controls.appendChild(slider); controls.appendChild(sliderLabel);
    } else {
      maps.forEach(function (m, i) {
        var b = el("button", {type: "button"}, m.name);
        b.addEventListener("click", function () { select(i); });
        controls.appendChild(b);
      });
    }
    controls.appendChild(el("span", {}, "opacity"));
    var opacity = el("input", {type: "range", min: "0", max: "1", step: "0.05"});
    opacity.value = String(state.opacity);
    opacity.addEventListener("input", function () {
      state.opacity = Number(opacity.value); paintLayer(); draw();
    });
    controls.appendChild(opacity);
    var menu = el("select", {"aria-label": "colormap"});
    Object.keys(luts).forEach(function (name) {
      var option = el("option", {value: name}, "colormap: " + name);
      if (name === state.cmap) option.selected = true;
      menu.appendChild(option);
    });
    menu.addEventListener("change", function () { state.cmap = menu.value; paintLayer(); draw(); });
    controls.appendChild(menu);
    function toImage(event) {
      var r = canvas.getBoundingClientRect();
      var px = event.clientX - r.left, py = event.clientY - r.top;
      return [(px - state.x) / (state.zoom * fit), (py - state.y) / (state.zoom * fit), px, py];
    }
    canvas.addEventListener("mousemove", function (event) {
      var p = toImage(event), m = maps[state.index];
      if (drag) {
        state.x = drag[2] + p[2] - drag[0]; state.y = drag[3] + p[3] - drag[1]; draw(); return;
      }
      if (p[0] < 0 || p[1] < 0 || p[0] >= W || p[1] >= H) { readout.textContent = ""; return; }
      var i = Math.min(m.h - 1, Math.floor(p[1] / H * m.h)) * m.w +
              Math.min(m.w - 1, Math.floor(p[0] / W * m.w));
      var text = "x " + Math.floor(p[0]) + ", y " + Math.floor(p[1]) + ": ";
      text += m.levels[4 * i + 3] ? m.name + " " + fmt(m.lo + m.levels[4 * i] / 255 * (m.hi - m.lo))
                                  : "outside the model's crop (not seen)";
      readout.textContent = text;
    });
    var drag = null;
    canvas.addEventListener("mousedown", function (event) {
      var p = toImage(event); drag = [p[2], p[3], state.x, state.y];
    });
    window.addEventListener("mouseup", function () { drag = null; });
    canvas.addEventListener("wheel", function (event) {
      event.preventDefault();
      var p = toImage(event), factor = event.deltaY < 0 ? 1.25 : 0.8;
      var zoom = Math.max(1, Math.min(16, state.zoom * factor));
      state.x = p[2] - p[0] * zoom * fit; state.y = p[3] - p[1] * zoom * fit; state.zoom = zoom;
      if (zoom === 1) { state.x = 0; state.y = 0; }
      draw();
    }, {passive: false});
    canvas.addEventListener("dblclick", function () {
      state.zoom = 1; state.x = 0; state.y = 0; draw();
    });
    select(state.index);
    return box;
  }

  var container = document.getElementById("timmlens-views");
  loadImage(data.photo).then(function (photo) {
    return data.views.reduce(function (done, view) {
      return done.then(function () {
        return Promise.all(view.maps.map(function (m) { return loadImage(m.png); }))
          .then(function (images) {
            var maps = view.maps.map(function (m, i) {
              return {name: m.name, lo: m.lo, hi: m.hi, vmin: m.vmin, vmax: m.vmax,
                      w: images[i].width, h: images[i].height, levels: levels(images[i])};
            });
            container.appendChild(buildView(view, photo, maps));
            root.setAttribute("READY", String(Number(root.getAttribute("READY")) + 1));
          });
      });
    }, Promise.resolve());
  }).catch(function (error) {
    root.setAttribute("ERRORS", String(Number(root.getAttribute("ERRORS")) + 1));
    root.setAttribute("data-timmlens-last-error", String(error).slice(0, 300));
  });
})();
""".replace("READY", READY_ATTRIBUTE).replace("ERRORS", ERRORS_ATTRIBUTE)
