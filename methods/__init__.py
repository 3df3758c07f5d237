"""Pretraining methods, chosen with `pretrain.py --method NAME` (methods/base.py: the contract).

Importing a method module registers it; the order here is the order of `list_methods()`.
Adding a method = its module (a `Method` subclass under `@register_method("name")`) plus one
import line below.
"""
from methods.base import Method, augmented_views, get_method, list_methods, register_method

DEFAULT_METHOD = "usdrl"

from methods import usdrl, umurl  # noqa: E402,F401  (isort: skip)

__all__ = ["DEFAULT_METHOD", "Method", "augmented_views", "get_method", "list_methods",
           "register_method"]
