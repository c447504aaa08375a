"""Attacks on ambiguated codes, one module per kind, each registered by name
(``registry``): every attack scores each public entry (higher = more likely real);
``scoring`` turns scores into support recall, ROC AUC and decoded-image quality,
``suite`` runs them side by side and ``experiment`` is the study behind
``imambig attack``."""
