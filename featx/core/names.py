"""Names that several layers use for the same thing."""

DEFAULT_LAYER = "embedding"  # the pooled penultimate features; other layers by their module names
