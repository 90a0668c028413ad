"""The frozen CLIP backbone: loading any open_clip ViT, its weights, and a tapped forward.

MVFA runs OpenAI's ViT-L/14@336 at 240 px, so the 24x24 grid of positional embeddings is
resized (bicubic, antialiased) to 17x17; open_clip does exactly that when it is asked for
``force_image_size=240``. Weights are resolved in this order and reported in every result:

1. an explicit checkpoint file (argument, or the ``MVFA_CLIP_CHECKPOINT`` environment variable);
2. open_clip's own download of the pretrained tag (needs internet);
3. ``pretrained="random"``: random weights, for tests and speed benchmarks only. Anything
   computed with them is flagged ``weights_random=True`` and is never a result. They are
   drawn from a fixed seed (:data:`RANDOM_WEIGHTS_SEED`), so the same random weights are
   built again when the adapters trained on them are evaluated.

``model_name="tiny-random"`` is a 4-block ViT with random weights that runs the whole
pipeline in seconds on a CPU; it takes no weights file (an explicit one is refused, so it
is never silently ignored).
"""
from __future__ import annotations

import hashlib
import math
import os
import time
import warnings
import zipfile
from contextlib import contextmanager
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.weak import WeakTensorKeyDictionary

from ..errors import WeightsError, unreadable_reason
from ..outputs import atomic_write
from ..runtime import autocast, cache_folder

CHECKPOINT_ENV = "MVFA_CLIP_CHECKPOINT"
RANDOM_WEIGHTS_SEED = 0
TINY_MODEL = "tiny-random"
# vision width 96 != joint width 64, so shape mistakes between the two cannot hide in tests
TINY_CONFIG = dict(
    embed_dim=64,
    vision_cfg=dict(image_size=240, layers=4, width=96, head_width=32, patch_size=14),
    text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=2, layers=2),
)
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def default_levels(layers: int) -> tuple[int, ...]:
    """The four quarters of the depth: (6, 12, 18, 24) for 24 blocks, (3, 6, 9, 12) for 12."""
    return tuple(sorted({max(1, round(layers * q / 4)) for q in (1, 2, 3, 4)}))


