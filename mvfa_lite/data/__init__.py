"""Datasets on disk: the BMAD folder layout (layout), the user's own images for predict
(folder), reading images and masks (images), the few-shot shots and their x11 augmentation
(shots), the catalogue of BMAD and shipped sets (catalogue), and the synthetic lesions of the
shipped chest X-ray set (synthlesions).
"""
