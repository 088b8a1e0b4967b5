"""severe_eval.py metrics and the summary table, on cases computed by hand (in the comments) and on
the published rows of Table 5.8."""
import json
import math

import numpy as np
import pytest
import torch

import severe_eval as se


# ---------------------------------------------------------------- classification


def test_top1_by_hand():
    scores = np.array([[0.7, 0.2, 0.1],   # argmax 0, label 0: right
                       [0.1, 0.3, 0.6],   # argmax 2, label 1: wrong
                       [0.4, 0.4, 0.2],   # tie 0/1 -> lowest index 0, label 0: right
                       [0.0, 0.9, 0.1]])  # argmax 1, label 1: right
    labels = np.array([0, 1, 0, 1])
    assert se.top1(scores, labels) == pytest.approx(3 / 4)
    assert se.top1(torch.tensor(scores), torch.tensor(labels)) == pytest.approx(3 / 4)
    with pytest.raises(ValueError):
        se.top1(scores, labels[:3])


def test_mean_class_accuracy_with_a_class_absent_from_the_test_set():
    # 4 classes, class 3 has no test video.
    # class 0: 3 videos, all right -> 1;  class 1: 1 video, wrong -> 0;  class 2: 1 video, right -> 1
    scores = np.array([[5, 0, 0, 1],
                       [5, 1, 0, 0],
                       [5, 0, 1, 0],
                       [0, 1, 5, 0],    # label 1, predicted 2
                       [0, 0, 5, 1]], dtype=np.float32)
    labels = np.array([0, 0, 0, 1, 2])
    per_class = se.per_class_accuracy(scores, labels, 4)
    assert per_class[:3].tolist() == [1.0, 0.0, 1.0] and math.isnan(per_class[3])
    # mean over the 3 classes present: (1 + 0 + 1) / 3; top-1 over videos is 4 / 5
    assert se.mean_class_accuracy(scores, labels, 4) == pytest.approx(2 / 3)
    assert se.top1(scores, labels) == pytest.approx(4 / 5)
    # the authors' code counts the absent class as 0 over all 4 classes: (1 + 0 + 1 + 0) / 4
    assert se.mean_class_accuracy(scores, labels, 4, absent_as_zero=True) == pytest.approx(0.5)
    assert se.mean_class_accuracy(torch.tensor(scores), torch.tensor(labels), 4) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        se.per_class_accuracy(scores, np.array([0, 0, 0, 1, 4]), 4)


# ---------------------------------------------------------------- multi-label mAP

# 5 videos, 3 classes.
# class 0: scores 0.9 0.8 0.7 0.6 0.5, positives videos 0 and 2 -> ranks 1 and 3,
#          precisions 1/1 and 2/3 -> AP = (1 + 2/3) / 2 = 5/6
# class 1: no positive -> NaN, left out of the mean
# class 2: scores 0.5 0.5 0.9 0.1 0.5, positives videos 0 and 4. Ranking: video 2 (0.9, negative),
#          then the tie block {0, 1, 4} at ranks 2-4 holding both positives: each positive gets the
#          precision at the end of the block, 2/4 -> AP = 0.5
# mAP = (5/6 + 1/2) / 2 = 2/3
MAP_SCORES = np.array([[0.9, 0.3, 0.5],
                       [0.8, 0.2, 0.5],
                       [0.7, 0.1, 0.9],
                       [0.6, 0.4, 0.1],
                       [0.5, 0.5, 0.5]])
MAP_TARGETS = np.array([[1, 0, 1],
                        [0, 0, 0],
                        [1, 0, 0],
                        [0, 0, 0],
                        [0, 0, 1]])


def test_mean_average_precision_by_hand():
    m, ap = se.mean_average_precision(MAP_SCORES, MAP_TARGETS)
    assert ap.shape == (3,)
    assert ap[0] == pytest.approx(5 / 6) and math.isnan(ap[1]) and ap[2] == pytest.approx(0.5)
    assert m == pytest.approx(2 / 3)


