"""Training the network itself: fine-tuning (or training from scratch) on the same
splits as the heads (:mod:`.run`); settings (:mod:`.settings`), splits
(:mod:`.splits`), the network and its schedule (:mod:`.network`), LP-FT's linear probe
(:mod:`.probe`), the run folder and checkpoints (:mod:`.state`), the loop (:mod:`.loop`)."""
from __future__ import annotations

from .run import finetune
from .settings import STRATEGIES, FinetuneError, Settings
from .state import CHECKPOINT, METRICS, MODEL, FinetuneResult, TrainState, load_checkpoint

__all__ = ["CHECKPOINT", "METRICS", "MODEL", "STRATEGIES", "FinetuneError", "FinetuneResult", "Settings",
           "TrainState", "finetune", "load_checkpoint"]
