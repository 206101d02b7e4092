"""RandAugment and Cutout on pixel values: the strong view of two-view methods (MLKD).

Every op takes one image `(H, W, C)` of pixel values in `[0, 255]` (before
normalisation) and a magnitude, and returns float32 pixels in `[0, 255]`,
whole numbers as in an 8-bit image: each op clips and truncates its output
the way PIL's 8-bit images do. The ops follow the definitions of PIL's
`ImageOps` / `ImageEnhance` / `Image.transform`, which the RandAugment variant
of FixMatch (the one MLKD uses) calls:

| op | magnitude range | what it does |
|---|---|---|
| `auto_contrast` | unused | per channel, stretch `[min, max]` to `[0, 255]` |
| `brightness` | `[0.05, 0.95]` | blend with black: `v * x` |
| `color` | `[0.05, 0.95]` | blend with the image's grey version |
| `contrast` | `[0.05, 0.95]` | blend with the grey image's mean |
| `equalize` | unused | per-channel histogram equalisation (PIL's table) |
| `identity` | unused | nothing |
| `posterize` | `[4, 8]` bits | keep the top `int(v)` bits |
| `rotate` | `[-30, 30]` degrees | counter-clockwise about the centre |
| `sharpness` | `[0.05, 0.95]` | blend with the 3x3-smoothed image (edges kept) |
| `shear_x`, `shear_y` | `[-0.3, 0.3]` | affine shear |
| `solarize` | `[0, 256]` | invert the pixels `>= v` |
| `translate_x`, `translate_y` | `[-0.3, 0.3]` of the size | shift |

Geometric ops sample the nearest pixel and fill with black (0), as PIL does by
default. `rand_augment` applies `num_ops` ops drawn with replacement, each
with a magnitude uniform in its range; `cutout` then paints a square.

Keras's own preprocessing layers (`keras.layers.Equalization`,
`AutoContrast`, `RandomSharpness`, ...) draw their magnitudes from their own
seed state and differ from PIL in details (Equalization's lookup table,
Sharpness at the border, float instead of 8-bit output), so the ops are
written with `keras.ops` (geometry with `keras.ops.image.affine_transform`).
Randomness is stateless: the same seed gives the same draws in any process.

Example:

>>> import tensorflow as tf
>>> from kerakd.data.rand_augment import cutout, rand_augment
>>> pixels = tf.random.stateless_uniform((32, 32, 3), [0, 0], 0, 256, "int32")
>>> seed = tf.constant([1, 2])
>>> strong = cutout(rand_augment(tf.cast(pixels, "float32"), seed), tf.constant([3, 4]))
>>> tuple(strong.shape), strong.dtype.name
((32, 32, 3), 'float32')
>>> values = strong.numpy()
>>> bool(values.min() >= 0 and values.max() <= 255 and (values == values.round()).all())
True
"""

import functools
import math

import tensorflow as tf
from keras import ops

# Cutout's fill colour (RGB), and its grey for 1-channel images: the ITU-R
# 601 luma of that colour rounded, which is PIL's "L" conversion of it.
CUTOUT_FILL_RGB = (125, 123, 114)
CUTOUT_FILL_GREY = 123
CUTOUT_MAX_FRACTION = 0.5
_LUMA = (0.299, 0.587, 0.114)
# PIL's ImageFilter.SMOOTH, the degenerate image of `sharpness`.
_SMOOTH = ((1.0, 1.0, 1.0), (1.0, 5.0, 1.0), (1.0, 1.0, 1.0))


def _pixels(image):
    return ops.cast(image, "float32")


def _to_8bit(values):
    """Clips to `[0, 255]` and truncates: PIL's float -> uint8 conversion."""
    return ops.floor(ops.clip(values, 0.0, 255.0))


def _blend(degenerate, image, factor):
    """PIL's `ImageEnhance`: `degenerate + factor * (image - degenerate)`."""
    return _to_8bit(degenerate + factor * (image - degenerate))


def _grey(image):
    """The grey (PIL "L") version `(H, W, 1)` of a 1- or 3-channel image."""
    channels = image.shape[-1]
    if channels == 1:
        return image
    if channels != 3:
        raise ValueError(
            f"RandAugment's colour ops read 1- or 3-channel images, got {channels} channels.")
    return ops.round(ops.sum(image * ops.convert_to_tensor(_LUMA), axis=-1, keepdims=True))


def identity(image, magnitude=None):
    """The image itself."""
    return _pixels(image)


def auto_contrast(image, magnitude=None):
    """Stretches each channel's `[min, max]` to `[0, 255]` (constant channels stay)."""
    x = _pixels(image)
    # PIL's table is computed in double precision; float32 is off by one at times.
    wide = ops.cast(x, "float64")
    low = ops.min(wide, axis=(0, 1), keepdims=True)
    high = ops.max(wide, axis=(0, 1), keepdims=True)
    scale = 255.0 / ops.maximum(high - low, 1.0)
    stretched = ops.cast(_to_8bit(wide * scale - low * scale), "float32")
    return ops.where(high > low, stretched, x)


