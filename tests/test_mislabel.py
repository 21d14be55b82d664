import numpy as np
import pytest

from repro.experiments.mislabel import curve_summary, detection_curve, detection_table


def test_perfect_random_and_worst_rankings():
    is_flip = np.zeros(100, dtype=bool)
    is_flip[:20] = True
    perfect = curve_summary(is_flip.astype(float), is_flip)
    assert perfect["found@10%"] == pytest.approx(0.5) and perfect["found@20%"] == 1.0
    assert perfect["auc"] == pytest.approx(1 - 0.2 / 2, abs=0.01)
    worst = curve_summary(-is_flip.astype(float), is_flip)
    assert worst["found@30%"] == 0.0
    rng = np.random.default_rng(0)
    aucs = [curve_summary(rng.random(100), is_flip)["auc"] for _ in range(200)]
    assert abs(np.mean(aucs) - 0.5) < 0.02
    x, y = detection_curve(is_flip.astype(float), is_flip)
    assert x[0] == y[0] == 0 and x[-1] == y[-1] == 1 and np.all(np.diff(y) >= 0)
    table = detection_table({"perfect": is_flip.astype(float), "worst": -is_flip.astype(float)}, is_flip)
    assert table.method.tolist() == ["perfect", "worst"]
    with pytest.raises(ValueError):
        detection_curve(np.zeros(5), np.zeros(5, dtype=bool))


def test_checkpoint_schedule_and_spacing():
    from repro.experiments.mislabel import checkpoint_schedule, checkpoint_subsets, evenly_spaced

    assert checkpoint_schedule(40, 3) == [1, 4, 7, 10, 13, 16, 19, 22, 25, 28, 31, 34, 37, 40]
    assert checkpoint_schedule(8, 1) == list(range(1, 9)) and checkpoint_schedule(10, 4) == [1, 5, 9, 10]
    assert evenly_spaced(14, 1) == [13] and evenly_spaced(14, 2) == [0, 13] and evenly_spaced(3, 8) == [0, 1, 2]
    assert evenly_spaced(14, 4) == [0, 4, 9, 13]
    for m in range(1, 15):
        idx = evenly_spaced(14, m)
        assert len(idx) == m and idx[-1] == 13 and idx == sorted(set(idx))
    s = checkpoint_subsets(5)
    assert s["all checkpoints"] == [0, 1, 2, 3, 4] and s["early half"] == [0, 1] and s["late half"] == [2, 3, 4]
    assert s["final only"] == [4]
    with pytest.raises(ValueError):
        checkpoint_schedule(0, 3)


def test_checkpoint_count_table_uses_planted_signal():
    """Checkpoint j carries the flips' signal only for j < 2: using the early checkpoints finds them,
    the final one alone does not."""
    from repro.experiments.mislabel import checkpoint_count_table

    rng = np.random.default_rng(0)
    is_flip = rng.random(400) < 0.2
    per = rng.random((8, 400))
    per[:2] += 3.0 * is_flip
    t = checkpoint_count_table(per, is_flip)
    assert t["checkpoints"].tolist() == [1, 2, 4, 8] and t["all"].tolist() == [False, False, False, True]
    assert t.loc[0, "auc"] < 0.6 and t.loc[1, "auc"] > 0.85 and t.loc[3, "auc"] > 0.75


def test_summarize_over_seeds_matches_t_interval():
    import pandas as pd
    from scipy import stats

    from repro.experiments.mislabel import summarize_over_seeds

    f = pd.DataFrame({"method": ["a"] * 3 + ["b"] * 3, "seed": [0, 1, 2] * 2, "auc": [0.8, 0.9, 1.0, 0.5, 0.5, 0.5]})
    s = summarize_over_seeds(f, ["method"], ["auc"]).set_index("method")
    half = stats.t.ppf(0.975, 2) * 0.1 / np.sqrt(3)
    assert s.loc["a", "auc"] == pytest.approx(0.9) and s.loc["a", "auc_lo"] == pytest.approx(0.9 - half)
    assert s.loc["b", "auc_lo"] == s.loc["b", "auc_hi"] == 0.5 and s.loc["a", "n_seeds"] == 3


@pytest.mark.slow
def test_mislabel_run_scores_match_the_estimators(tmp_path, one_thread):
    """On a tiny real run: every TracIn row equals TracInCP over that checkpoint subset, the summed
    loss equals the per-checkpoint losses, and the fit shares are computed w.r.t. the noisy labels."""
    import torch

    from repro.data import flip_labels, load
    from repro.experiments.mislabel import checkpoint_schedule, mislabel_run
    from repro.influence import TracInCP
    from repro.models import vgg
    from repro.train import TrainConfig, list_checkpoints

    clean = load("fashion_mnist", n=120, seed=0, stratify=True)
    test = load("fashion_mnist", "test", n=40, seed=0)
    train, flipped = flip_labels(clean, 0.2, seed=0)
    is_flip = np.isin(train.ids, flipped)
    model = vgg(num_classes=10, width=0.125, seed=0)
    cfg = TrainConfig(epochs=4, batch_size=16, lr=0.05, checkpoint_epochs=checkpoint_schedule(4, 2),
                      progress=False, device="cpu", seed=0)
    out = mislabel_run(model, cfg, train, test, is_flip, tmp_path / "run", all_params_checkpoints=2,
                       progress=False)
    cks = list_checkpoints(tmp_path / "run")
    assert out["checkpoints"] == [1, 3, 4] and out["self_influence_per_checkpoint"].shape == (3, 120)
    sc = out["scores"]
    ref = lambda sel, params="last": TracInCP(model, [cks[i] for i in sel], params=params,
                                              progress=False).fit(train).self_influence().numpy()
    np.testing.assert_allclose(sc["TracInCP last layer, all checkpoints"], ref([0, 1, 2]), rtol=1e-5)
    np.testing.assert_allclose(sc["TracInCP last layer, early half"], ref([0]), rtol=1e-5)
    np.testing.assert_allclose(sc["TracInCP last layer, final only"], ref([2]), rtol=1e-5)
    np.testing.assert_allclose(sc["TracInCP all parameters, 2 checkpoints"], ref([0, 2], "all"), rtol=1e-4)
    np.testing.assert_allclose(sc["loss summed over checkpoints (ours, not in the paper)"],
                               out["loss_per_checkpoint"].sum(0), rtol=1e-6)
    assert len(set(map(len, sc.values()))) == 1 and all(np.isfinite(v).all() for v in sc.values())
    assert 0 <= out["fit"]["fit_flipped"] <= 1 and out["fit"]["n_checkpoints"] == 3
