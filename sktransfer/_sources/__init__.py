"""Source adapters: one module per library that backbones come from."""
