// BlurHash (the public algorithm from https://blurha.sh): the decoder for the manifest's
// placeholder, and an encoder for a picked file's own pixels (shown while it is processed).
// tests/browser/test_blurhash.py checks both against processor/placeholder.py.

const DIGITS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz#$%*+,-.:;=?@[]^_{|}~";

function base83(text) {
  let value = 0;
  for (const char of text) {
    const digit = DIGITS.indexOf(char);
    if (digit < 0) throw new Error(`not a BlurHash character: ${char}`);
    value = value * 83 + digit;
  }
  return value;
}

function toLinear(value) {
  const v = value / 255;
  return v <= 0.04045 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
}

function toSrgb(value) {
  const v = Math.min(Math.max(value, 0), 1);
  return Math.round(v <= 0.0031308 ? v * 12.92 * 255 : (1.055 * v ** (1 / 2.4) - 0.055) * 255);
}

const signPow = (value, exp) => Math.sign(value) * Math.abs(value) ** exp;

function toBase83(value, length) {
  let text = "";
  for (let i = 1; i <= length; i++) text += DIGITS[Math.floor(value / 83 ** (length - i)) % 83];
  return text;
}

/** The BlurHash of RGBA `pixels` (width × height × 4), as processor/placeholder.py computes it. */
export function encode(pixels, width, height, numX = 4, numY = 3) {
  const linear = new Float64Array(width * height * 3);
  for (let p = 0; p < width * height; p++) {
    for (let c = 0; c < 3; c++) linear[p * 3 + c] = toLinear(pixels[p * 4 + c]);
  }
  const factors = [];
  for (let j = 0; j < numY; j++) {
    for (let i = 0; i < numX; i++) {
      const norm = (i === 0 && j === 0 ? 1 : 2) / (width * height);
      let r = 0, g = 0, b = 0;
      for (let y = 0; y < height; y++) {
        const cy = Math.cos((Math.PI * j * y) / height) * norm;
        for (let x = 0; x < width; x++) {
          const basis = Math.cos((Math.PI * i * x) / width) * cy;
          const at = (y * width + x) * 3;
          r += basis * linear[at];
          g += basis * linear[at + 1];
          b += basis * linear[at + 2];
        }
      }
      factors.push([r, g, b]);
    }
  }
  const [dc, ...ac] = factors;
  let hash = toBase83(numX - 1 + (numY - 1) * 9, 1);
  let maxValue = 1;
  if (ac.length) {
    const actual = Math.max(...ac.flat().map(Math.abs));
    const quantised = Math.max(0, Math.min(82, Math.floor(actual * 166 - 0.5)));
    maxValue = (quantised + 1) / 166;
    hash += toBase83(quantised, 1);
  } else {
    hash += toBase83(0, 1);
  }
  hash += toBase83((toSrgb(dc[0]) << 16) + (toSrgb(dc[1]) << 8) + toSrgb(dc[2]), 4);
  for (const colour of ac) {
    const q = colour.map((v) => Math.max(0, Math.min(18, Math.floor(signPow(v / maxValue, 0.5) * 9 + 9.5))));
    hash += toBase83(q[0] * 19 * 19 + q[1] * 19 + q[2], 2);
  }
  return hash;
}

/** Whether `hash` is a well-formed BlurHash (length matches its component count). */
export function isBlurhash(hash) {
  if (typeof hash !== "string" || hash.length < 6) return false;
  try {
    const size = base83(hash[0]);
    return hash.length === 4 + 2 * ((size % 9) + 1) * (Math.floor(size / 9) + 1) && base83(hash) >= 0;
  } catch {
    return false;
  }
}

/** RGBA pixels (Uint8ClampedArray, width × height × 4) of `hash`. */
export function decode(hash, width, height, punch = 1) {
  if (!isBlurhash(hash)) throw new Error(`not a BlurHash: ${hash}`);
  const size = base83(hash[0]);
  const numX = (size % 9) + 1;
  const numY = Math.floor(size / 9) + 1;
  const maxValue = ((base83(hash[1]) + 1) / 166) * punch;
  const colours = [];
  const dc = base83(hash.slice(2, 6));
  colours.push([toLinear(dc >> 16), toLinear((dc >> 8) & 255), toLinear(dc & 255)]);
  for (let i = 1; i < numX * numY; i++) {
    const ac = base83(hash.slice(4 + i * 2, 6 + i * 2));
    const q = [Math.floor(ac / 361), Math.floor(ac / 19) % 19, ac % 19];
    colours.push(q.map((v) => signPow((v - 9) / 9, 2) * maxValue));
  }
  const cosX = Array.from({ length: numX }, (_, i) =>
    Array.from({ length: width }, (_, x) => Math.cos((Math.PI * i * x) / width)));
  const cosY = Array.from({ length: numY }, (_, j) =>
    Array.from({ length: height }, (_, y) => Math.cos((Math.PI * j * y) / height)));
  const pixels = new Uint8ClampedArray(width * height * 4);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      let r = 0, g = 0, b = 0;
      for (let j = 0; j < numY; j++) {
        for (let i = 0; i < numX; i++) {
          const basis = cosX[i][x] * cosY[j][y];
          const c = colours[i + j * numX];
          r += c[0] * basis;
          g += c[1] * basis;
          b += c[2] * basis;
        }
      }
      const at = 4 * (x + y * width);
      pixels[at] = toSrgb(r);
      pixels[at + 1] = toSrgb(g);
      pixels[at + 2] = toSrgb(b);
      pixels[at + 3] = 255;
    }
  }
  return pixels;
}

/** Paint `hash` into `canvas` at the aspect ratio width:height (≤ 32 px a side; CSS scales it). */
export function paint(canvas, hash, width, height) {
  const scale = 32 / Math.max(width, height, 1);
  canvas.width = Math.max(1, Math.round(width * scale));
  canvas.height = Math.max(1, Math.round(height * scale));
  const context = canvas.getContext("2d");
  const image = context.createImageData(canvas.width, canvas.height);
  image.data.set(decode(hash, canvas.width, canvas.height));
  context.putImageData(image, 0, 0);
}
