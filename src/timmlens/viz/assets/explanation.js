// The explanation page (timmlens.viz.explanation_page): draws each view of the JSON in
// <script id="timmlens-data"> on a canvas: the photo, the map over it (8-bit levels of a
// greyscale PNG, coloured with the chosen colormap's table), the colour bar, buttons or a
// slider, opacity, zoom and pan, and the value under the pointer. Labels are set with
// textContent only, so a hostile class name is shown, never run. It counts drawn views on
// <html data-timmlens-plotted> and failures on data-timmlens-errors (the browser test).
(function () {
  "use strict";
  var root = document.documentElement;
  var READY = "data-timmlens-plotted", ERRORS = "data-timmlens-errors";
  function count(name) { root.setAttribute(name, String(Number(root.getAttribute(name)) + 1)); }
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
            count(READY);
          });
      });
    }, Promise.resolve());
  }).catch(function (error) {
    count(ERRORS);
    root.setAttribute("data-timmlens-last-error", String(error).slice(0, 300));
  });
})();
