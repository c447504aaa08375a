"""Attacks on ambiguated codes: each scores every public entry (higher = more likely
real); ``scoring`` turns scores into support recall, ROC AUC and decoded-image quality,
and ``suite`` runs them side by side."""
