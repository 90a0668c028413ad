"""Adapters and the adapted image tower, with the official names and outputs."""
import torch
from torch import nn


class ClipAdapter(nn.Module):
    def __init__(self, c_in, bottleneck=768):
        super().__init__()
        self.fc1 = nn.Sequential(nn.Linear(c_in, bottleneck, bias=False), nn.LeakyReLU())
        self.fc2 = nn.Sequential(nn.Linear(bottleneck, c_in, bias=False), nn.LeakyReLU())

    def forward(self, x):
        hidden = self.fc1(x)
        return hidden, self.fc2(hidden)


class CLIP_Inplanted(nn.Module):
    def __init__(self, clip_model, features):
        super().__init__()
        self.image_encoder = clip_model.visual
        self.features = features
        width, joint = self.image_encoder.transformer.width, self.image_encoder.output_dim
        self.seg_adapters = nn.ModuleList([ClipAdapter(width, bottleneck=joint) for _ in features])
        self.det_adapters = nn.ModuleList([ClipAdapter(width, bottleneck=joint) for _ in features])

    def forward(self, x):
        visual = self.image_encoder
        x = visual.conv1(x).flatten(2).transpose(1, 2)
        cls = visual.class_embedding.expand(x.shape[0], 1, -1)
        x = visual.ln_pre(torch.cat([cls, x], dim=1) + visual.positional_embedding)
        seg_tokens, det_tokens = [], []
        for number, block in enumerate(visual.transformer.resblocks, start=1):
            x = block(x)
            if number in self.features:
                level = self.features.index(number)
                seg_hidden, seg_out = self.seg_adapters[level](x)
                det_hidden, det_out = self.det_adapters[level](x)
                x = 0.8 * x + 0.1 * seg_out + 0.1 * det_out
                seg_tokens.append(seg_hidden)
                det_tokens.append(det_hidden)
        unused = torch.zeros(1).to('cuda')   # the official code's one hard-wired device
        return unused, seg_tokens, det_tokens
