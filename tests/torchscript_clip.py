"""Helper for test_model: a TorchScript archive holding CLIP weights, like OpenAI's files."""
import torch
from torch import nn


class ScriptedWeights(nn.Module):
    """Holds every parameter of an open_clip CLIP under the same names; forward is trivial."""

    def __init__(self, clip: nn.Module):
        super().__init__()
        for name, child in clip.named_children():
            self.add_module(name, child)
        for name, parameter in clip.named_parameters(recurse=False):
            self.register_parameter(name, parameter)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def save_torchscript(clip: nn.Module, path) -> None:
    torch.jit.script(ScriptedWeights(clip)).save(str(path))
