"""Every picture attnviz draws (matplotlib without pyplot; never torch): heatmaps and their
grids, colours, fonts and image bytes, lines, and the pictures of steps, scans, attribution,
generation and training."""
