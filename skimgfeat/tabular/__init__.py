"""Photos beside tabular data: stacking, cross-fitting and visual comparables for prices."""
