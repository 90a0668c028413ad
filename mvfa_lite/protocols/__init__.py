"""The few-shot and leave-one-dataset-out protocols: training (train), scoring a split
(evaluate), the metrics, adapter checkpoints, and whole experiments (experiment: train,
evaluate a checkpoint, predict), built on mvfa_lite.method and mvfa_lite.data.
"""