def test_mean_average_precision_ties_do_not_depend_on_input_order():
    for perm in ([4, 3, 2, 1, 0], [1, 4, 0, 3, 2], [2, 0, 4, 1, 3]):
        m, ap = se.mean_average_precision(torch.tensor(MAP_SCORES[perm]), torch.tensor(MAP_TARGETS[perm]))
        assert m == pytest.approx(2 / 3) and ap[2] == pytest.approx(0.5)


def test_mean_average_precision_perfect_and_worst_ranking():
    # one class, 2 positives out of 4: ranked first -> AP 1; ranked last -> (1/3 + 2/4) / 2
    scores = np.array([[4.0], [3.0], [2.0], [1.0]])
    assert se.mean_average_precision(scores, np.array([[1], [1], [0], [0]]))[0] == pytest.approx(1.0)
    assert se.mean_average_precision(scores, np.array([[0], [0], [1], [1]]))[0] == pytest.approx((1 / 3 + 2 / 4) / 2)
    with pytest.raises(ValueError):
        se.mean_average_precision(scores, np.zeros((4, 1)))


# ---------------------------------------------------------------- repetition counting


def test_counting_error_and_off_by_one():
    pred = np.array([2.5, 4.0, 10.0])
    gt = np.array([2, 5, 8])
    # |2.5-2|/2 = 0.25, |4-5|/5 = 0.2, |10-8|/8 = 0.25 -> mean 0.7/3
    assert se.counting_error(pred, gt) == pytest.approx(0.7 / 3)
    # |diff| = 0.5, 1, 2 -> two of three within one
    assert se.off_by_one_accuracy(pred, gt) == pytest.approx(2 / 3)
    assert se.counting_error(gt, gt) == 0.0
    with pytest.raises(ValueError):
        se.counting_error(pred, np.array([2, 0, 8]))


# ---------------------------------------------------------------- retrieval


def unit(deg, norm=1.0):
    r = math.radians(deg)
    return [norm * math.cos(r), norm * math.sin(r)]


def test_retrieval_recall_at_k_on_a_2d_toy():
    # training videos at angles 0 (label 0), 10 (label 1), 90 (label 1), 180 (label 2), with different
    # norms: only the angle matters for cosine similarity.
    train = np.array([unit(0, 3.0), unit(10, 0.2), unit(90, 5.0), unit(180, 1.0)])
    train_labels = np.array([0, 1, 1, 2])
    # query at 2 deg, label 1: neighbours 0 (label 0), 10 (label 1) -> first hit at rank 2
    # query at 95 deg, label 1: neighbour 90 (label 1) -> hit at rank 1
    # query at 190 deg, label 0: 180 (cos 10), 90 (cos 100), 0 (cos 190 = -0.985), 10 (cos 180 = -1)
    #                            -> label 0 at rank 3
    test = np.array([unit(2, 7.0), unit(95), unit(190, 0.5)])
    test_labels = np.array([1, 1, 0])
    r = se.retrieval_recall_at_k(test, test_labels, train, train_labels, ks=(1, 2, 3, 4))
    assert r == {1: pytest.approx(1 / 3), 2: pytest.approx(2 / 3), 3: pytest.approx(1.0), 4: pytest.approx(1.0)}
    # k larger than the training set is the whole training set; chunking gives the same answer
    r = se.retrieval_recall_at_k(torch.tensor(test), torch.tensor(test_labels), torch.tensor(train),
                                 torch.tensor(train_labels), ks=(1, 20), chunk=1)
    assert r == {1: pytest.approx(1 / 3), 20: pytest.approx(1.0)}


# ---------------------------------------------------------------- clustering


def blobs(seed=0, per=30):
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    labels = torch.arange(3).repeat_interleave(per)
    return centres[labels] + 0.3 * torch.randn(3 * per, 2, generator=g), labels


