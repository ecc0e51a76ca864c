"""The in-process vector cache: FAISS indexes rebuilt from the chunks table and kept up to date
from the change log (see `cache.py`)."""
