"""The end of the read path: search hits → numbered context → a grounded, cited answer."""