def test_kmeans_finds_three_obvious_clusters():
    x, labels = blobs()
    for seed in range(3):
        assign, centroids = se.kmeans(x, 3, iters=50, seed=seed)
        assert assign.shape == (90,) and centroids.shape == (3, 2)
        assert se.cluster_purity(assign, labels) == 1.0
        assert len(set(assign.tolist())) == 3
        # each centroid is near one true centre
        true = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
        assert torch.cdist(centroids, true).min(1).values.max() < 0.5


def test_cluster_purity_by_hand():
    # cluster 0 = {a, a, b} -> 2, cluster 1 = {b, b} -> 2, cluster 2 = {c} -> 1: purity 5/6
    assert se.cluster_purity([0, 0, 0, 1, 1, 2], ["a", "a", "b", "b", "b", "c"]) == pytest.approx(5 / 6)
    assert se.cluster_purity([7, 7, 7], [1, 2, 3]) == pytest.approx(1 / 3)


def test_silhouette_by_hand():
    # 1-D points 0, 1 | 10, 11. Point 0: a = 1, b = (10 + 11)/2 = 10.5 -> 9.5/10.5; point 1: a = 1,
    # b = (9 + 10)/2 = 9.5 -> 8.5/9.5; points 10 and 11 mirror them.
    x = np.array([[0.0], [1.0], [10.0], [11.0]])
    expected = (9.5 / 10.5 + 8.5 / 9.5) / 2
    assert se.silhouette_score(x, [0, 0, 1, 1]) == pytest.approx(expected)
    # with a singleton (0, 1 | 10): point 0: a = 1, b = 10 -> 0.9; point 1: a = 1, b = 9 -> 8/9; singleton 0
    assert se.silhouette_score(x[:3], [5, 5, 9]) == pytest.approx((0.9 + 8 / 9 + 0) / 3)
    with pytest.raises(ValueError):
        se.silhouette_score(x, [0, 0, 0, 0])


def test_silhouette_high_for_separated_clusters_low_for_random():
    x, labels = blobs()
    assert se.silhouette_score(x, labels) > 0.9
    random = torch.randint(3, (90,), generator=torch.Generator().manual_seed(0))
    assert abs(se.silhouette_score(x, random)) < 0.1
    # cosine: clusters of directions, each point at its own norm (cosine ignores the norm)
    g = torch.Generator().manual_seed(1)
    dirs = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    y = dirs[labels] + 0.05 * torch.randn(90, 2, generator=g)
    y = y * torch.rand(90, 1, generator=g).mul(10).add(0.1)
    assert se.silhouette_score(y, labels, metric="cosine") > 0.9
    assert se.silhouette_score(y, labels, metric="euclidean") < se.silhouette_score(y, labels, metric="cosine")
    assert abs(se.silhouette_score(y, random, metric="cosine")) < 0.1


# ---------------------------------------------------------------- summary table

