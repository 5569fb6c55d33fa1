"""PatchCore ``coreset_chunk``: the bank built and reduced a chunk of training images at a time."""

from __future__ import annotations

import pytest
import torch

from flawmap import get_detector
from flawmap.components import coreset as cs
from flawmap.detectors import patchcore as pc
from flawmap.errors import ConfigError

L0 = "efficientnet_lite0"


def _images(n: int, seed: int = 0, size: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 3, size, size, generator=g)
    return ((base * 0.7 + 0.3 * torch.rand(n, 3, size, size, generator=g)) * 255).round().to(torch.uint8)


def test_one_chunk_is_the_paper_bank_and_chunks_are_each_greedy(monkeypatch: pytest.MonkeyPatch) -> None:
    imgs = _images(10)
    paper = get_detector("patchcore", backbone=L0, coreset_ratio=0.1).fit(imgs)
    whole = get_detector("patchcore", backbone=L0, coreset_ratio=0.1, coreset_chunk=10).fit(imgs)
    assert torch.equal(whole.memory_bank_, paper.memory_bank_)  # chunk >= n: one greedy over M, bit-identical
    seen: list[int] = []
    real = cs.greedy_coreset

    def recording(features: torch.Tensor, *a, **k):  # type: ignore[no-untyped-def]
        seen.append(len(features))
        return real(features, *a, **k)
    monkeypatch.setattr(cs, "greedy_coreset", recording)
    chunked = get_detector("patchcore", backbone=L0, coreset_ratio=0.1, coreset_chunk=4, batch_size=3).fit(imgs)
    assert seen == [4 * 64, 4 * 64, 2 * 64]  # chunks of 4 images (batches of 3 cut at the chunk edges), never all of M
    assert len(chunked.memory_bank_) == sum(round(0.1 * s) for s in seen)
    bank = torch.cat([paper._embed(paper._backbone_features(imgs[s:s + 4].float() / 255)).reshape(-1, paper.memory_bank_.shape[1])
                      for s in range(0, 10, 4)])
    parts = torch.split(bank, seen)  # the picks are each chunk's own greedy coreset (same psi, same seed)
    want = torch.cat([p[real(p, 0.1, projection_dim=128, seed=0)] for p in parts])
    torch.testing.assert_close(chunked.memory_bank_, want, rtol=1e-5, atol=1e-5)


def test_memory_check_counts_one_chunk_and_names_the_picks(monkeypatch: pytest.MonkeyPatch) -> None:
    needs: dict[int, tuple[str, int]] = {}

    def capture(what: str, need: int, *a, **k) -> None:  # type: ignore[no-untyped-def]
        needs[len(needs)] = (what, need)
    monkeypatch.setattr(pc, "check_memory_budget", capture)
    for chunk in (0, 32):
        get_detector("patchcore", coreset_chunk=chunk, train_rotations=3, coreset_ratio=0.01)._check_memory(320, 4096, 192, 4)
    (whole, need_whole), (part, need_part) = needs[0], needs[1]
    assert "5242880 patches of dim 192" in whole and "52429 greedy picks" in whole and "held" not in whole
    assert "held 524288 patches at once (32 images a chunk, coreset_chunk), 10 chunks" in part
    assert "52430 greedy picks (5243 per chunk of 524288)" in part
    assert need_whole > 4 * 2**30 and need_part < need_whole / 5  # the bank is never held whole
    monkeypatch.undo()
    with pytest.raises(ConfigError, match=r"held 512 patches at once \(2 images a chunk, coreset_chunk\), 3 chunks") as err:
        get_detector("patchcore", backbone=L0, coreset_chunk=2, train_rotations=3, max_memory_gb=1e-4).fit(_images(6))
    assert "greedy picks" in str(err.value)


@pytest.mark.parametrize(("params", "match"), [
    ({"coreset_chunk": -1}, r"coreset_chunk=-1 is out of range; allowed: \[0, inf\]"),
    ({"coreset_chunk": 2.5}, "coreset_chunk must be an integer"),
    ({"coreset_chunk": True}, "coreset_chunk must be an integer"),
    ({"coreset_chunk": 4, "backbone": (L0, "mobilenet_v2")}, r"allowed: 0, or ensemble='scores'"),
])
def test_bad_coreset_chunk_is_refused(params: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        get_detector("patchcore", **params).fit(_images(2))
