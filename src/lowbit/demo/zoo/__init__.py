"""Real models and real photos that work offline: MobileNetV2 (pretrained), ResNet-18 (random, for
speed only), 20 labeled ImageNet photos and crops of unlabeled photos.

Install the data first: ``lowbit data fetch demo``.
"""

from __future__ import annotations

from lowbit.demo.zoo.mobilenet_v2 import MobileNetV2, mobilenet_v2, mobilenet_v2_weights_path
from lowbit.demo.zoo.photos import iter_photo_crops, labeled_imagenet_photos, photo_crops, photo_sources
from lowbit.demo.zoo.resnet18 import ResNet18, resnet18

__all__ = [
    "MobileNetV2",
    "ResNet18",
    "iter_photo_crops",
    "labeled_imagenet_photos",
    "mobilenet_v2",
    "mobilenet_v2_weights_path",
    "photo_crops",
    "photo_sources",
    "resnet18",
]