# Table 5.8 as printed (thesis ~line 1290): SSv2, Gym99, UCF(10^3), Gym(10^3), FX-S1, UB-S1, UCF-RC, Charades, Mean
TABLE_5_8 = [
    ("SVT", 59.2, 62.3, 83.9, 18.5, 35.4, 55.1, 0.421, 35.5, 51.0),
    ("VideoMAE", 69.7, 85.1, 77.2, 27.5, 37.0, 78.5, 0.172, 12.6, 58.8),  # printed 58.1: its own row gives 58.8
    ("Supervised", 60.8, 92.1, 86.6, 51.3, 79.0, 87.1, 0.132, 23.5, 70.9),
    ("None", 57.1, 89.8, 38.3, 22.7, 46.6, 82.3, 0.217, 7.9, 52.9),
    ("SeLaVi", 56.2, 88.9, 69.0, 30.2, 51.3, 80.9, 0.162, 8.4, 58.6),
    ("MoCo", 57.1, 90.7, 60.4, 30.9, 65.0, 84.5, 0.208, 8.3, 59.5),
    ("VideoMoCo", 59.0, 90.3, 65.4, 20.6, 57.3, 83.9, 0.185, 10.5, 58.6),
    ("Pre-Contrast", 56.9, 90.5, 64.6, 27.5, 66.1, 86.1, 0.164, 8.9, 60.5),
    ("AVID-CMA", 52.0, 90.4, 68.2, 33.4, 68.0, 87.3, 0.148, 8.2, 61.6),
    ("GDT", 58.0, 90.5, 78.4, 45.6, 66.0, 83.4, 0.123, 8.5, 64.8),
    ("RSPNet", 59.0, 91.1, 74.7, 32.2, 65.4, 83.6, 0.145, 9.0, 62.6),
    ("TCLR", 59.8, 91.6, 72.6, 26.3, 60.7, 84.7, 0.142, 12.2, 61.7),
    ("CtP", 59.6, 92.0, 61.0, 32.9, 79.1, 88.8, 0.178, 9.6, 63.2),
    ("This Chapter (Mini-Kinetics)", 59.4, 92.2, 65.5, 48.0, 78.3, 90.9, 0.150, 9.0, 66.0),
    ("This Chapter", 60.2, 92.8, 65.7, 47.0, 80.1, 91.0, 0.150, 10.3, 66.5),
]


def table_5_8_results():
    return [{"checkpoint": row[0], "setup": s, "metric_name": "counting_error" if s == "ucf_rc" else "top1",
             "value": v} for row in TABLE_5_8 for s, v in zip(se.SEVERE_ORDER, row[1:9])]


def parse_markdown(text):
    lines = [l for l in text.strip().splitlines()]
    cells = [[c.strip() for c in l.strip().strip("|").split("|")] for l in lines]
    return cells[0], cells[2:]


TABLE_5_8_RANK = [8.9, 8.3, 3.9, 11.6, 11.0, 9.1, 9.1, 9.0, 9.0, 8.6, 8.0, 7.6, 5.6, 5.4, 4.1]  # as printed


def test_table_5_8_rank_column_ranks_the_counting_error_the_wrong_way():
    """The printed Rank column is reproduced only when the UCF-RC error is ranked higher-is-better, against
    its own arrow (a slip in the thesis, like VideoMAE's Mean). summary_rows keeps lower-is-better, so its
    ranks differ from the printed ones (Supervised 2.4 instead of 3.9), and flipping the error reproduces them."""
    rows = {r["name"]: r for r in se.summary_rows(table_5_8_results())}
    ours = [rows[row[0]]["rank"] for row in TABLE_5_8]
    assert ours[2] == pytest.approx(2.375) and ours[0] == pytest.approx(10.625)  # Supervised, SVT
    flipped = [dict(r, value=-r["value"]) if r["setup"] == "ucf_rc" else r for r in table_5_8_results()]
    rows = {r["name"]: r for r in se.summary_rows(flipped)}
    assert [round(rows[row[0]]["rank"], 1) for row in TABLE_5_8] == pytest.approx(TABLE_5_8_RANK, abs=0.11)


def test_table_5_8_mean_column(tmp_path):
    # through the files runs write: one results JSON per (checkpoint, setup), found by load_results
    for i, r in enumerate(table_5_8_results()):
        d = tmp_path / f"run{i % 4}" / r["setup"]
        d.mkdir(parents=True, exist_ok=True)
        (d / f"results_{i}.json").write_text(json.dumps(r))
    (tmp_path / "run0" / "log.json").write_text("not a results file")  # not results*.json: ignored
    results = se.load_results([str(tmp_path / f"run{i}") for i in range(4)])
    assert len(results) == 15 * 8
    rows = {r["name"]: r for r in se.summary_rows(results)}
    for row in TABLE_5_8:
        assert abs(rows[row[0]]["mean"] - row[9]) < 0.1, (row[0], rows[row[0]]["mean"], row[9])
    # VideoMAE: (69.7 + 85.1 + 77.2 + 27.5 + 37.0 + 78.5 + (1 - 0.172) * 100 + 12.6) / 8 = 470.4 / 8 = 58.8;
    # Table 5.8 prints 58.1, a typo in the thesis
    assert rows["VideoMAE"]["mean"] == pytest.approx(58.8, abs=0.005)

    header, body = parse_markdown(se.summarize(results))
    assert header == ["Checkpoint", "SSv2", "Gym99", "UCF (10^3)", "Gym (10^3)", "FX-S1", "UB-S1", "UCF-RC↓",
                      "Charades", "Mean", "Rank↓"]
    assert sorted(b[0] for b in body) == sorted(row[0] for row in TABLE_5_8)  # rows in order of first appearance
    by_name = {b[0]: b for b in body}
    assert by_name["Supervised"][1:9] == ["60.8", "92.1", "86.6", "51.3", "79.0", "87.1", "0.132", "23.5"]
    assert by_name["Supervised"][9] == "70.9" and by_name["None"][9] == "52.9" and by_name["This Chapter"][9] == "66.5"


