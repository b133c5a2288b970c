"""Old import paths, kept for tests/test_folder_skips.py and tests/test_hostile_files.py: the
commands are cli/NAME.py now, resolve_config is in cli/settings_flags.py and read_class_names
in data/class_names.py. Nothing in src/ imports this module; it goes when those tests move."""

from cifar100.cli.settings_flags import resolve_config
from cifar100.data.class_names import read_class_names

__all__ = ["read_class_names", "resolve_config"]
