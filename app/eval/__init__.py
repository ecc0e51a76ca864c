"""Scoring the engine against judged queries: BEIR collections in, nDCG, recall and MRR out."""
