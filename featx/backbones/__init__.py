"""Pretrained networks by name, each with the preprocessing its weights were trained with
(:mod:`.registry` says which names exist; :mod:`.backbone` what a backbone is)."""
from __future__ import annotations

from .backbone import RANDOM_INIT, Backbone, Network
from .builtin import BUILTIN, PIXELS
from .registry import list_backbones, load_backbone
from .weights import load_state_dict_file

__all__ = ["BUILTIN", "PIXELS", "RANDOM_INIT", "Backbone", "Network", "list_backbones", "load_backbone",
           "load_state_dict_file"]
