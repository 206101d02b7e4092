"""PyTorch definitions of the reference architectures of kerakd's zoo.

Written after the published structure and state_dict key names of
RepDistiller/mdistiller (`models/resnet.py`, `resnetv2.py`, `wrn.py`,
`vgg.py`, `mobilenetv2.py`, `ShuffleNetv1.py`, `ShuffleNetv2.py`) and
torchvision (`models/resnet.py`); see docs/teachers.md. Two users: the
teacher-import tests (tests/test_import_teacher.py: a converted checkpoint
must give these models' outputs) and the PyTorch anchor of
benchmarks/throughput.py (their training step, timed against kerakd's). No
initialization schemes, no dropout, no `is_feat` switch. Every `forward`
returns `(taps, logits)`, `taps` an ordered dict from the zoo's tap names
(`stage1..N`, `pool`) to the matching NCHW tensors.

This module imports torch (the `torch` extra): kerakd itself never imports
it; import it only where torch is installed.

`build(zoo_name, num_classes, image_size)` makes the reference of a zoo name.
"""

import collections

import torch
import torch.nn.functional as F
from torch import nn


def _conv(cin, cout, k, stride=1, groups=1, bias=False):
    return nn.Conv2d(cin, cout, k, stride, padding=k // 2, groups=groups, bias=bias)


def _projection(cin, cout, stride):
    """1x1 conv + BN shortcut (the Sequential with keys .0 and .1)."""
    return nn.Sequential(_conv(cin, cout, 1, stride), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN + shortcut, ReLU: RepDistiller resnet.py,
    resnetv2.py and torchvision share it (the shortcut's attribute differs)."""

    def __init__(self, cin, cout, stride, shortcut="downsample"):
        super().__init__()
        self.conv1 = _conv(cin, cout, 3, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = _conv(cout, cout, 3)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut_name = shortcut
        needed = stride != 1 or cin != cout
        setattr(self, shortcut, _projection(cin, cout, stride) if needed else None)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        projection = getattr(self, self.shortcut_name)
        return F.relu(y + (x if projection is None else projection(x)))


class Bottleneck(nn.Module):
    """1x1-BN-ReLU, 3x3 (strided)-BN-ReLU, 1x1 (x4)-BN + shortcut, ReLU."""

    expansion = 4

    def __init__(self, cin, planes, stride, shortcut="downsample"):
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = _conv(cin, planes, 1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv(planes, planes, 3, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv(planes, cout, 1)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut_name = shortcut
        needed = stride != 1 or cin != cout
        setattr(self, shortcut, _projection(cin, cout, stride) if needed else None)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        projection = getattr(self, self.shortcut_name)
        return F.relu(y + (x if projection is None else projection(x)))


class CifarResNet(nn.Module):
    """RepDistiller resnet.py: 3x3 stem, three stages of basic blocks, fc."""

    def __init__(self, depth, widths, num_classes):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = _conv(3, widths[0], 3)
        self.bn1 = nn.BatchNorm2d(widths[0])
        cin = widths[0]
        for stage, cout in enumerate(widths[1:], start=1):
            blocks = [BasicBlock(cin if i == 0 else cout, cout, 2 if stage > 1 and i == 0 else 1)
                      for i in range(n)]
            setattr(self, f"layer{stage}", nn.Sequential(*blocks))
            cin = cout
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        taps = collections.OrderedDict()
        x = F.relu(self.bn1(self.conv1(x)))
        for stage in (1, 2, 3):
            x = taps[f"stage{stage}"] = getattr(self, f"layer{stage}")(x)
        x = taps["pool"] = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return taps, self.fc(x)


class FourStageResNet(nn.Module):
    """torchvision resnet.py (7x7/2 stem + max-pool, `downsample`, `fc`) or
    RepDistiller resnetv2.py (3x3/1 stem, `shortcut`, `linear`)."""

    def __init__(self, block, counts, num_classes, stem="imagenet"):
        super().__init__()
        imagenet = stem == "imagenet"
        shortcut = "downsample" if imagenet else "shortcut"
        self.imagenet = imagenet
        self.conv1 = (nn.Conv2d(3, 64, 7, 2, 3, bias=False) if imagenet else _conv(3, 64, 3))
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1) if imagenet else None
        cin = 64
        expansion = getattr(block, "expansion", 1)
        for stage, planes in enumerate((64, 128, 256, 512), start=1):
            blocks = []
            for i in range(counts[stage - 1]):
                blocks.append(block(cin, planes, 2 if stage > 1 and i == 0 else 1, shortcut))
                cin = planes * expansion
            setattr(self, f"layer{stage}", nn.Sequential(*blocks))
        self.classifier_name = "fc" if imagenet else "linear"
        setattr(self, self.classifier_name, nn.Linear(cin, num_classes))

    def forward(self, x):
        taps = collections.OrderedDict()
        x = F.relu(self.bn1(self.conv1(x)))
        if self.maxpool is not None:
            x = self.maxpool(x)
        for stage in (1, 2, 3, 4):
            x = taps[f"stage{stage}"] = getattr(self, f"layer{stage}")(x)
        x = taps["pool"] = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return taps, getattr(self, self.classifier_name)(x)


class WideBlock(nn.Module):
    """RepDistiller wrn.py BasicBlock: pre-activation; the 1x1 shortcut (only
    where the width changes) reads the activated input."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = _conv(cin, cout, 3, stride)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = _conv(cout, cout, 3)
        self.equal = cin == cout
        self.convShortcut = None if self.equal else _conv(cin, cout, 1, stride)

    def forward(self, x):
        activated = F.relu(self.bn1(x))
        y = self.conv2(F.relu(self.bn2(self.conv1(activated))))
        return y + (x if self.equal else self.convShortcut(activated))


class NetworkBlock(nn.Module):
    def __init__(self, n, cin, cout, stride):
        super().__init__()
        self.layer = nn.Sequential(*[
            WideBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1) for i in range(n)])

    def forward(self, x):
        return self.layer(x)


class WideResNet(nn.Module):
    def __init__(self, depth, widen, num_classes):
        super().__init__()
        n = (depth - 4) // 6
        widths = (16, 16 * widen, 32 * widen, 64 * widen)
        self.conv1 = _conv(3, 16, 3)
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2)
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)

    def forward(self, x):
        taps = collections.OrderedDict()
        x = self.conv1(x)
        for stage in (1, 2, 3):
            x = taps[f"stage{stage}"] = getattr(self, f"block{stage}")(x)
        x = F.relu(self.bn1(x))
        x = taps["pool"] = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return taps, self.fc(x)


VGG_CFG = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
}


class VGG(nn.Module):
    """RepDistiller vgg.py with batch_norm=True: block0..4 Sequentials of
    conv (with bias), BN, ReLU (the last ReLU dropped), max-pools between
    them (before block4 only at 64 px), adaptive pooling, one Linear."""

    def __init__(self, cfg, num_classes):
        super().__init__()
        cin = 3
        for g, widths in enumerate(cfg):
            layers = []
            for width in widths:
                layers += [_conv(cin, width, 3, bias=True), nn.BatchNorm2d(width), nn.ReLU()]
                cin = width
            setattr(self, f"block{g}", nn.Sequential(*layers[:-1]))
        self.classifier = nn.Linear(512, num_classes)

    def forward(self, x):
        taps = collections.OrderedDict()
        h = x.shape[2]
        x = F.relu(self.block0(x))
        for g in (1, 2, 3, 4):
            if g < 4 or h == 64:
                x = F.max_pool2d(x, 2)
            x = taps[f"stage{g}"] = F.relu(getattr(self, f"block{g}")(x))
        x = taps["pool"] = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return taps, self.classifier(x)


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, t):
        super().__init__()
        mid = cin * t
        self.residual = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            _conv(cin, mid, 1), nn.BatchNorm2d(mid), nn.ReLU(),
            _conv(mid, mid, 3, stride, groups=mid), nn.BatchNorm2d(mid), nn.ReLU(),
            _conv(mid, cout, 1), nn.BatchNorm2d(cout),
        )

    def forward(self, x):
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2(nn.Module):
    """RepDistiller mobilenetv2.py `mobile_half` (T=6, width 0.5)."""

    SETTING = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2),
               (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
    TAPPED = (1, 2, 4, 6)

    def __init__(self, num_classes, input_size=32, width=0.5):
        super().__init__()
        cin = int(32 * width)
        self.conv1 = nn.Sequential(_conv(3, cin, 3, 2), nn.BatchNorm2d(cin), nn.ReLU())
        self.blocks = nn.ModuleList()
        for t, c, n, s in self.SETTING:
            cout = int(c * width)
            units = []
            for i in range(n):
                units.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
            self.blocks.append(nn.Sequential(*units))
        self.conv2 = nn.Sequential(_conv(cin, 1280, 1), nn.BatchNorm2d(1280), nn.ReLU())
        self.classifier = nn.Sequential(nn.Linear(1280, num_classes))
        self.avgpool = nn.AvgPool2d(input_size // 16, ceil_mode=True)

    def forward(self, x):
        taps = collections.OrderedDict()
        x = self.conv1(x)
        for g, group in enumerate(self.blocks):
            x = group(x)
            if g in self.TAPPED:
                taps[f"stage{self.TAPPED.index(g) + 1}"] = x
        x = taps["pool"] = torch.flatten(self.avgpool(self.conv2(x)), 1)
        return taps, self.classifier(x)


def channel_shuffle(x, groups):
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).permute(0, 2, 1, 3, 4).reshape(n, c, h, w)


class ShuffleUnitV1(nn.Module):
    def __init__(self, cin, cout, stride, groups):
        super().__init__()
        mid = cout // 4
        self.g = 1 if cin == 24 else groups
        self.stride = stride
        self.conv1 = _conv(cin, mid, 1, groups=self.g)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = _conv(mid, mid, 3, stride, groups=mid)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = _conv(mid, cout, 1, groups=groups)
        self.bn3 = nn.BatchNorm2d(cout)

    def forward(self, x):
        y = channel_shuffle(F.relu(self.bn1(self.conv1(x))), self.g)
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        if self.stride == 2:
            return F.relu(torch.cat([y, F.avg_pool2d(x, 3, 2, 1)], 1))
        return F.relu(y + x)


class ShuffleNetV1(nn.Module):
    """RepDistiller ShuffleNetv1.py `ShuffleV1` (groups 3, 240/480/960, 4/8/4)."""

    def __init__(self, num_classes, widths=(240, 480, 960), units=(4, 8, 4), groups=3):
        super().__init__()
        self.conv1 = _conv(3, 24, 1)
        self.bn1 = nn.BatchNorm2d(24)
        cin = 24
        for stage, (width, n) in enumerate(zip(widths, units), start=1):
            layer = []
            for i in range(n):
                # A stride-2 unit's branch is narrower: its input is concatenated.
                layer.append(ShuffleUnitV1(cin, width - (cin if i == 0 else 0),
                                           2 if i == 0 else 1, groups))
                cin = width
            setattr(self, f"layer{stage}", nn.Sequential(*layer))
        self.linear = nn.Linear(widths[-1], num_classes)

    def forward(self, x):
        taps = collections.OrderedDict()
        x = F.relu(self.bn1(self.conv1(x)))
        for stage in (1, 2, 3):
            x = taps[f"stage{stage}"] = getattr(self, f"layer{stage}")(x)
        x = taps["pool"] = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return taps, self.linear(x)


class DownUnitV2(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        mid = cout // 2
        self.conv1 = _conv(cin, cin, 3, 2, groups=cin)
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv2 = _conv(cin, mid, 1)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = _conv(cin, mid, 1)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = _conv(mid, mid, 3, 2, groups=mid)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = _conv(mid, mid, 1)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x):
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return channel_shuffle(torch.cat([left, right], 1), 2)


class BasicUnitV2(nn.Module):
    def __init__(self, channels):
        super().__init__()
        c = channels // 2
        self.conv1 = _conv(c, c, 1)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = _conv(c, c, 3, groups=c)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = _conv(c, c, 1)
        self.bn3 = nn.BatchNorm2d(c)

    def forward(self, x):
        c = x.shape[1] // 2
        kept, y = x[:, :c], x[:, c:]
        y = F.relu(self.bn1(self.conv1(y)))
        y = self.bn2(self.conv2(y))
        y = F.relu(self.bn3(self.conv3(y)))
        return channel_shuffle(torch.cat([kept, y], 1), 2)


class ShuffleNetV2(nn.Module):
    """RepDistiller ShuffleNetv2.py `ShuffleV2` (net_size 1)."""

    def __init__(self, num_classes, widths=(116, 232, 464), units=(3, 7, 3), last=1024):
        super().__init__()
        self.conv1 = _conv(3, 24, 1)
        self.bn1 = nn.BatchNorm2d(24)
        cin = 24
        for stage, (width, n) in enumerate(zip(widths, units), start=1):
            layer = [DownUnitV2(cin, width)] + [BasicUnitV2(width) for _ in range(n)]
            setattr(self, f"layer{stage}", nn.Sequential(*layer))
            cin = width
        self.conv2 = _conv(cin, last, 1)
        self.bn2 = nn.BatchNorm2d(last)
        self.linear = nn.Linear(last, num_classes)

    def forward(self, x):
        taps = collections.OrderedDict()
        x = F.relu(self.bn1(self.conv1(x)))
        for stage in (1, 2, 3):
            x = taps[f"stage{stage}"] = getattr(self, f"layer{stage}")(x)
        x = F.relu(self.bn2(self.conv2(x)))
        x = taps["pool"] = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return taps, self.linear(x)


CIFAR_RESNETS = {
    "resnet8": (8, (16, 16, 32, 64)), "resnet14": (14, (16, 16, 32, 64)),
    "resnet20": (20, (16, 16, 32, 64)), "resnet32": (32, (16, 16, 32, 64)),
    "resnet44": (44, (16, 16, 32, 64)), "resnet56": (56, (16, 16, 32, 64)),
    "resnet110": (110, (16, 16, 32, 64)), "resnet8x4": (8, (32, 64, 128, 256)),
    "resnet32x4": (32, (32, 64, 128, 256)),
}
FOUR_STAGE = {
    "resnet18": (BasicBlock, (2, 2, 2, 2), "imagenet"),
    "resnet34": (BasicBlock, (3, 4, 6, 3), "imagenet"),
    "resnet50": (Bottleneck, (3, 4, 6, 3), "imagenet"),
    "resnet18_cifar": (BasicBlock, (2, 2, 2, 2), "cifar"),
    "resnet34_cifar": (BasicBlock, (3, 4, 6, 3), "cifar"),
    "resnet50_cifar": (Bottleneck, (3, 4, 6, 3), "cifar"),
}
WRNS = {"wrn_16_1": (16, 1), "wrn_16_2": (16, 2), "wrn_40_1": (40, 1), "wrn_40_2": (40, 2)}


def build(name, num_classes=100, image_size=32):
    """The reference PyTorch model of zoo model `name`."""
    if name in CIFAR_RESNETS:
        return CifarResNet(*CIFAR_RESNETS[name], num_classes)
    if name in FOUR_STAGE:
        return FourStageResNet(*FOUR_STAGE[name][:2], num_classes, stem=FOUR_STAGE[name][2])
    if name in WRNS:
        return WideResNet(*WRNS[name], num_classes)
    if name in VGG_CFG:
        return VGG(VGG_CFG[name], num_classes)
    if name == "mobilenetv2":
        return MobileNetV2(num_classes, input_size=image_size)
    if name == "shufflenetv1":
        return ShuffleNetV1(num_classes)
    if name == "shufflenetv2":
        return ShuffleNetV2(num_classes)
    raise KeyError(name)


def randomize(model, images, seed=0):
    """Random BN affine parameters and non-trivial running statistics.

    gamma ~ U(0.5, 1.5), beta ~ N(0, 0.1); the running statistics are first
    measured on `images` (one train-mode pass with a cumulative average, so
    activations stay O(1) in deep nets), then perturbed: mean + N(0, 0.1) *
    std, var * U(0.5, 1.5). A mean/variance swap or a wrong layout then shows.
    """
    generator = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for bn in bns:
            c = bn.num_features
            bn.weight.copy_(0.5 + torch.rand(c, generator=generator))
            bn.bias.copy_(0.1 * torch.randn(c, generator=generator))
            bn.reset_running_stats()
            bn.momentum = None
        model.train()
        model(images)
        for bn in bns:
            c = bn.num_features
            std = bn.running_var.sqrt()
            bn.running_mean.add_(0.1 * std * torch.randn(c, generator=generator))
            bn.running_var.mul_(0.5 + torch.rand(c, generator=generator))
            bn.momentum = 0.1
    return model.eval()
