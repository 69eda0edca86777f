"""Images in: sources (folders, tar archives, CSV manifests, the built-in sample),
decoding to upright RGB, the preprocessing that travels with a backbone's weights,
training-time augmentation, the standard datasets and the demo's generated textures."""
