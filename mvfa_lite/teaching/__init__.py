"""Helpers that only the notebooks and the book use: the real/tiny weights switch (notebook),
pictures and titled tables (viz), and the paper's published numbers (paper).
"""
