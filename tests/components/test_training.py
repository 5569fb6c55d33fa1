"""The shared training loop: determinism, checkpoints, exact resume (also after SIGKILL), early stopping."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from flawmap.components import checkpoint as ck, precision as pr, stopping, training as tr
from flawmap.detectors.trained import TrainedDetector


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _data() -> torch.Tensor:
    return torch.randn(20, 5, generator=torch.Generator().manual_seed(1))


def _model(seed: int = 0) -> nn.Module:
    return tr.seeded_init(seed, lambda: nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 5)))


def _loss(model: nn.Module, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    noise = 0.1 * torch.randn(x.shape, generator=g)  # randomness from the epoch generator only
    return (model(x + noise) - x).pow(2).mean()


def _run(epochs: int, ckpt: Path | None = None, seed: int = 0, **kw) -> tuple[nn.Module, tr.TrainReport]:
    m = _model()
    s = tr.TrainSettings(epochs=epochs, batch_size=6, lr=1e-2, seed=seed,
                         checkpoint_dir=str(ckpt) if ckpt else None, **kw)
    rep = tr.train(m, _data(), _loss, s, config={"what": "mlp"}, device=torch.device("cpu"))
    return m, rep


def _same(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_seeded_and_does_not_touch_global_rng():
    state = torch.get_rng_state()
    a, rep = _run(3)
    assert torch.equal(state, torch.get_rng_state())
    b, _ = _run(3)
    c, _ = _run(3, seed=1)
    assert _same(a, b) and not _same(a, c)
    assert rep.epochs_done == 3 and len(rep.train_losses) == 3 and len(rep.epoch_seconds) == 3
    assert rep.train_losses[-1] < rep.train_losses[0]


def test_resume_in_process_is_exact(tmp_path):
    full, _ = _run(5)
    _run(2, tmp_path)  # "interrupted" after epoch 2
    meta = json.loads((tmp_path / ck.CHECKPOINT_JSON).read_text())
    assert meta["epoch"] == 2 and len(meta["rng_state"]) > 0 and meta["config_hash"]
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".safetensors"] == [meta["tensors"]]
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    resumed, rep = _run(5, tmp_path)
    assert rep.resumed_from == 2 and len(rep.epoch_seconds) == 3 and len(rep.train_losses) == 5
    assert _same(full, resumed)
    again, rep = _run(5, tmp_path)  # finished checkpoint: no epoch to run, same weights
    assert rep.resumed_from == 5 and rep.epoch_seconds == [] and _same(full, again)


def test_other_config_trains_from_scratch(tmp_path, caplog):
    _run(2, tmp_path)
    m = _model()
    s = tr.TrainSettings(epochs=2, batch_size=6, lr=5e-3, checkpoint_dir=str(tmp_path))  # lr differs
    rep = tr.train(m, _data(), _loss, s, config={"what": "mlp"}, device=torch.device("cpu"))
    assert rep.resumed_from == 0 and "another configuration" in caplog.text


def test_optimizer_state_roundtrip():
    m = _model()
    opt = torch.optim.Adam(m.parameters(), lr=1e-3, weight_decay=1e-5)
    _loss(m, _data(), torch.Generator()).backward()
    opt.step()
    tensors, meta = ck._flatten_optimizer(opt)
    meta = json.loads(json.dumps(meta))
    back = ck._unflatten_optimizer(tensors, meta)
    opt2 = torch.optim.Adam(_model().parameters(), lr=1.0)
    opt2.load_state_dict(back)
    a, b = opt.state_dict(), opt2.state_dict()
    assert b["param_groups"][0]["lr"] == 1e-3
    for pid, st in a["state"].items():
        assert all(torch.equal(st[k], b["state"][pid][k]) for k in st)


def test_validation_split_and_early_stopping():
    tr_idx, val_idx = tr.split_validation(20, 0.25, seed=3)
    assert len(val_idx) == 5 and not set(tr_idx.tolist()) & set(val_idx.tolist())
    assert torch.equal(val_idx, tr.split_validation(20, 0.25, seed=3)[1])

    class Scalar(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.zeros(()))

    def loss(model: nn.Module, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        # training pulls w to 1; the validation loss grows as w leaves 0.1 -> best epoch is the first
        return (model.w - 1) ** 2 if model.training else (model.w - 0.1) ** 2 + 0 * x.sum()

    m = Scalar()
    s = tr.TrainSettings(epochs=30, batch_size=4, lr=0.05, val_fraction=0.2, patience=3)
    rep = tr.train(m, _data(), loss, s, config={}, device=torch.device("cpu"))
    assert rep.stopped_early and rep.best_epoch == 1 and rep.epochs_done == 4 and len(rep.val_losses) == 4
    assert 0.15 < float(m.w.detach()) <= 0.2 + 1e-6  # epoch-1 weights restored: 4 Adam steps of at most lr = 0.05


# ---- SIGKILL ------------------------------------------------------------------------------------
_SCRIPT = textwrap.dedent("""
    import sys, time, torch
    from torch import nn
    from safetensors.torch import save_file
    from flawmap.components import training as tr
    torch.set_num_threads(1)
    ckpt, out, slow = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
    data = torch.randn(20, 5, generator=torch.Generator().manual_seed(1))
    model = tr.seeded_init(0, lambda: nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 5)))
    def loss_fn(m, x, g):
        if slow:
            time.sleep(0.15)
        return (m(x + 0.1 * torch.randn(x.shape, generator=g)) - x).pow(2).mean()
    s = tr.TrainSettings(epochs=6, batch_size=6, lr=1e-2, seed=0, checkpoint_dir=ckpt)
    rep = tr.train(model, data, loss_fn, s, config={"what": "mlp"}, device=torch.device("cpu"))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out)
    print("resumed_from", rep.resumed_from)
