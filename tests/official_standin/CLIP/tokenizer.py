from open_clip.tokenizer import tokenize  # noqa: F401
