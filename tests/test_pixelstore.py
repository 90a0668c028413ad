"""PixelStore: per-pixel results of a split, in memory or in a temporary file, the same
values either way; scoring and metrics through it equal the in-memory run."""
import pytest
import torch

from mvfa_lite.data.layout import ADDataset
from mvfa_lite.protocols import pixelstore
from mvfa_lite.protocols.evaluate import build_memory_bank, compute_metrics, score_dataset
from mvfa_lite.protocols.pixelstore import PixelStore


@pytest.fixture(params=["memory", "file"])
def where(request, monkeypatch):
    if request.param == "file":
        monkeypatch.setattr(pixelstore, "IN_MEMORY_BYTES", 0)
    return request.param


def test_a_store_reads_back_what_was_written(where):
    values = torch.rand(7, 5, 6)
    store = PixelStore(7, (5, 6), torch.float32)
    store.append(values[:3])
    store.append(values[3:])
    assert ("file" in repr(store)) == (where == "file") and len(store) == 7
    torch.testing.assert_close(store.tensor(), values, rtol=0, atol=0)
    torch.testing.assert_close(store[2], values[2], rtol=0, atol=0)
    torch.testing.assert_close(store[-1], values[-1], rtol=0, atol=0)
    torch.testing.assert_close(store[[4, 0, 4]], values[[4, 0, 4]], rtol=0, atol=0)
    torch.testing.assert_close(store[1:6:2], values[1:6:2], rtol=0, atol=0)
    torch.testing.assert_close(store[torch.tensor([True, False] * 3 + [True])],
                               values[[0, 2, 4, 6]], rtol=0, atol=0)
    chunks = list(store.chunks(pixels=2 * 30))                     # two images a chunk
    assert [start for start, _ in chunks] == [0, 2, 4, 6]
    torch.testing.assert_close(torch.cat([c for _, c in chunks]), values, rtol=0, atol=0)
    store.write(1, torch.zeros(2, 5, 6))
    assert store[1].abs().sum() == 0 and store[2].abs().sum() == 0 and store[3].sum() > 0
    with pytest.raises(IndexError):
        store[7]
    with pytest.raises(IndexError):
        store.append(values[:1])


def test_scoring_through_files_equals_scoring_in_memory(synth_root, tiny_model, monkeypatch):
    data = ADDataset(synth_root, "valid").subset(range(4, 12))
    text = tiny_model.text_features("Chest X-ray film")
    bank = build_memory_bank(tiny_model, torch.rand(2, 3, 240, 240))
    in_memory = score_dataset(tiny_model, data, text, bank, progress=False, batch_size=3)
    monkeypatch.setattr(pixelstore, "IN_MEMORY_BYTES", 0)
    monkeypatch.setattr(pixelstore, "CHUNK_PIXELS", 240 * 240 * 2)       # 2 images a chunk
    on_disk = score_dataset(tiny_model, data, text, bank, progress=False, batch_size=3)
    assert "file" in repr(on_disk.maps) and "memory" in repr(in_memory.maps)
    torch.testing.assert_close(on_disk.maps.tensor(), in_memory.maps.tensor(), rtol=0, atol=0)
    torch.testing.assert_close(on_disk.image_scores, in_memory.image_scores, rtol=0, atol=0)
    assert on_disk.bounds == in_memory.bounds
    assert compute_metrics(on_disk, device="cpu") == compute_metrics(in_memory, device="cpu")
