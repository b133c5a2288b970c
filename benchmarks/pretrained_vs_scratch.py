"""Does ImageNet pretraining pay? The same short run with and without the weights.

    python benchmarks/pretrained_vs_scratch.py [--data ../shared/data/cifar10-jpeg.tar.gz]

`vary_setting.py model.weights=imagenet,none`: one backbone trained twice on an image-folder
dataset (by default the real CIFAR-10 JPEGs), identical in every setting but `model.weights`.
"""

from __future__ import annotations

import sys

from vary_setting import main

if __name__ == "__main__":
    main(["model.weights=imagenet,none", *sys.argv[1:]])
