"""Helpers that only the notebooks and the book use: the real/tiny weights switch (notebook),
pictures and titled tables (viz), the paper's published numbers (paper), the exercises'
auto-checks (checks) and the results page's table of runs (results).
"""