def brightness(image, factor):
    """Blends with a black image: `factor * x`."""
    x = _pixels(image)
    return _blend(ops.zeros_like(x), x, factor)


def color(image, factor):
    """Blends with the image's grey version (no change for 1 channel)."""
    x = _pixels(image)
    return _blend(ops.broadcast_to(_grey(x), ops.shape(x)), x, factor)


def contrast(image, factor):
    """Blends with a constant image, the rounded mean of the grey image."""
    x = _pixels(image)
    mean = ops.floor(ops.mean(_grey(x)) + 0.5)
    return _blend(mean * ops.ones_like(x), x, factor)


def _equalize_channel(channel):
    values = ops.cast(ops.reshape(channel, (-1,)), "int32")
    histogram = ops.bincount(values, minlength=256)[:256]
    # PIL: the step leaves out the count of the last non-empty bin.
    last = 255 - ops.argmax(ops.flip(histogram, axis=0) > 0)
    step = (ops.sum(histogram) - ops.take(histogram, last)) // 255
    below = ops.cumsum(histogram) - histogram
    table = ops.minimum((step // 2 + below) // ops.maximum(step, 1), 255)
    equalized = ops.cast(ops.take(table, values), "float32")
    keep = ops.logical_or(step == 0, ops.count_nonzero(histogram) <= 1)
    return ops.where(keep, ops.reshape(channel, (-1,)), equalized)


def equalize(image, magnitude=None):
    """Per-channel histogram equalisation with PIL's lookup table."""
    x = _pixels(image)
    shape = ops.shape(x)
    channels = [_equalize_channel(x[..., c]) for c in range(x.shape[-1])]
    return ops.reshape(ops.stack(channels, axis=-1), shape)


def posterize(image, bits):
    """Keeps the top `int(bits)` bits of each value (`bits` in 1..8)."""
    x = _pixels(image)
    quantum = ops.power(2.0, 8.0 - ops.clip(ops.floor(bits), 1.0, 8.0))
    return ops.floor(x / quantum) * quantum


def solarize(image, threshold):
    """Inverts (`255 - x`) the values `>= threshold`."""
    x = _pixels(image)
    return ops.where(x >= threshold, 255.0 - x, x)


def sharpness(image, factor):
    """Blends with PIL's SMOOTH-filtered image, whose 1-pixel border is the
    image's own (PIL filters the interior only)."""
    x = _pixels(image)
    channels = x.shape[-1]
    kernel = ops.convert_to_tensor(_SMOOTH) / 13.0
    kernel = ops.tile(ops.reshape(kernel, (3, 3, 1, 1)), (1, 1, channels, 1))
    smooth = ops.depthwise_conv(x[None], kernel, strides=1, padding="valid")[0]
    smooth = ops.pad(ops.floor(smooth + 0.5), ((1, 1), (1, 1), (0, 0)))
    height, width = ops.shape(x)[0], ops.shape(x)[1]
    rows = ops.arange(height)[:, None, None]
    cols = ops.arange(width)[None, :, None]
    interior = ((rows > 0) & (rows < height - 1)) & ((cols > 0) & (cols < width - 1))
    return _blend(ops.where(interior, smooth, x), x, factor)


def _pil_affine(image, a, b, c, d, e, f):
    """PIL's `Image.transform(AFFINE, (a, b, c, d, e, f))`: output pixel
    `(x, y)` reads input `(a x + b y + c, d x + e y + f)`, nearest pixel,
    black fill.

    PIL's coordinates put pixel `i` on `[i, i + 1)`; `affine_transform` reads
    pixel indices, so the offsets move by half a pixel.
    """
    x = _pixels(image)
    offset_x = c + 0.5 * (a + b) - 0.5
    offset_y = f + 0.5 * (d + e) - 0.5
    zero = ops.zeros_like(ops.convert_to_tensor(a, "float32"))
    transform = ops.stack([a + zero, b + zero, offset_x + zero, d + zero, e + zero,
                           offset_y + zero, zero, zero])
    out = ops.image.affine_transform(x, transform, interpolation="nearest",
                                     fill_mode="constant", fill_value=0)
    return ops.reshape(out, ops.shape(x))


def rotate(image, degrees):
    """Rotates counter-clockwise by `degrees` about the centre (PIL's `rotate`)."""
    height, width = image.shape[0], image.shape[1]
    centre_x, centre_y = width / 2.0, height / 2.0
    angle = -ops.cast(degrees, "float32") * (math.pi / 180.0)
    a, b = ops.cos(angle), ops.sin(angle)
    d, e = -ops.sin(angle), ops.cos(angle)
    c = centre_x - a * centre_x - b * centre_y
    f = centre_y - d * centre_x - e * centre_y
    return _pil_affine(image, a, b, c, d, e, f)


def shear_x(image, shear):
    """Output `(x, y)` reads input `(x + shear * y, y)`."""
    return _pil_affine(image, 1.0, shear, 0.0, 0.0, 1.0, 0.0)


def shear_y(image, shear):
    """Output `(x, y)` reads input `(x, shear * x + y)`."""
    return _pil_affine(image, 1.0, 0.0, 0.0, shear, 1.0, 0.0)


def translate_x(image, fraction):
    """Output `(x, y)` reads input `(x + fraction * width, y)`."""
    return _pil_affine(image, 1.0, 0.0, fraction * image.shape[1], 0.0, 1.0, 0.0)


def translate_y(image, fraction):
    """Output `(x, y)` reads input `(x, y + fraction * height)`."""
    return _pil_affine(image, 1.0, 0.0, 0.0, 0.0, 1.0, fraction * image.shape[0])


# name: (op, lowest magnitude, highest magnitude), in the reference's order.
OPS = {
    "auto_contrast": (auto_contrast, 0.0, 1.0),
    "brightness": (brightness, 0.05, 0.95),
    "color": (color, 0.05, 0.95),
    "contrast": (contrast, 0.05, 0.95),
    "equalize": (equalize, 0.0, 1.0),
    "identity": (identity, 0.0, 1.0),
    "posterize": (posterize, 4.0, 8.0),
    "rotate": (rotate, -30.0, 30.0),
    "sharpness": (sharpness, 0.05, 0.95),
    "shear_x": (shear_x, -0.3, 0.3),
    "shear_y": (shear_y, -0.3, 0.3),
    "solarize": (solarize, 0.0, 256.0),
    "translate_x": (translate_x, -0.3, 0.3),
    "translate_y": (translate_y, -0.3, 0.3),
}
# The ops `rand_augment` draws from by default.
AUGMENT_OPS = tuple(OPS)


def rand_augment(image, seed, num_ops=2, op_names=None):
    """Applies `num_ops` ops drawn with replacement, each with a magnitude
    drawn uniformly in its range.

    Args:
        image: `(H, W, C)` pixels in `[0, 255]` (any dtype; rounded to whole
            values first), static shape.
        seed: shape-(2,) integer tensor; the draws are a function of it.
        num_ops: ops applied in turn (2, MLKD's RandAugment(2)).
        op_names: the op names to draw from (default `AUGMENT_OPS`, all 14).

    Returns:
        float32 pixels of the image's shape.
    """
    names = tuple(op_names or AUGMENT_OPS)
    x = ops.round(ops.clip(_pixels(image), 0.0, 255.0))  # 8-bit, as PIL's images
    seeds = tf.random.experimental.stateless_split(seed, 2 * num_ops)
    for i in range(num_ops):
        choice = tf.random.stateless_uniform([], seeds[2 * i], 0, len(names), dtype=tf.int32)
        draw = tf.random.stateless_uniform([], seeds[2 * i + 1])
        branches = []
        for name in names:
            op, low, high = OPS[name]
            branches.append(functools.partial(
                lambda op, low, high, x: ops.reshape(op(x, low + (high - low) * draw),
                                                     x.shape), op, low, high, x))
        x = tf.switch_case(choice, branches)
    return x


def cutout(image, seed, max_fraction=CUTOUT_MAX_FRACTION, fill=None):
    """Paints a square of side `v * width`, `v ~ U(0, max_fraction)`, centred
    uniformly on the image and clipped at its borders.

    A pixel is painted when its centre lies in the square.

    Args:
        image: `(H, W, C)` pixels in `[0, 255]`, static shape.
        seed: shape-(2,) integer tensor.
        max_fraction: the largest side, as a fraction of the width.
        fill: the colour, one value per channel (default `CUTOUT_FILL_RGB`
            for 3 channels, `CUTOUT_FILL_GREY` otherwise).

    Returns:
        float32 pixels.
    """
    x = _pixels(image)
    height, width, channels = x.shape
    if fill is None:
        fill = CUTOUT_FILL_RGB if channels == 3 else (CUTOUT_FILL_GREY,) * channels
    side_seed, row_seed, col_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    half = tf.random.stateless_uniform([], side_seed, 0.0, max_fraction) * width / 2.0
    centre_row = tf.random.stateless_uniform([], row_seed, 0.0, float(height))
    centre_col = tf.random.stateless_uniform([], col_seed, 0.0, float(width))
    rows = ops.arange(height, dtype="float32")[:, None, None] + 0.5
    cols = ops.arange(width, dtype="float32")[None, :, None] + 0.5
    inside = ((rows >= centre_row - half) & (rows < centre_row + half)
              & (cols >= centre_col - half) & (cols < centre_col + half))
    return ops.where(inside, ops.convert_to_tensor(fill, "float32"), x)
