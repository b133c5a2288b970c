"""cifar100: the report's ResNet50V2 CIFAR-100 classifier, and better recipes beside it."""

__version__ = "0.1.0"
