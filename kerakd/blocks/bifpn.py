"""BiFPNc, the self-teacher of FRSKD (docs/methods/frskd.md), as a functional Keras model.

The self-teacher reads the classifier's stage features (shallow to deep, each
stage halving H and W), refines them along a top-down and a bottom-up path
with fast normalised fusion, and classifies the deepest refined map. Level
`i` works at `width * c_i` channels. Every convolution is bias-free.

Layer names (used by tests and TensorBoard): `lat{i}_*`, `lat2_{i}_*`
(laterals), `td{j}_*` (top-down nodes; `td{j}_up_*` their up-sampling path),
`out{i}_*` (bottom-up nodes; `out{i}_down_*` their down-sampling path),
`*_fusion` (fusion weights), `refined{i}`, `pool`, `logits`.

Follows the authors' code (MingiJi/FRSKD, `models/bifpnc.py`) where the paper
is loose: nearest (not bilinear) up-sampling, a max-pool with TensorFlow
"SAME" padding for down-sampling, one BiFPN layer of depth 2. Every
convolution and the classifier keep PyTorch's default initialization, as
the reference does (it sets none).
"""

import keras
from keras import ops

from kerakd.models import layers as L
from kerakd.nn import layers as nn_layers

# Separable convolutions per DCB3x3 block (the reference's `--depth 2`).
BLOCK_DEPTH = 2


