"""``train.amp = "bf16"``: bfloat16 autocast of the training step and of evaluation (on the CPU here, where torch
autocasts to bfloat16 too), recorded in every result; learners for which it is not sound refuse it."""
import json

import pytest
import torch

from metazoo import create_learner
from metazoo.cli import main
from metazoo.config import from_dict
from metazoo.learners.transfer import fit_head
from metazoo.objective import autocast
from metazoo.trainer import meta_train
from metazoo.trainer import test_run as reevaluate

from .test_contract import CONFIG, TINY


def tiny(data_root, learner: str = "protonet", **train):
    return from_dict({"learner": {"name": learner}, "data": {"dataset": "omniglot", "root": str(data_root)},
                      "backbone": {"name": "conv4", "width": 16},
                      "train": {"steps": 4, "ways": 5, "queries": 5, "val_every": 4, "val_episodes": 3,
                                "log_every": 1, "device": "cpu", **train},
                      "eval": {"episodes": 4}})


def losses(run_dir) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["split"] == "train"]


def test_protonet_trains_under_bf16_close_to_float32_and_records_it(tmp_path, data_root):
    full = meta_train(tiny(data_root), tmp_path / "fp32", progress=False)
    half = meta_train(tiny(data_root, amp="bf16"), tmp_path / "bf16", progress=False)
    fp32, bf16 = losses(tmp_path / "fp32"), losses(tmp_path / "bf16")
    assert len(bf16) == 4 and all(torch.isfinite(torch.tensor(bf16)))
    assert bf16 != fp32  # the arithmetic did change: autocast ran ...
    assert bf16[0] == pytest.approx(fp32[0], rel=0.02)  # ... and stayed close to float32's: the same weights at step 1
    assert bf16 == pytest.approx(fp32, rel=0.1)  # (then the weights drift apart by bfloat16's rounding)
    assert (full["test"]["amp"], half["test"]["amp"]) == ("off", "bf16")
    assert json.loads((tmp_path / "bf16" / "result.json").read_text())["amp"] == "bf16"
    assert half["test"]["mean"] == pytest.approx(full["test"]["mean"], abs=0.1)
    again = reevaluate(tmp_path / "bf16", overrides=["train.amp=\"off\""], write=False)  # tested in float32
    assert again.amp == "off" and "overrides" not in again.protocol  # the arithmetic is recorded, not an override


@pytest.mark.parametrize("learner", ["lstm", "mann"])
def test_a_learner_for_which_bf16_is_not_sound_refuses_it_in_one_line(tmp_path, capsys, learner):
    args = ["train", CONFIG, "-o", str(tmp_path / "run"), "--set", f"learner.name={learner}",
            "--set", "train.amp=\"bf16\"", "--device", "cpu", *TINY]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"metazoo: error: learner '{learner}' refuses train.amp = 'bf16' (bfloat16 is not sound for it; "
                   "its docstring says why): set train.amp = \"off\"")
    assert not (tmp_path / "run").exists()
    # refused before the data are read (their first decoding takes a minute): no data there, the same error
    assert main([*args, "--data-root", str(tmp_path / "no-data")]) == 2
    assert capsys.readouterr().err.strip() == err


def test_an_unknown_amp_setting_fails_at_load(data_root):
    with pytest.raises(ValueError, match="train.amp = 'fp16': expected one of 'off', 'bf16'"):
        tiny(data_root, amp="fp16")


def test_a_fine_tuned_head_is_fitted_in_float32_under_autocast():
    """Baseline's test-time head: the same fit from a bfloat16 embedding under autocast as from that embedding
    in float32 without it (bfloat16 SGD would round its small updates away)."""
    features = torch.randn(10, 8, generator=torch.Generator().manual_seed(0)).bfloat16()
    labels = torch.arange(5).repeat(2)
    with autocast("cpu", "bf16"):
        head = fit_head(features, labels, 5, epochs=20)
    reference = fit_head(features.float(), labels, 5, epochs=20)
    assert head.weight.dtype == torch.float32
    assert torch.equal(head.weight, reference.weight) and torch.equal(head.bias, reference.bias)