class Backbone(nn.Module):
    """A frozen open_clip CLIP whose vision tower can be run block by block.

    Attributes: ``width`` (token width W), ``embed_dim`` (joint text-image width D),
    ``grid`` (patches per side), ``layers`` (blocks), ``identity`` (what produced the weights).
    """

    def __init__(self, clip: nn.Module, tokenizer, identity: dict):
        super().__init__()
        visual = clip.visual
        if not isinstance(visual, open_clip.transformer.VisionTransformer):
            raise WeightsError(
                f"{identity['model_name']} has a {type(visual).__name__} image tower; mvfa-lite "
                "needs an open_clip VisionTransformer (a ViT-* model without a timm tower).")
        self.clip = clip.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.identity = identity
        self.compiled = False                     # compile_blocks() sets it
        self.width = visual.transformer.width
        self.layers = len(visual.transformer.resblocks)
        self.embed_dim = visual.output_dim
        self.grid = visual.grid_size[0]
        mean = getattr(visual, "image_mean", None) or OPENAI_MEAN
        std = getattr(visual, "image_std", None) or OPENAI_STD
        self.register_buffer("pixel_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @property
    def blocks(self) -> nn.ModuleList:
        return self.clip.visual.transformer.resblocks

    def embed(self, images: torch.Tensor, normalize: bool) -> torch.Tensor:
        """Pixels (B, 3, S, S) in [0, 1] -> tokens (B, 1 + grid**2, W) entering block 1."""
        visual = self.clip.visual
        if normalize:
            images = (images - self.pixel_mean) / self.pixel_std
        x = visual.conv1(images.to(visual.conv1.weight.dtype))   # (B, W, g, g)
        x = x.flatten(2).transpose(1, 2)                         # (B, g*g, W)
        cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
        return visual.ln_pre(x)

    def run_blocks(self, x: torch.Tensor, start: int, end: int) -> torch.Tensor:
        """Tokens (B, T, W) through blocks start+1 .. end (1-indexed), batch-first SDPA."""
        for block in self.blocks[start:end]:
            x = _block_forward(block, x)
        return x

    def compile_blocks(self) -> None:
        """Run the blocks through ``torch.compile`` from now on (inductor fuses the norms and
        elementwise work between the matrix products; one graph per span of blocks and
        batch size, compiled at its first call)."""
        self.run_blocks = torch.compile(Backbone.run_blocks.__get__(self))
        self.compiled = True

    def compile_timing(self, precision: str, end: int) -> tuple[float, float]:
        """Seconds of one training pass (forward and backward, batch 1) through blocks
        1 .. ``end``, eager and compiled (best of 3, after compiling), on this backbone's
        device in ``precision``: what ``--compile auto`` decides by."""
        device = self.pixel_mean.device
        tokens = torch.randn(1, 1 + self.grid**2, self.width, device=device, requires_grad=True)
        compiled = torch.compile(Backbone.run_blocks.__get__(self))

        def seconds(run) -> float:
            best = float("inf")
            for _ in range(4):                                  # the first one warms up
                start = time.perf_counter()
                with autocast(device, precision):
                    run(tokens, 0, end).float().square().mean().backward()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                best = min(best, time.perf_counter() - start)
            return best
        return seconds(Backbone.run_blocks.__get__(self)), seconds(compiled)

    @torch.no_grad()
    def encode_text(self, sentences: list[str]) -> torch.Tensor:
        """Sentences -> L2-normalised joint-space embeddings (T, D), float32.

        CLIP's text tower is causal and reads the end-of-text token, so the padding after the
        longest sentence cannot change the result: it is cut off (the prompt sentences use
        about 20 of the 77 positions, so the ensemble costs ~4x less)."""
        device = self.pixel_mean.device
        tokens = self.tokenizer(sentences).to(device)                # (T, 77)
        clip = self.clip
        if getattr(clip, "text_pool_type", None) != "argmax" or clip.attn_mask is None:
            return nn.functional.normalize(clip.encode_text(tokens).float(), dim=-1)
        n = int(tokens.argmax(dim=-1).max()) + 1                    # through the last end token
        tokens = tokens[:, :n]
        x = clip.token_embedding(tokens) + clip.positional_embedding[:n]
        x = clip.ln_final(clip.transformer(x, attn_mask=clip.attn_mask[:n, :n]))
        x = x[torch.arange(len(tokens), device=device), tokens.argmax(dim=-1)]   # (T, W)
        projection = clip.text_projection
        x = projection(x) if isinstance(projection, nn.Linear) else x @ projection
        return nn.functional.normalize(x.float(), dim=-1)

    def train(self, mode: bool = True):
        return super().train(False)   # frozen: dropout and friends stay off


def _block_forward(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """One open_clip residual block on batch-first, contiguous tensors (B, T, W).
    nn.MultiheadAttention transposes to (T, B, W) first, which in bf16 on CPU hits a copy that
    is ~100x slower than the maths. Its projections take their weights from
    :func:`_in_autocast_dtype`. Other block types run their own forward."""
    attn = getattr(block, "attn", None)
    if not isinstance(attn, nn.MultiheadAttention) or hasattr(block, "ln_1_kv"):
        return block(x)
    b, t, w = x.shape
    heads = attn.num_heads
    qkv = F.linear(block.ln_1(x), _in_autocast_dtype(attn.in_proj_weight),
                   _in_autocast_dtype(attn.in_proj_bias))                   # (B, T, 3W)
    q, k, v = qkv.view(b, t, 3, heads, w // heads).permute(2, 0, 3, 1, 4)     # (B, H, T, W/H)
    out = _attention(q, k, v).transpose(1, 2).reshape(b, t, w)
    x = x + block.ls_1(_linear(attn.out_proj, out))
    h = block.ln_2(x)
    for layer in block.mlp:                           # c_fc, activation, c_proj
        h = _linear(layer, h) if isinstance(layer, nn.Linear) else layer(h)
    return x + block.ls_2(h)


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v over (B, H, T, d). In low precision (autocast on), the
    ``scaled_dot_product_attention`` kernels (flash / memory-efficient on GPU). In fp32, the
    operations of nn.MultiheadAttention in the order it runs them (q scaled, then two batched
    products): bit for bit the official code's attention, as fast on a CPU (book/protocols)."""
    if torch.is_autocast_enabled(q.device.type):
        return F.scaled_dot_product_attention(q, k, v)
    weights = torch.matmul(q * math.sqrt(1.0 / q.shape[-1]), k.transpose(-2, -1))  # (B,H,T,T)
    return torch.matmul(weights.softmax(dim=-1), v)


def _linear(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, _in_autocast_dtype(layer.weight), _in_autocast_dtype(layer.bias))


def _in_autocast_dtype(weight: torch.Tensor | None) -> torch.Tensor | None:
    """A frozen weight in the dtype of the autocast that is on, cast once and kept.

    Autocast casts it at every call otherwise (its cache keeps only weights that require
    gradients), which reads all 300 M weights of ViT-L at every step; the cast is the same
    rounding, so the results are bit for bit those of autocast. Weights that require
    gradients, and any weight outside autocast, are returned as they are. The copy is made
    again when the weight changes (in place, or moved to another device), and is dropped
    with the weight."""
    if weight is None or weight.requires_grad or torch.compiler.is_compiling() \
            or not torch.is_autocast_enabled(weight.device.type):
        return weight                            # (compiled, inductor does the casts itself)
    dtype = torch.get_autocast_dtype(weight.device.type)
    if weight.dtype == dtype or not weight.is_floating_point():
        return weight
    key = (dtype, weight.data_ptr(), weight._version)
    kept = _AUTOCAST_COPIES.get(weight)                                  # (key, copy)
    if kept is None or kept[0] != key:
        with torch.inference_mode(False):        # a copy that training may use later too
            kept = _AUTOCAST_COPIES[weight] = (key, weight.detach().to(dtype))
    return kept[1]


_AUTOCAST_COPIES = WeakTensorKeyDictionary()


def patch_size(model_name: str) -> int | None:
    """The patch side of a ViT by name, without building it; None for unknown names."""
    if model_name == TINY_MODEL:
        return TINY_CONFIG["vision_cfg"]["patch_size"]
    vision = (open_clip.get_model_config(model_name) or {}).get("vision_cfg", {})
    return vision.get("patch_size")


def load_backbone(model_name: str = "ViT-L-14-336", pretrained: str = "openai",
                  image_size: int = 240, quick_gelu: bool | None = False,
                  checkpoint: str | os.PathLike | None = None) -> Backbone:
    """Build an open_clip ViT at ``image_size`` and load its weights (see module docstring).

    ``quick_gelu``: False = nn.GELU (the official code's accident), True = QuickGELU,
    None = whatever the pretrained tag was trained with (QuickGELU for OpenAI weights).
    """
    if model_name == TINY_MODEL:
        if checkpoint:          # ${CHECKPOINT_ENV} is for the real models: not used here
            raise WeightsError(f"--clip-checkpoint {checkpoint} cannot be used with the "
                               f"{TINY_MODEL} model, whose random weights are built in; drop "
                               "--clip-checkpoint, or give the --model the file belongs to.")
        return _tiny_backbone(image_size)
    checkpoint = checkpoint or os.environ.get(CHECKPOINT_ENV) or None
    if model_name not in open_clip.list_models():
        raise WeightsError(f"unknown open_clip model {model_name!r}; see open_clip.list_models() "
                           f"(for example ViT-B-16, ViT-L-14-336) or use {TINY_MODEL!r} for tests.")
    if quick_gelu is None:
        quick_gelu = bool(_pretrained_cfg(model_name, pretrained).get("quick_gelu", False))

    def create(weights: str | None):
        with _resize_positions_in_float32():
            return open_clip.create_model(model_name, pretrained=weights,
                                          force_image_size=image_size,
                                          force_quick_gelu=quick_gelu, device="cpu")

    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            what = "is a directory, not a weights file" if path.is_dir() else "does not exist"
            raise WeightsError(f"CLIP checkpoint {path} {what} (from --clip-checkpoint or "
                               f"${CHECKPOINT_ENV}); give the weights file itself or unset it.")
        clip, source = _create_from_file(create, path, model_name), str(path)
    elif pretrained == "random":
        with torch.random.fork_rng():                     # the same random weights every
            torch.manual_seed(RANDOM_WEIGHTS_SEED)        # time, the caller's stream untouched
            clip, source = create(None), "random"
    else:
        clip, source = _create_or_explain(create, pretrained, model_name, pretrained), \
            f"open_clip:{pretrained}"
    identity = dict(model_name=model_name, pretrained=pretrained, weights=source,
                    weights_random=source == "random", image_size=image_size,
                    quick_gelu=quick_gelu)
    return Backbone(clip, open_clip.get_tokenizer(model_name), identity)


@contextmanager
def _resize_positions_in_float32():
    """OpenAI's weights are float16 (their .pt files, and state dicts extracted from them);
    open_clip resizes the position grid of such a file (24x24 -> 17x17 at 240 px) with a
    bicubic interpolation that CPU torch does not have for float16 ("compute_index_ranges_
    weights not implemented for 'Half'"), so a file is read, its positions are made float32
    first (the model is float32 anyway, load_state_dict would convert them)."""
    original = open_clip.factory.resize_pos_embed

    def resize(state_dict, model, *args, **kwargs):
        old = state_dict.get("visual.positional_embedding")
        if old is not None and old.is_floating_point() and old.dtype != torch.float32:
            state_dict["visual.positional_embedding"] = old.float()
        return original(state_dict, model, *args, **kwargs)

    open_clip.factory.resize_pos_embed = resize
    try:
        yield
    finally:
        open_clip.factory.resize_pos_embed = original


def _state_dict_file(path: Path) -> Path:
    """OpenAI's own files (e.g. ViT-L-14-336px.pt) are TorchScript archives, which recent
    torch refuses to load as weights; their state dict is extracted once into the cache
    (``$MVFA_CACHE``, else ~/.cache/mvfa-lite), keyed by a hash of the file's contents, so
    another file of the same name and size never gets this one's weights."""
    if not zipfile.is_zipfile(path) or not any(
            name.endswith("constants.pkl") for name in zipfile.ZipFile(path).namelist()):
        return path                                    # a plain state dict
    target = cache_folder() / f"{path.stem}-{_content_hash(path)}.state_dict.pt"
    if not target.exists():
        with warnings.catch_warnings():            # "torch.jit.load is deprecated"
            warnings.simplefilter("ignore", FutureWarning)
            state = torch.jit.load(str(path), map_location="cpu").state_dict()
        for key in ("input_resolution", "context_length", "vocab_size"):
            state.pop(key, None)
        with atomic_write(target) as temporary:
            torch.save(state, temporary)
    return target


def _content_hash(path: Path) -> str:
    """The first 16 hex digits of the file's SHA-256 (read in 8 MiB pieces)."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for piece in iter(lambda: stream.read(8 << 20), b""):
            digest.update(piece)
    return digest.hexdigest()[:16]


def _pretrained_cfg(model_name: str, tag: str) -> dict:
    try:
        return open_clip.get_pretrained_cfg(model_name, tag) or {}
    except Exception:  # unknown tag: no information about the activation
        return {}


def _create_from_file(create, path: Path, model_name: str) -> nn.Module:
    try:
        return create(str(_state_dict_file(path)))
    except Exception as error:  # not a weights file, damaged, unsafe, another architecture
        raise WeightsError(
            f"CLIP checkpoint {path} cannot be loaded into {model_name}: "
            f"{unreadable_reason(error)}. Pass a weights file of {model_name} (open_clip's "
            f"open_clip_pytorch_model.bin or OpenAI's .pt), or the --model it belongs to."
        ) from None


def _create_or_explain(create, weights: str, model_name: str, tag: str) -> nn.Module:
    try:
        return create(weights)
    except Exception as error:  # network, missing file, wrong architecture: all end here
        hub = _pretrained_cfg(model_name, tag).get("hf_hub", "").strip("/")
        folder = f"models--{hub.replace('/', '--')}" if hub.count("/") == 1 else None
        copy = (f" copy its whole folder {folder} from that machine's "
                "~/.cache/huggingface/hub into this one's (or into $HF_HUB_CACHE), where open_clip "
                "finds it offline; or") if folder else ""
        raise WeightsError(
            f"could not load CLIP weights {weights!r} for {model_name} ({type(error).__name__}: "
            f"{error}).\nTo load them without internet: download them on a machine with "
            f"internet (for example python -c \"import open_clip; open_clip.create_model("
            f"'{model_name}', pretrained='{tag}')\"), then{copy} find the file in "
            f"~/.cache/huggingface, copy it here and pass --clip-checkpoint FILE or set "
            f"${CHECKPOINT_ENV}=FILE. For a smoke test without weights use --model "
            f"{TINY_MODEL}.") from None


def _tiny_backbone(image_size: int) -> Backbone:
    config = {**TINY_CONFIG, "vision_cfg": {**TINY_CONFIG["vision_cfg"], "image_size": image_size}}
    with torch.random.fork_rng():            # the same random weights every time,
        torch.manual_seed(RANDOM_WEIGHTS_SEED)   # the caller's random stream untouched
        clip = open_clip.model.CLIP(**config)
    identity = dict(model_name=TINY_MODEL, pretrained="random", weights="random",
                    weights_random=True, image_size=image_size, quick_gelu=False)
    return Backbone(clip, open_clip.tokenizer.tokenize, identity)
