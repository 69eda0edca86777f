"""Feature recipes: multi-layer, stacked, flip-averaged or higher-resolution features
(:mod:`.recipe`), each composed from its parts' stores into a store of its own
(:mod:`.features`); ``search: auto`` builds a set from a pipeline's backbones
(:mod:`.search`). A head fitted on a recipe's blocks weighs them alike with
:class:`featx.heads.BlockScaler`."""
from .features import RecipeStore, block_widths, networks, recipe_store
from .recipe import Part, Recipe, RecipeError, parse
from .search import candidates

__all__ = ["Part", "Recipe", "RecipeError", "RecipeStore", "block_widths", "candidates", "networks", "parse",
           "recipe_store"]
