"""Cell features: GLCM texture of nucleus and cytoplasm, plus shape and colour measurements."""
