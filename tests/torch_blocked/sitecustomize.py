"""Run by any Python started with this folder on ``PYTHONPATH`` (and by its child processes): torch, torchvision,
lightning, transformers, timm and open_clip cannot be imported there, as on the slim install."""

import sys
from importlib.abc import MetaPathFinder

HEAVY = {"torch", "torchvision", "lightning", "transformers", "timm", "open_clip"}


class Block(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HEAVY:
            raise ImportError(f"{name} is blocked")


sys.meta_path.insert(0, Block())
