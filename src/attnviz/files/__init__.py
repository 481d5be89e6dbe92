"""What attnviz writes and how: atomic writes, output folders and their manifests, .npz,
tables and JSON/CSV on stdout, progress bars."""