def test_summary_prints_the_layouts_of_tables_4_1_and_4_2():
    """Tables 4.1 (finetuning and linear columns) and 4.2 (FineGym granularities) as the thesis lays them
    out, from rows of the printed tables. Table 4.2 is mean per-class accuracy, Gym99's column included:
    CtP's Gym99 is 92.0 top-1 in Table 4.1 and 88.1 per-class in Table 4.2, both from one result."""
    rows_4_1 = {"None": ((77.3, 92.9, 89.8, 57.1, 25.7), None),  # finetuning; linear: K400, UCF, NTU, Gym, SSv2, EK
                "CtP": ((90.1, 94.3, 92.0, 59.6, 42.8), (7.6, 37.9, 22.6, 30.6, 12.2, 20.0))}
    rows_4_2 = {"None": (84.8, 24.7, 75.9, 46.6, 82.3, 50.0), "CtP": (88.1, 26.8, 86.2, 79.1, 88.8, 56.5)}
    results = []
    for name, (ft, lin) in rows_4_1.items():
        for setup, v in zip(("ucf101", "ntu60", "gym99", "ssv2", "ek100"), ft):
            extra = dict(mean_class_acc=rows_4_2[name][0]) if setup == "gym99" else {}
            results.append(dict(name=name, setup=setup, protocol="finetune", metric_name="top1", value=v, **extra))
        for setup, v in zip(("k400", "ucf101", "ntu60", "gym99", "ssv2", "ek100"), lin or ()):
            results.append(dict(name=name, setup=setup, protocol="linear", metric_name="top1", value=v))
        for setup, v in zip(("gym_vault", "gym_floor", "fx_s1", "ub_s1", "gym288"), rows_4_2[name][1:]):
            results.append(dict(name=name, setup=setup, protocol="finetune", metric_name="mean_class_acc", value=v))
    results.append(dict(name="CtP", setup="hmdb51", protocol="finetune", metric_name="top1", value=60.0))
    text = se.summary_tables(results)
    blocks = {b.splitlines()[0]: b.splitlines()[1:] for b in text.strip().split("\n\n")}
    assert list(blocks) == ["Table 4.4 / 5.8, SEVERE", "Table 4.1, finetuning", "Table 4.1, linear evaluation",
                            "Table 4.2, action granularity (mean per-class accuracy)", "Other setups"]
    # SSv2, Gym99, FX-S1, UB-S1 only; finetuning and linear results mixed there, so rows name their protocol
    _, body = parse_markdown("\n".join(blocks["Table 4.4 / 5.8, SEVERE"]))
    assert body[1] == ["CtP [finetune]", "59.6", "92.0", "–", "–", "79.1", "88.8", "–", "–", "–", "–"]
    header, body = parse_markdown("\n".join(blocks["Table 4.1, finetuning"]))
    assert header == ["Checkpoint", "UCF101", "NTU-60", "Gym99", "SSv2", "EK-100"]
    assert body == [["None", "77.3", "92.9", "89.8", "57.1", "25.7"], ["CtP", "90.1", "94.3", "92.0", "59.6", "42.8"]]
    header, body = parse_markdown("\n".join(blocks["Table 4.1, linear evaluation"]))
    assert header == ["Checkpoint", "Kinetics-400", "UCF101", "NTU-60", "Gym99", "SSv2", "EK-100"]
    assert body == [["CtP", "7.6", "37.9", "22.6", "30.6", "12.2", "20.0"]]  # None has no linear row
    header, body = parse_markdown("\n".join(blocks["Table 4.2, action granularity (mean per-class accuracy)"]))
    assert header == ["Checkpoint", "Gym99", "Vault", "Floor", "FX-S1", "UB-S1", "Gym-288"]
    assert body == [["None", "84.8", "24.7", "75.9", "46.6", "82.3", "50.0"],
                    ["CtP", "88.1", "26.8", "86.2", "79.1", "88.8", "56.5"]]
    header, body = parse_markdown("\n".join(blocks["Other setups"]))
    assert header == ["Checkpoint", "HMDB51", "Mean", "Rank↓"] and body == [["CtP", "60.0", "60.0", "1.0"]]


