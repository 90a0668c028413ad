"""The focal loss (gamma 2, label smoothing 1e-5, on probabilities) and the dice loss."""
import torch
from torch import nn


class FocalLoss(nn.Module):
    def forward(self, probs, target, gamma=2, smooth=1e-5):
        probs = probs.flatten(2).transpose(1, 2).reshape(-1, probs.shape[1])   # (pixels, C)
        one_hot = torch.zeros_like(probs).scatter_(1, target.reshape(-1, 1).long(), 1)
        one_hot = one_hot.clamp(smooth, 1 - smooth)
        p_true = (one_hot * probs).sum(dim=1) + smooth
        return (-(1 - p_true) ** gamma * p_true.log()).mean()


class BinaryDiceLoss(nn.Module):
    def forward(self, prob, target):
        prob, target = prob.reshape(len(target), -1), target.reshape(len(target), -1)
        dice = (2 * (prob * target).sum(1) + 1) / (prob.sum(1) + target.sum(1) + 1)
        return 1 - dice.mean()
