// The inpaint mask editor: a canvas laid over the input image, at the image's own pixel size, so the
// mask sent always matches the image (the CSS only scales how it is shown). Painted pixels are
// opaque red on screen (the canvas is half transparent); the exported mask is white there, black elsewhere.

export class MaskEditor {
  /** @param {HTMLCanvasElement} canvas */
  constructor(canvas) {
    this.canvas = canvas;
    // Read back on every stroke end (hasPaint): tell the browser to keep it in memory, not on the GPU.
    this.ctx = canvas.getContext("2d", { willReadFrequently: true });
    this.brushSize = 32;
    this.tool = "brush";
    this.drawing = false;
    this.last = null;
    this.painted = false;
    this.onChange = () => {};
    canvas.addEventListener("pointerdown", (e) => this.down(e));
    canvas.addEventListener("pointermove", (e) => this.move(e));
    canvas.addEventListener("pointerup", (e) => this.up(e));
    canvas.addEventListener("pointercancel", (e) => this.up(e));
  }

  /** Start an empty mask of the image's size. */
  reset(width, height) {
    this.canvas.width = width;
    this.canvas.height = height;
    this.clear();
  }

  clear() {
    this.ctx.clearRect(0, 0, this.canvas.width, this.canvas.height);
    this.painted = false;
    this.onChange();
  }

  /** Canvas pixel under the pointer: the canvas is shown scaled, so map through its on-screen box. */
  point(e) {
    const box = this.canvas.getBoundingClientRect();
    return {
      x: ((e.clientX - box.left) * this.canvas.width) / box.width,
      y: ((e.clientY - box.top) * this.canvas.height) / box.height,
    };
  }

  /** Brush size is given in screen pixels (what the person sees), drawn in image pixels. */
  lineWidth() {
    const box = this.canvas.getBoundingClientRect();
    const scale = box.width > 0 ? this.canvas.width / box.width : 1;
    return Math.max(1, this.brushSize * scale);
  }

  stroke(from, to) {
    const ctx = this.ctx;
    ctx.save();
    ctx.globalCompositeOperation = this.tool === "eraser" ? "destination-out" : "source-over";
    ctx.strokeStyle = "rgb(255, 0, 0)";
    ctx.fillStyle = "rgb(255, 0, 0)";
    ctx.lineWidth = this.lineWidth();
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.beginPath();
    if (from.x === to.x && from.y === to.y) {
      ctx.arc(to.x, to.y, ctx.lineWidth / 2, 0, Math.PI * 2);
      ctx.fill();
    } else {
      ctx.moveTo(from.x, from.y);
      ctx.lineTo(to.x, to.y);
      ctx.stroke();
    }
    ctx.restore();
    if (this.tool === "brush") this.painted = true;
  }

  down(e) {
    if (e.button !== 0 && e.pointerType === "mouse") return;
    e.preventDefault();
    this.canvas.setPointerCapture(e.pointerId);
    this.drawing = true;
    this.last = this.point(e);
    this.stroke(this.last, this.last);
  }

  move(e) {
    if (!this.drawing) return;
    const p = this.point(e);
    this.stroke(this.last, p);
    this.last = p;
  }

  up(e) {
    if (!this.drawing) return;
    this.drawing = false;
    if (this.canvas.hasPointerCapture(e.pointerId)) this.canvas.releasePointerCapture(e.pointerId);
    this.painted = this.hasPaint();
    this.onChange();
  }

  /** True when some pixel is painted (the eraser may have removed everything). */
  hasPaint() {
    const { width, height } = this.canvas;
    if (!width || !height) return false;
    const data = this.ctx.getImageData(0, 0, width, height).data;
    for (let i = 3; i < data.length; i += 4) if (data[i] !== 0) return true;
    return false;
  }

  /** The mask as PNG base64 (no data: prefix): white where painted, black elsewhere, image-sized. */
  toBase64() {
    const { width, height } = this.canvas;
    const out = document.createElement("canvas");
    out.width = width;
    out.height = height;
    const ctx = out.getContext("2d");
    ctx.drawImage(this.canvas, 0, 0);
    ctx.globalCompositeOperation = "source-in";
    ctx.fillStyle = "#ffffff";
    ctx.fillRect(0, 0, width, height);
    ctx.globalCompositeOperation = "destination-over";
    ctx.fillStyle = "#000000";
    ctx.fillRect(0, 0, width, height);
    return out.toDataURL("image/png").split(",", 2)[1];
  }
}

