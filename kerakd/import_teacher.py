"""`kerakd-import-teacher`: a PyTorch teacher checkpoint -> a `.keras` teacher.

    kerakd-import-teacher --model=resnet32x4 --checkpoint=ckpt_epoch_240.pth \\
        --num_classes=100 --output=teachers/resnet32x4_cifar100.keras
    python -m kerakd.import_teacher ...   # the same

Builds zoo model `--model`, fills every weight from the checkpoint
(`kerakd.models.from_pytorch`: RepDistiller/mdistiller `.pth`, a bare
state_dict, or a `.npz` of its arrays) and saves it with core Keras layers
only (`kerakd.models.core_keras`), so `kerakd-train --teacher=OUTPUT` and any
Keras process load it. Where to get the checkpoints, and the accuracy each
should show: docs/teachers.md.
"""

import argparse
import os
import sys

IMAGENET_MODELS = ("resnet18", "resnet34", "resnet50")


def _parser():
    parser = argparse.ArgumentParser(
        prog="kerakd-import-teacher",
        description="Converts a PyTorch teacher checkpoint (RepDistiller/mdistiller, "
                    "torchvision) into a .keras teacher for kerakd-train --teacher=. "
                    "See docs/teachers.md.",
    )
    parser.add_argument("--model", required=True,
                        help="zoo model of the checkpoint, e.g. resnet32x4, wrn_40_2, vgg13, "
                             "resnet50_cifar (RepDistiller's ResNet50), resnet34 (torchvision)")
    parser.add_argument("--checkpoint", required=True,
                        help=".pth/.pt (needs torch: pip install -e \".[torch]\") or .npz")
    parser.add_argument("--output", required=True, help="the .keras file to write")
    parser.add_argument("--num_classes", type=int, default=None,
                        help="classes of the checkpoint's classifier (default: read from it)")
    parser.add_argument("--image_size", type=int, default=None,
                        help="height = width of the images the teacher reads (default: 224 "
                             "for the ImageNet ResNets, else 32)")
    return parser


def _classes_in(state, name):
    from kerakd.models import pytorch_import

    _, key_of = pytorch_import._source(name)
    bias = state.get(f"{key_of('logits')}.bias")
    return int(bias.shape[0]) if bias is not None and bias.ndim == 1 else None


def convert(model, checkpoint, output, num_classes=None, image_size=None):
    """Converts and saves; returns the saved (core Keras) model."""
    import kerakd
    from kerakd.models import pytorch_import

    if not str(output).endswith(".keras"):
        raise ValueError(f"--output={output}: Keras saves a model to a path ending in .keras.")
    pytorch_import._source(model)  # an unknown name fails before any file is read
    state = pytorch_import.load_state_dict(checkpoint)
    if num_classes is None:
        num_classes = _classes_in(state, model) or 100
    if image_size is None:
        image_size = 224 if model in IMAGENET_MODELS else 32
    teacher = pytorch_import.from_state_dict(
        model, state, num_classes=num_classes, input_shape=(image_size, image_size, 3),
        source=pytorch_import._describe(checkpoint))
    deployable = kerakd.models.core_keras(teacher)
    directory = os.path.dirname(os.path.abspath(output))
    os.makedirs(directory, exist_ok=True)
    deployable.save(output)
    return deployable


def main(argv=None):
    """Runs the command line `argv` (without the program name)."""
    args = _parser().parse_args(argv)
    try:
        teacher = convert(args.model, args.checkpoint, args.output, args.num_classes,
                          args.image_size)
    except (ValueError, ImportError, OSError, TypeError) as error:
        raise SystemExit(f"kerakd-import-teacher: {error}") from error
    shape = "x".join(str(d) for d in teacher.inputs[0].shape[1:])
    print(f"kerakd-import-teacher: wrote {args.output}: {args.model}, "
          f"{teacher.count_params():,} parameters, {teacher.outputs[0].shape[-1]} classes, "
          f"{shape} images. Feed it the normalisation it was trained with "
          "(kerakd-train's cifar100 and imagenet2012 pipelines do; docs/teachers.md).")
    return 0


def run():
    """Entry point of the `kerakd-import-teacher` console script."""
    sys.exit(main())


if __name__ == "__main__":
    run()
