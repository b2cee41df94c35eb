"""Photo quality measures: sharpness, exposure, colourfulness, size, JPEG quality."""
