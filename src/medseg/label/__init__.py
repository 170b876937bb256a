"""Labelling: what to label next (`medseg suggest`) and the labelling page (`medseg label`)."""
