"""Attacks on ambiguated codes, one module per kind, each registered by name
(``registry``): an attack scores each public entry (higher = more likely real) or
reconstructs the image directly (``learned_inversion``); ``scoring`` turns scores into
support recall, ROC AUC and decoded-image quality, ``suite`` runs them side by side.
``second_release`` compares two records of one image, ``identity`` asks a face
recognizer who is in a reconstruction, ``linkage`` finds a photo's record. The study
behind ``imambig attack`` is ``imambig.study.privacy_experiment``."""