def test_a_top1_result_carries_the_mean_class_accuracy_of_table_4_2():
    # class 0: 2 of 2 right, class 1: 0 of 2 right, class 2: 1 of 1 -> top-1 3/5 = 60, per-class (1 + 0 + 1) / 3
    scores = torch.eye(3)[[0, 0, 0, 0, 2]]
    labels = torch.tensor([0, 0, 1, 1, 2])
    m = se._metric(scores, labels, se.SETUPS["gym99"], multilabel=False)
    assert m["metric_name"] == "top1" and m["value"] == pytest.approx(60.0)
    assert m["mean_class_acc"] == pytest.approx(200 / 3)


def toy(name, ssv2=None, ucf_rc=None):
    out = []
    if ssv2 is not None:
        out.append({"name": name, "setup": "ssv2", "metric_name": "top1", "value": ssv2})
    if ucf_rc is not None:
        out.append({"name": name, "setup": "ucf_rc", "metric_name": "counting_error", "value": ucf_rc})
    return out


def test_rank_and_mean_on_a_toy():
    setups = ("ssv2", "ucf_rc")
    # SSv2 (higher better): A 60, B 60, C 50 -> ranks 1, 1 (tie: nobody strictly better), 3
    # UCF-RC (lower better): A 0.2, B 0.1, C 0.3 -> ranks 2, 1, 3
    # Rank: A 1.5, B 1.0, C 3.0.  Mean: A (60 + 80)/2 = 70, B (60 + 90)/2 = 75, C (50 + 70)/2 = 60
    results = toy("A", 60, 0.2) + toy("B", 60, 0.1) + toy("C", 50, 0.3)
    rows = {r["name"]: r for r in se.summary_rows(results, setups)}
    assert [rows[n]["rank"] for n in "ABC"] == [1.5, 1.0, 3.0]
    assert [rows[n]["mean"] for n in "ABC"] == [pytest.approx(70), pytest.approx(75), pytest.approx(60)]
    header, body = parse_markdown(se.summarize(results, setups))
    assert header == ["Checkpoint", "SSv2", "UCF-RC↓", "Mean", "Rank↓"]
    assert body == [["A", "60.0", "0.200", "70.0", "1.5"], ["B", "60.0", "0.100", "75.0", "1.0"],
                    ["C", "50.0", "0.300", "60.0", "3.0"]]

    # D lacks UCF-RC: '–' there, no Mean or Rank, but its SSv2 70 still ranks the others
    # (SSv2 ranks become A 2, B 2, C 4 -> Rank A 2.0, B 1.5, C 3.5)
    header, body = parse_markdown(se.summarize(results + toy("D", 70), setups))
    assert body[3] == ["D", "70.0", "–", "–", "–"]
    assert [b[4] for b in body[:3]] == ["2.0", "1.5", "3.5"]


