"""Is it the same photo (a copy) or the same object (a re-photographed lot)? Hashes, local features, geometry."""
