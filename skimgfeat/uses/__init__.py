"""The uses of features: similarity search, duplicates, photo quality, stacking."""
