"""The curated compatibility matrix: typed entries (model.py) loaded and validated from compat_matrix/ (loader.py)."""
