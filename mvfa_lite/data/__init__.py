"""Datasets on disk: the BMAD folder layout (layout), reading images and masks (images), the
few-shot shots and their x11 augmentation (shots), the catalogue of BMAD and shipped sets
(catalogue), and the synthetic lesions of the shipped chest X-ray set (synthlesions).
"""