@keras.saving.register_keras_serializable(package="kerakd")
class FastNormalizedFusion(keras.layers.Layer):
    """Weighted sum `sum_k w_k x_k` with `w = relu(p) / (sum relu(p) + eps)`.

    EfficientDet's "fast normalised fusion": one learnable scalar `p_k` per
    input, initialised to one. The ReLU keeps the effective weights
    non-negative whatever value the optimizer gives `p`.

    Args:
        epsilon: added to the denominator (default 1e-6, the reference's).

    Example:

    >>> from kerakd.blocks.bifpn import FastNormalizedFusion
    >>> lateral, upsampled = np.ones((1, 2, 2, 3)), np.full((1, 2, 2, 3), 4.0)
    >>> fused = FastNormalizedFusion(name="td0_fusion")([lateral, upsampled])
    >>> keras.ops.convert_to_numpy(fused)[0, 0, 0].round(4)   # weights 1/2, 1/2 at the start
    array([2.5, 2.5, 2.5], dtype=float32)
    """

    def __init__(self, epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon

    def build(self, input_shape):
        shapes = [tuple(s) for s in input_shape]
        if len(shapes) < 2 or any(s[1:] != shapes[0][1:] for s in shapes):
            raise ValueError(
                f"{self.name} fuses two or more tensors of one shape; got "
                f"shapes {shapes}."
            )
        self.fusion_weights = self.add_weight(
            shape=(len(shapes),), initializer="ones", name="fusion_weights"
        )

    def normalized_weights(self):
        """The effective weights `relu(p) / (sum relu(p) + eps)`, all >= 0."""
        w = ops.relu(ops.convert_to_tensor(self.fusion_weights))
        return w / (ops.sum(w) + self.epsilon)

    def call(self, inputs):
        w = ops.cast(self.normalized_weights(), inputs[0].dtype)
        fused = w[0] * inputs[0]
        for k in range(1, len(inputs)):
            fused = fused + w[k] * inputs[k]
        return fused

    def get_config(self):
        config = super().get_config()
        config.update(epsilon=self.epsilon)
        return config


def conv_bn_relu(x, filters, name):
    """DCB1x1: conv1x1 -> BN -> ReLU."""
    x = L.conv(x, filters, 1, name=f"{name}_conv", init="torch_default")
    x = L.batch_norm(f"{name}_bn")(x)
    return L.relu(x, name=f"{name}_relu")


def separable_block(x, name, depth=BLOCK_DEPTH):
    """DCB3x3: [depthwise3x3 -> conv1x1 -> BN], then `depth - 1` times
    [ReLU -> depthwise3x3 -> conv1x1 -> BN]; no final ReLU."""
    filters = x.shape[-1]
    for k in range(1, depth + 1):
        if k > 1:
            x = L.relu(x, name=f"{name}_relu{k}")
        x = L.depthwise_conv(x, 3, name=f"{name}_dw{k}", init="torch_default")
        x = L.conv(x, filters, 1, name=f"{name}_pw{k}", init="torch_default")
        x = L.batch_norm(f"{name}_bn{k}")(x)
    return x


def check_pyramid(feature_shapes):
    """Raises a ValueError unless the shapes form a pyramid BiFPNc can read."""
    shapes = [tuple(s) for s in feature_shapes]
    if len(shapes) < 2:
        raise ValueError(
            f"BiFPNc needs at least two feature maps (stages) to fuse; got "
            f"{len(shapes)}. Tap two or more stages of the classifier."
        )
    for i, shape in enumerate(shapes):
        if len(shape) != 4 or None in shape[1:]:
            raise ValueError(
                f"BiFPNc reads (B, H, W, C) feature maps of static size; "
                f"feature {i} has shape {shape}. Tap convolutional stage "
                "outputs of a model with a fixed input size."
            )
    for i in range(1, len(shapes)):
        (h0, w0), (h1, w1) = shapes[i - 1][1:3], shapes[i][1:3]
        if (h0, w0) != (2 * h1, 2 * w1):
            raise ValueError(
                f"BiFPNc needs each feature map to halve the previous one's "
                f"height and width; features {i - 1} and {i} are {h0}x{w0} "
                f"and {h1}x{w1}. Tap stage outputs, listed shallow to deep, "
                "from an input size divisible by 2**(stages - 1)."
            )


def bifpnc(feature_shapes, num_classes, width=2, name="bifpnc"):
    """Builds the BiFPNc self-teacher for features of the given shapes.

    Args:
        feature_shapes: `[(B, H_i, W_i, c_i), ...]`, shallow to deep, each
            halving the previous height and width (B may be None).
        num_classes: number of classes of the self-teacher's head.
        width: channel multiplier `w`: level `i` works at `w * c_i`.
        name: name of the model.

    Returns:
        A functional `keras.Model` mapping the list of features to
        `[relu(o_0), ..., relu(o_{n-1}), logits]`.

    Example:

    >>> from kerakd.blocks.bifpn import bifpnc
    >>> shapes = [(8, 16, 16, 16), (8, 8, 8, 32), (8, 4, 4, 64)]   # resnet8's stages
    >>> teacher = bifpnc(shapes, 100)
    >>> features = [np.random.rand(*shape).astype("float32") for shape in shapes]
    >>> *refined, logits = teacher(features, training=True)
    >>> [tuple(f.shape) for f in refined], tuple(logits.shape)   # width 2: twice the channels
    ([(8, 16, 16, 32), (8, 8, 8, 64), (8, 4, 4, 128)], (8, 100))
    """
    check_pyramid(feature_shapes)
    inputs = [
        keras.Input(shape=tuple(s[1:]), name=f"feature{i}")
        for i, s in enumerate(feature_shapes)
    ]
    n = len(inputs)
    channels = [width * s[-1] for s in feature_shapes]
    lateral = [conv_bn_relu(f, channels[i], f"lat{i}") for i, f in enumerate(inputs)]
    lateral2 = [None] + [
        conv_bn_relu(inputs[i], channels[i], f"lat2_{i}") for i in range(1, n)
    ]

    top_down = [None] * n
    top_down[-1] = lateral[-1]
    for j in range(n - 2, -1, -1):
        up = L.relu(top_down[j + 1], name=f"td{j}_up_relu_in")
        up = keras.layers.UpSampling2D(2, interpolation="nearest", name=f"td{j}_upsample")(up)
        up = conv_bn_relu(up, channels[j], f"td{j}_up")
        fused = FastNormalizedFusion(name=f"td{j}_fusion")([lateral[j], up])
        top_down[j] = separable_block(fused, f"td{j}")

    outputs = [top_down[0]]
    for i in range(1, n):
        down = L.relu(outputs[-1], name=f"out{i}_down_relu_in")
        down = keras.layers.MaxPooling2D(3, 2, padding="same", name=f"out{i}_maxpool")(down)
        down = conv_bn_relu(down, channels[i], f"out{i}_down")
        nodes = [lateral2[i], down]
        if i < n - 1:
            nodes.insert(1, L.relu(top_down[i], name=f"td{i}_relu_out"))
        fused = FastNormalizedFusion(name=f"out{i}_fusion")(nodes)
        outputs.append(separable_block(fused, f"out{i}"))

    refined = [L.relu(o, name=f"refined{i}") for i, o in enumerate(outputs)]
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(refined[-1])
    logits = nn_layers.linear(num_classes, pooled.shape[-1], name="logits")(pooled)
    return keras.Model(inputs, [*refined, logits], name=name)