""")


def test_resume_after_sigkill_matches_uninterrupted(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(_SCRIPT)
    ckpt = tmp_path / "ckpt"
    env = {**os.environ, "FLAWMAP_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(script), str(ckpt), str(tmp_path / "a.safetensors"), "1"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    meta_path = ckpt / ck.CHECKPOINT_JSON
    deadline = time.monotonic() + 60
    while not meta_path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)  # right after the first checkpoint landed
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    killed_at = json.loads(meta_path.read_text())["epoch"]
    assert 1 <= killed_at < 6
    done = subprocess.run([sys.executable, str(script), str(ckpt), str(tmp_path / "a.safetensors"), "0"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.split()[-1]) >= killed_at  # it resumed, not restarted
    resumed = load_file(str(tmp_path / "a.safetensors"))
    full, _ = _run(6)  # uninterrupted, in this process, same seed
    assert all(torch.equal(resumed[k], v) for k, v in full.state_dict().items())


# ---- precision, min_delta, host syncs ------------------------------------------------------------
def test_precision_rule_and_validation():
    cpu = torch.device("cpu")
    assert pr.resolve_precision("float32", cpu) == "float32"
    assert pr.resolve_precision("bfloat16", cpu) == "bfloat16"
    assert pr.resolve_precision("auto", cpu) == ("bfloat16" if pr.bf16_is_native(cpu) else "float32")
    with pytest.raises(tr.ConfigError, match="allowed: float32, bfloat16, float16"):
        _run(1, precision="auto")  # the loop takes a resolved precision
    with pytest.raises(tr.ConfigError, match="allowed: float32, bfloat16, float16"):
        _run(1, precision="fp8")

    class Det(TrainedDetector):
        epochs, batch_size, lr, val_fraction, patience, seed, checkpoint_dir, min_delta = 1, 1, 0.1, 0, 0, 0, None, 0
        precision = "half"

    with pytest.raises(tr.ConfigError, match="'auto', 'float32', 'bfloat16', 'float16'"):
        Det()._check_train_params()
    Det.precision, Det.min_delta = "auto", 2.0
    with pytest.raises(tr.ConfigError, match="min_delta"):
        Det()._check_train_params()


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_low_precision_trains_and_float16_resumes_its_loss_scale(tmp_path, precision):
    m, rep = _run(3, tmp_path / "a", precision=precision)
    assert all(p.dtype == torch.float32 for p in m.parameters()) and len(rep.train_losses) == 3
    assert rep.train_losses[-1] < rep.train_losses[0]
    meta = json.loads((tmp_path / "a" / ck.CHECKPOINT_JSON).read_text())
    assert ("grad_scaler" in meta) == (precision == "float16")
    _run(1, tmp_path / "b", precision=precision)
    resumed, rep_b = _run(3, tmp_path / "b", precision=precision)  # 1 epoch, then resume for 2
    assert rep_b.resumed_from == 1 and _same(m, resumed)
    _, other = _run(3, tmp_path / "b")  # float32 is another configuration: from scratch
    assert other.resumed_from == 0


def test_min_delta_counts_small_improvements_as_none():
    class Scalar(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.zeros(()))

    def loss(model: nn.Module, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        # validation loss 1 / (1 + w): decreases every epoch, by less than 1% from epoch 2 on
        return (model.w - 10) ** 2 if model.training else 1 / (1 + 0.01 * model.w) + 0 * x.sum()

    def run(min_delta: float) -> tr.TrainReport:
        s = tr.TrainSettings(epochs=8, batch_size=20, lr=0.05, val_fraction=0.2, patience=2, min_delta=min_delta)
        return tr.train(Scalar(), _data(), loss, s, config={}, device=torch.device("cpu"))

    assert not run(0.0).stopped_early  # any decrease improves
    rep = run(0.01)
    assert rep.stopped_early and rep.best_epoch == 1 and rep.epochs_done == 3


def test_nonfinite_loss_raises_and_the_loop_syncs_once_per_epoch(monkeypatch):
    reads = []
    real_float = tr.__builtins__["float"] if isinstance(tr.__builtins__, dict) else float

    def counting_float(v):
        if isinstance(v, torch.Tensor):
            reads.append(1)
        return real_float(v)

    monkeypatch.setattr(tr, "float", counting_float, raising=False)
    _run(2)  # 20 rows, batch 6: 4 steps per epoch
    assert len(reads) == 2  # one read-back per epoch, none per step

    def nan_loss(model: nn.Module, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return model(x).sum() * float("nan")

    s = tr.TrainSettings(epochs=2, batch_size=6, lr=1e-2)
    with pytest.raises(FloatingPointError, match="epoch 1; lower lr"):
        tr.train(_model(), _data(), nan_loss, s, config={}, device=torch.device("cpu"))


# ---- the "maps" stopping rule ------------------------------------------------------------------------
def test_rank_change_is_one_minus_spearman():
    from scipy.stats import spearmanr

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(400, generator=g), torch.randn(400, generator=g)
    mix = a + 0.5 * b
    assert stopping.rank_change(mix, a) == pytest.approx(1 - spearmanr(mix.numpy(), a.numpy())[0], abs=1e-12)
    assert stopping.rank_change(a, a) == pytest.approx(0.0, abs=1e-12)
    assert stopping.rank_change(torch.exp(3 * a) + 7, a.view(20, 20)) == pytest.approx(0.0, abs=1e-12)  # scale-free
    assert stopping.rank_change(-a, a) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="same size"):
        stopping.rank_change(a, a[:10])


class _Sharpening(nn.Module):
    """w converges to 1 (the maps' shape); s grows for ever (their scale): its loss never flattens."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.s = nn.Parameter(torch.ones(()))


_X0, _X1 = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(4))