def test_relation_scores_stay_float32_under_autocast_so_near_matches_do_not_tie():
    """Relation's head and sigmoid run in float32 under bfloat16 autocast: scores near 1 (a trained model's best
    matches) are 2**-8 apart in bfloat16, so they would round into ties at the argmax."""
    from metazoo.backbones import Conv4
    from metazoo.learners import RelationNet

    torch.manual_seed(0)
    relation = RelationNet(Conv4(width=8, downsample_blocks=2)).relation.eval()
    with torch.no_grad():
        relation.head[2].bias.fill_(6.0)  # every pair scores near sigmoid(6) = 0.9975, a little apart
    class_maps, query_maps = torch.randn(5, 8, 7, 7), torch.randn(3, 8, 7, 7)
    with autocast("cpu", "bf16"):
        scores = relation(class_maps, query_maps)
    assert scores.dtype == torch.float32 and scores.shape == (3, 5)
    assert all(len(set(row.tolist())) == 5 for row in scores)  # five different scores a query: no ties
    assert ((scores > 0.99) & (scores < 1)).all()
    rounded = scores.bfloat16()  # what a bfloat16 head's sigmoid gives at best: the ties this avoids
    assert all(len(set(row.tolist())) < 5 for row in rounded)


def test_sound_learners_take_a_bf16_step_with_finite_float32_gradients(omniglot):
    """Every learner that accepts bf16 (all but lstm and mann) runs a training step under autocast."""
    from metazoo.data import EpisodeSampler
    from metazoo.learners import list_learners
    from metazoo.registry import LEARNERS

    episodes = list(EpisodeSampler(omniglot["train"], 5, 1, 2, seed=0, episodes=2))
    sound = [name for name in list_learners() if "bf16" in LEARNERS.get_factory(name).amp_modes]
    assert {"protonet", "maml", "snail", "baseline"} <= set(sound) and not {"lstm", "mann"} & set(sound)
    for name in sound:
        settings = {"classes": 4800} if name == "baseline" else {}
        torch.manual_seed(0)
        learner = create_learner(name, backbone={"name": "conv4", "in_channels": 1, "width": 8, "image_size": 28},
                                 **settings)
        learner.train()
        with autocast("cpu", "bf16"):
            stats = learner.meta_backward(episodes)
        assert torch.isfinite(stats["loss"]), name
        grads = [p.grad for p in learner.parameters() if p.grad is not None]
        assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads), name


def test_bf16_on_a_cpu_without_onednn_bfloat16_warns_once(monkeypatch, caplog):
    from metazoo import objective
    assert isinstance(objective.native_bf16(), bool)
    objective._warn_slow_bf16.cache_clear()
    monkeypatch.setattr(objective, "native_bf16", lambda: True)
    with caplog.at_level("WARNING", logger="metazoo"):
        with autocast("cpu", "bf16"):
            pass
    assert not caplog.records  # oneDNN's own bfloat16 kernels: nothing to say
    monkeypatch.setattr(objective, "native_bf16", lambda: False)
    with caplog.at_level("WARNING", logger="metazoo"):
        for amp in ("off", "bf16", "bf16"):
            with autocast("cpu", amp):
                assert torch.is_autocast_enabled("cpu") == (amp == "bf16")  # still bfloat16: a warning, not a refusal
    assert [r.getMessage() for r in caplog.records] == [
        "train.amp = 'bf16' on a CPU without bfloat16 support in oneDNN (no AVX-512 or AMX): torch's fallback kernels "
        "are several times slower than float32's (docs/distributed.md); set train.amp = \"off\""]  # once a process
    objective._warn_slow_bf16.cache_clear()
