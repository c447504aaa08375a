"""How results are measured: image metrics, codec baselines, rate-distortion curves
and the comparison grid."""
