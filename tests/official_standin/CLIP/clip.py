"""create_model as the official scripts call it, building the tiny CLIP of mvfa-lite's tests."""
import open_clip
import torch

TINY = dict(embed_dim=64,
            vision_cfg=dict(image_size=240, layers=4, width=96, head_width=32, patch_size=14),
            text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=2, layers=2))


def create_model(model_name, img_size, device="cpu", pretrained=None, require_pretrained=False):
    config = {**TINY, "vision_cfg": {**TINY["vision_cfg"], "image_size": img_size}}
    model = open_clip.model.CLIP(**config)
    weights = torch.load("CLIP/ckpt/ViT-L-14-336px.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(weights)
    return model.to(device)