def _sharpening_loss(model: nn.Module, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return (model.w - 1) ** 2 - 0.1 * model.s + 0 * x.sum()


def _sharpening_maps(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    maps = model.s.abs() * (_X0 + model.w * _X1)[: len(x)]  # (B, 16); the ranking depends on w only
    return maps, _sharpening_loss(model, x, torch.Generator())  # the loss of the same pass


def test_maps_rule_stops_where_the_loss_rule_never_does(tmp_path):
    cpu = torch.device("cpu")
    base = dict(epochs=60, batch_size=4, lr=0.05, val_fraction=0.25, patience=5)
    loss_rule = tr.train(_Sharpening(), _data(), _sharpening_loss, tr.TrainSettings(**base), config={}, device=cpu)
    assert not loss_rule.stopped_early and loss_rule.epochs_done == 60  # the loss keeps falling
    m = _Sharpening()
    s = tr.TrainSettings(**base, stop_on="maps", map_tolerance=1e-3)
    rep = tr.train(m, _data(), _sharpening_loss, s, config={}, device=cpu, val_maps=_sharpening_maps)
    assert rep.stopped_early and 5 < rep.epochs_done < 60 and rep.best_epoch == rep.epochs_done
    assert rep.map_changes[:5] == [None] * 5 and len(rep.map_changes) == rep.epochs_done
    assert rep.map_changes[-1] <= 1e-3 < max(c for c in rep.map_changes if c is not None)
    assert all(c > 1e-3 for c in rep.map_changes[5:-1])
    assert float(m.s.detach()) > 1.5  # the last weights are kept (nothing restored)
    # the held-out loss comes from the maps pass and equals the loss rule's own evaluation epoch for epoch
    assert rep.val_losses == pytest.approx(loss_rule.val_losses[:rep.epochs_done], rel=1e-6)
    # resumed from a checkpoint written part-way: the same stop, the same changes
    ck = dict(base, checkpoint_dir=str(tmp_path / "ck"), stop_on="maps", map_tolerance=1e-3)
    first = tr.train(_Sharpening(), _data(), _sharpening_loss, tr.TrainSettings(**{**ck, "epochs": 7}),
                     config={}, device=cpu, val_maps=_sharpening_maps)
    assert not first.stopped_early and first.epochs_done == 7
    m2 = _Sharpening()
    again = tr.train(m2, _data(), _sharpening_loss, tr.TrainSettings(**ck), config={}, device=cpu, val_maps=_sharpening_maps)
    assert again.resumed_from == 7 and again.epochs_done == rep.epochs_done
    assert again.map_changes == pytest.approx(rep.map_changes) and torch.equal(m2.s, m.s)


def test_maps_rule_needs_maps_and_a_known_rule():
    cpu = torch.device("cpu")
    s = tr.TrainSettings(epochs=2, batch_size=4, lr=0.05, val_fraction=0.25, patience=2, stop_on="maps")
    with pytest.raises(tr.ConfigError, match="val_maps"):
        tr.train(_Sharpening(), _data(), _sharpening_loss, s, config={}, device=cpu)
    bad = tr.TrainSettings(epochs=2, batch_size=4, lr=0.05, stop_on="scores")
    with pytest.raises(tr.ConfigError, match="allowed: loss, maps"):
        tr.train(_Sharpening(), _data(), _sharpening_loss, bad, config={}, device=cpu)
