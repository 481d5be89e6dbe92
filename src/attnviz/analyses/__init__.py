"""What attnviz computes from a model and a text: attention results, head statistics and
detectors, value weighting and rollout, steps, attribution, generation, scans and their
runs and series, and training. Numbers only (numpy, torch): no pictures, no display."""
