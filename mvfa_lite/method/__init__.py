"""The paper's method: a frozen CLIP ViT with residual adapters at four levels, the prompt
ensemble, the zero-shot and few-shot branches and their fusion, and the losses.

Read in this order: backbone -> adapters -> prompts -> model -> branches -> losses.
Nothing here reads files of datasets or runs a training loop; these modules import only
mvfa_lite.config, mvfa_lite.errors and mvfa_lite.runtime (checked by import-linter).
"""
