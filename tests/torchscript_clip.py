"""Helper for the weights tests: a TorchScript archive holding CLIP weights, like OpenAI's
files (ViT-L-14-336px.pt): a scripted module whose state-dict keys are OpenAI's (open_clip's
CLIP uses the same names), plus the integer entries OpenAI's archives carry
(``input_resolution``, ``context_length``, ``vocab_size``), in float16 when asked (OpenAI's
files are float16)."""
import torch
from torch import nn


class ScriptedWeights(nn.Module):
    """Holds every parameter of an open_clip CLIP under the same names; forward is trivial."""

    def __init__(self, clip: nn.Module, openai_entries: bool = False):
        super().__init__()
        for name, child in clip.named_children():
            self.add_module(name, child)
        for name, parameter in clip.named_parameters(recurse=False):
            self.register_parameter(name, parameter)
        if openai_entries:
            visual = clip.visual
            side = visual.grid_size[0] * visual.patch_size[0]
            for name, value in (("input_resolution", side),
                                ("context_length", clip.context_length),
                                ("vocab_size", clip.vocab_size)):
                self.register_buffer(name, torch.tensor(value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def save_torchscript(clip: nn.Module, path, half: bool = False,
                     openai_entries: bool = False) -> None:
    if half:
        clip = clip.half()
    torch.jit.script(ScriptedWeights(clip, openai_entries)).save(str(path))