def test_repeated_results_are_averaged_and_other_setups_ignored():
    results = toy("A", 60, 0.2) + toy("A", 62, 0.4) + [{"checkpoint": "A", "setup": "hmdb51", "value": 1.0}]
    (row,) = se.summary_rows(results, ("ssv2", "ucf_rc"))
    assert row["values"] == {"ssv2": pytest.approx(61), "ucf_rc": pytest.approx(0.3)}
    assert row["mean"] == pytest.approx((61 + 70) / 2)


def test_mean_average_precision_matches_its_definition_on_random_ties():
    # the definition written out directly: a positive i ranked among all videos with score >= its own
    g = np.random.default_rng(0)
    scores = g.integers(0, 4, size=(40, 6)).astype(float)  # few distinct values: many ties
    targets = (g.random((40, 6)) < 0.3).astype(int)
    targets[:, 5] = 0
    _, ap = se.mean_average_precision(scores, targets)
    for c in range(5):
        s, y = scores[:, c], targets[:, c] == 1
        expected = np.mean([(y & (s >= s[i])).sum() / (s >= s[i]).sum() for i in np.flatnonzero(y)])
        assert ap[c] == pytest.approx(expected)
    assert math.isnan(ap[5])


def test_kmeans_is_reproducible_with_a_seed():
    x = torch.randn(60, 4, generator=torch.Generator().manual_seed(3))
    a1, c1 = se.kmeans(x, 4, iters=20, seed=7)
    a2, c2 = se.kmeans(x, 4, iters=20, seed=7)
    assert torch.equal(a1, a2) and torch.equal(c1, c2)
    assert len(set(a1.tolist())) == 4


def test_finetune_and_linear_results_get_separate_rows():
    results = [dict(r, protocol="finetune") for r in toy("A", 60, 0.2)] + \
              [dict(r, protocol="linear") for r in toy("A", 30, 0.5)]
    rows = {r["name"]: r for r in se.summary_rows(results, ("ssv2", "ucf_rc"))}
    assert rows["A [finetune]"]["values"] == {"ssv2": 60.0, "ucf_rc": 0.2}
    assert rows["A [linear]"]["values"] == {"ssv2": 30.0, "ucf_rc": 0.5}


def test_frozen_feature_results_are_no_table_rows():
    results = toy("A", 60, 0.2) + [{"name": "A", "setup": "ssv2", "value": 99.0, "task": "retrieval"}]
    (row,) = se.summary_rows(results, ("ssv2", "ucf_rc"))
    assert row["values"]["ssv2"] == 60  # the recall@1 of --task retrieval is not averaged in


def test_epic_kitchens_action_is_right_when_verb_and_noun_are():
    """Table B.4's actions: one layer of 97 verb and 300 noun outputs, each a softmax; the target is
    verb x 300 + noun; an action counts when both argmaxes are right."""
    setup = se.SETUPS["ek100_action"]
    targets = torch.tensor([5 * 300 + 7, 2 * 300 + 9, 1 * 300 + 4])
    scores = torch.zeros(3, 397)
    scores[0, 5], scores[0, 97 + 7] = 1, 1    # both right
    scores[1, 2], scores[1, 97 + 8] = 1, 1    # verb right, noun wrong
    scores[2, 0], scores[2, 97 + 4] = 1, 1    # verb wrong, noun right
    result = se._metric(scores, targets, setup, multilabel=False)
    assert result["metric_name"] == "action_top1" and result["value"] == pytest.approx(100 / 3)
    assert result["verb_top1"] == pytest.approx(200 / 3) and result["noun_top1"] == pytest.approx(200 / 3)
    logits = torch.randn(3, 397)
    expected = (torch.nn.functional.cross_entropy(logits[:, :97], targets // 300)
                + torch.nn.functional.cross_entropy(logits[:, 97:], targets % 300))
    assert se.recognition_loss(logits, targets, setup) == pytest.approx(expected.item())
