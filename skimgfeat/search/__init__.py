"""Search a feature table or an index for the nearest photos and items."""
