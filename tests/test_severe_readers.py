"""Readers of the SEVERE annotation files and the setup definitions (severe_eval.py, Table 4.4, App. B).

Runs on the real annotation files in ../shared/data/annotations (UCF101 split 1, HMDB51 split 1,
SSv2 labels + validation, FineGym Gym99, UCFRep zip). Not there, so written here in the official
format: the SSv2 train json, the Charades and EPIC-Kitchens-100 CSVs.
"""
import json
import math
import os
from collections import Counter

import numpy as np
import pytest

import severe_eval as se

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ANN = os.path.join(REPO, "..", "shared", "data", "annotations")
pytestmark = pytest.mark.skipif(not os.path.isdir(ANN), reason="real annotation files (../shared) not present")


# ---- the official splits: counts from the dataset papers / thesis App. B ----

def test_ucf101_split1():
    train, classes = se.read_ucf101_split(os.path.join(ANN, "ucf101"), "train")
    test, classes_t = se.read_ucf101_split(os.path.join(ANN, "ucf101"), "test")
    assert (len(train), len(test), len(classes)) == (9537, 3783, 101)
    assert classes == classes_t and classes[0] == "ApplyEyeMakeup" and classes[-1] == "YoYo"
    assert set(l for _, l in train) == set(l for _, l in test) == set(range(101))
    assert train[0] == ("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", 0)
    assert test[-1] == ("YoYo/v_YoYo_g07_c04.avi", 100)
    for path, label in train + test:  # label agrees with the folder name
        assert path.split("/")[0] == classes[label]
    # official split 1: groups 1-7 test, 8-25 train
    assert all(int(p.split("_g")[1][:2]) >= 8 for p, _ in train)
    assert all(int(p.split("_g")[1][:2]) <= 7 for p, _ in test)


def test_hmdb51_split1():
    train, classes = se.read_hmdb51_split(os.path.join(ANN, "hmdb51"), "train")
    test, _ = se.read_hmdb51_split(os.path.join(ANN, "hmdb51"), "test")
    assert (len(train), len(test), len(classes)) == (3570, 1530, 51)
    assert classes == sorted(classes) and classes[0] == "brush_hair" and classes[-1] == "wave"
    # the 70/30 protocol: 70 train and 30 test videos in every class
    assert set(Counter(l for _, l in train).values()) == {70}
    assert set(Counter(l for _, l in test).values()) == {30}
    assert train[0] == ("brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0.avi", 0)
    assert all(p.split("/")[0] == classes[l] and p.endswith(".avi") for p, l in train + test)
    assert not {p for p, _ in train} & {p for p, _ in test}


def test_ssv2_validation():
    labels_json = os.path.join(ANN, "ssv2", "something-something-v2-labels.json")
    val, classes = se.read_ssv2_split(labels_json, os.path.join(ANN, "ssv2", "something-something-v2-validation.json"))
    assert len(val) == 24777 and len(classes) == 174
    assert all(0 <= l < 174 for _, l in val) and len({l for _, l in val}) == 174
    with open(labels_json) as f:
        label_of = json.load(f)
    # first entry of the file: id 74225, template 'Spinning [something] that quickly stops spinning'
    assert val[0] == ("74225.webm", int(label_of["Spinning something that quickly stops spinning"]))
    assert classes[int(label_of["Closing something"])] == "Closing something"
    assert not os.path.exists(os.path.join(ANN, "ssv2", "something-something-v2-train.json"))  # not shipped


def test_ssv2_takes_the_extension_found_on_disk(tmp_path):
    """SEVERE ran on converted SSv2 videos: a video on disk as .mp4 is used, a .webm one too, and a video
    that is on disk under no extension is left out."""
    val, _ = se.read_ssv2_split(os.path.join(ANN, "ssv2", "something-something-v2-labels.json"),
                                os.path.join(ANN, "ssv2", "something-something-v2-validation.json"))
    (a, label_a), (b, label_b) = val[0], val[1]
    (tmp_path / a.replace(".webm", ".mp4")).write_bytes(b"")
    (tmp_path / b).write_bytes(b"")
    samples = se.setup_samples("ssv2", "test", ANN, video_root=str(tmp_path))
    assert samples == [(a.replace(".webm", ".mp4"), label_a), (b, label_b)]


def test_ssv2_train_json_format_and_unknown_template(tmp_path):
    labels_json = os.path.join(ANN, "ssv2", "something-something-v2-labels.json")
    train = [{"id": "78687", "label": "holding potato next to vicks vaporub bottle",
              "template": "Holding [something] next to [something]",
              "placeholders": ["potato", "vicks vaporub bottle"]},
             {"id": "42326", "label": "spreading margarine onto bread",
              "template": "Spreading [something] onto [something]", "placeholders": ["margarine", "bread"]}]
    path = tmp_path / "something-something-v2-train.json"
    path.write_text(json.dumps(train))
    with open(labels_json) as f:
        label_of = json.load(f)
    samples, _ = se.read_ssv2_split(labels_json, str(path))
    assert samples == [("78687.webm", int(label_of["Holding something next to something"])),
                       ("42326.webm", int(label_of["Spreading something onto something"]))]
    train[1]["template"] = "Juggling [something]"
    path.write_text(json.dumps(train))
    with pytest.raises(se.AnnotationError, match=r"entry 1 \(id 42326\).*Juggling something"):
        se.read_ssv2_split(labels_json, str(path))


def test_gym99_and_within_set_subsets():
    tr_path, va_path = (os.path.join(ANN, "finegym", f"gym99_{s}.txt") for s in ("train", "val"))
    train, val = se.read_gym99_split(tr_path), se.read_gym99_split(va_path)
    assert (len(train), len(val)) == (20484, 8521)  # the train file has no final newline
    assert set(l for _, l in train) == set(range(99)) == set(l for _, l in val)
    assert train[0] == ("A0xAXXysHUo_E_002184_002237_A_0035_0036.avi", 93)
    original = dict(train + val)
    for name, lo, hi, counts in (("fx_s1", 6, 17, (1882, 777)), ("ub_s1", 74, 89, (3511, 1471))):
        assert (se.SETUPS[name].label_range) == (lo, hi)
        sub_tr = se.setup_samples(name, "train", ANN)
        sub_te = se.setup_samples(name, "test", ANN)
        assert (len(sub_tr), len(sub_te)) == counts
        n = hi - lo
        assert set(l for _, l in sub_tr) == set(range(n)) == set(l for _, l in sub_te)
        assert all(original[p] == l + lo for p, l in sub_tr + sub_te)  # remap is a shift by the first label
        assert sum(lo <= l < hi for _, l in train) == counts[0]  # nothing in the range was dropped
        assert se.SETUPS[name].num_classes == n


def test_ucfrep_split_from_zip():
    zip_path = os.path.join(ANN, "ucfrep", "ucf526_annotations.zip")
    train, val = se.read_ucfrep_split(zip_path, "train"), se.read_ucfrep_split(zip_path, "val")
    assert (len(train), len(val)) == (421, 105)
    assert not {v.path for v in train} & {v.path for v in val}
    for v in train + val:
        assert v.count == len(v.boundaries) - 1 >= 1
        assert list(v.boundaries) == sorted(v.boundaries)
    # first video, read by hand from repetition_label/BabyCrawling.txt: '1 29 64 105 155'
    assert train[0] == ("BabyCrawling/v_BabyCrawling_g01_c01.avi", (1, 29, 64, 105, 155), 4)
    # every path is a real UCF101 path, also for the class spelled differently in folder and file names
    ucf = {p for p, _ in se.read_ucf101_split(os.path.join(ANN, "ucf101"), "train")[0]}
    ucf |= {p for p, _ in se.read_ucf101_split(os.path.join(ANN, "ucf101"), "test")[0]}
    assert all(v.path in ucf for v in train + val)
    assert any(v.path.startswith("HandstandPushups/v_HandStandPushups_") for v in train)
    assert se.setup_samples("ucf_rc", "test", ANN) == [(v.path, v.boundaries) for v in val]


# ---- low-shot subsets (Sec 4.4) ----

def _severe_reference_subset(samples, total, seed):
    """The draw as the SEVERE code describes it, written out independently for comparison."""
    names = np.array([p for p, _ in samples])
    labels = np.array([l for _, l in samples])
    per_class = int(math.ceil(total / len(set(labels.tolist()))))
    rs = np.random.RandomState(seed)
    out = []
    for c in set(labels):  # the authors iterate a Python set of labels
        where = np.where(labels == c)[0]
        pick = rs.choice(where.shape[0], min(per_class, where.shape[0]), replace=False)
        out += list(zip(names[where[pick]].tolist(), labels[where[pick]].tolist()))
    return out


@pytest.mark.parametrize("setup,k,size,num_classes", [("ucf_1000", 10, 1010, 101), ("gym99_1000", 11, 1089, 99)])
def test_low_shot_subsets(setup, k, size, num_classes):
    full = se.setup_samples(setup.replace("_1000", "").replace("ucf", "ucf101"), "train", ANN)
    sub = se.setup_samples(setup, "train", ANN)
    assert len(sub) == size and len(set(p for p, _ in sub)) == size
    assert Counter(l for _, l in sub) == {c: k for c in range(num_classes)}
    assert set(sub) <= set(full)
    assert [l for _, l in sub] == sorted(l for _, l in sub)  # class by class, ascending
    assert sub == se.setup_samples(setup, "train", ANN)  # reproducible
    assert sub == _severe_reference_subset(full, 1000, 99999)
    other = se.setup_samples(setup, "train", ANN, subset_seed=12345)
    assert len(other) == size and set(other) != set(sub)
    # the test split is never subsampled
    assert len(se.setup_samples(setup, "test", ANN)) == len(se.setup_samples(setup.replace("_1000", "").replace(
        "ucf", "ucf101"), "test", ANN))


def test_low_shot_subset_by_hand():
    # class 0: a0..a4, class 1: b0, b1 (fewer than k = 3: all of them, in drawn order)
    samples = [("a0", 0), ("b0", 1), ("a1", 0), ("a2", 0), ("b1", 1), ("a3", 0), ("a4", 0)]
    rs = np.random.RandomState(7)
    pick_a = rs.choice(5, 3, replace=False)
    pick_b = rs.choice(2, 2, replace=False)
    expected = [(f"a{i}", 0) for i in pick_a] + [(f"b{i}", 1) for i in pick_b]
    assert se.low_shot_subset(samples, 2, total=6, seed=7) == expected


# ---- Charades (not shipped: a CSV in the official format) ----

CHARADES_CSV = (
    "id,subject,scene,quality,relevance,verified,script,objects,descriptions,actions,length\n"
    '46GP8,HR43,Kitchen,6,7,Yes,"A person cooking, then drinking.",food;cup,"A person cooks; drinks.",'
    '"c092 11.90 21.20;c147 0.00 12.60;c092 25.00 26.00",24.83\n'
    "N11GT,0KZ7,Stairs,6,7,Yes,A person walks.,stairs,A person walks up stairs.,,7.00\n"
    "ABC12,XYZ9,Bedroom,5,6,Yes,Sitting.,bed,Sits on bed.,c000 0.50 1.00,3.00\n"
)


def test_charades_reader_and_frame_labels(tmp_path):
    path = tmp_path / "Charades_v1_train.csv"
    path.write_text(CHARADES_CSV)
    videos = se.read_charades_csv(str(path))
    assert [v.path for v in videos] == ["46GP8.mp4", "N11GT.mp4", "ABC12.mp4"]
    assert videos[0].actions == [(92, 11.9, 21.2), (147, 0.0, 12.6), (92, 25.0, 26.0)]
    assert videos[1].actions == [] and videos[1].length == 7.0
    assert videos[2] == ("ABC12.mp4", [(0, 0.5, 1.0)], 3.0)

    # 1 fps, 27 frames at t = 0..26 s: c147 on for t in (0, 12.6) -> frames 1..12;
    # c092 on for (11.9, 21.2) -> 12..21 and (25, 26) -> none (open interval, no frame strictly inside)
    y = se.frame_labels(videos[0].actions, 27, 1.0)
    assert y.shape == (27, 157) and y.dtype == bool
    assert np.flatnonzero(y[:, 147]).tolist() == list(range(1, 13))
    assert np.flatnonzero(y[:, 92]).tolist() == list(range(12, 22))
    assert y.sum() == 12 + 10
    # 4 fps: c000 on (0.5, 1.0) -> t = 0.75 only = frame 3
    y = se.frame_labels(videos[2].actions, 12, 4.0)
    assert np.argwhere(y).tolist() == [[3, 0]]
    # empty actions: all off
    y = se.frame_labels(videos[1].actions, 175, 25.0)
    assert y.shape == (175, 157) and not y.any()


def test_charades_errors(tmp_path):
    header = CHARADES_CSV.splitlines()[0] + "\n"
    bad = tmp_path / "bad.csv"
    bad.write_text(header + "AAAAA,S,Home,6,7,Yes,s,o,d,c157 1.0 2.0,5.0\n")
    with pytest.raises(se.AnnotationError, match=r"bad\.csv:2: unknown class 'c157'"):
        se.read_charades_csv(str(bad))
    bad.write_text(header + "AAAAA,S,Home,6,7,Yes,s,o,d,c001 1.0 2.0,5.0\nBBBBB,S,Home,6,7,Yes,s,o,d,c001 1.0,5.0\n")
    with pytest.raises(se.AnnotationError, match=r"bad\.csv:3: expected 'cXXX start end'"):
        se.read_charades_csv(str(bad))


# ---- errors ----

def _ucf_dir(tmp_path, train_lines, test_lines=""):
    (tmp_path / "classInd.txt").write_text("1 ApplyEyeMakeup\r\n2 Archery\r\n")
    (tmp_path / "trainlist01.txt").write_text(train_lines)
    (tmp_path / "testlist01.txt").write_text(test_lines)
    return str(tmp_path)


def test_malformed_and_unknown_class_errors(tmp_path):
    d = _ucf_dir(tmp_path, "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\r\n\r\nArchery/v_Archery_g08_c01.avi\r\n")
    with pytest.raises(se.AnnotationError, match=r"trainlist01\.txt:3: expected 2 fields"):
        se.read_ucf101_split(d, "train")
    d = _ucf_dir(tmp_path, "Archery/v_Archery_g08_c01.avi 1\n")
    with pytest.raises(se.AnnotationError, match=r"trainlist01\.txt:1: index 1 disagrees with class 'Archery'"):
        se.read_ucf101_split(d, "train")
    d = _ucf_dir(tmp_path, "", "Archery/v_Archery_g01_c01.avi\nYoYo/v_YoYo_g01_c01.avi\n")
    with pytest.raises(se.AnnotationError, match=r"testlist01\.txt:2: unknown class 'YoYo'"):
        se.read_ucf101_split(d, "test")
    gym = tmp_path / "gym99_train.txt"
    gym.write_text("a.avi 3\nb.avi x\n")
    with pytest.raises(se.AnnotationError, match=r"gym99_train\.txt:2: label is not an integer"):
        se.read_gym99_split(str(gym))
    gym.write_text("a.avi 3\nb.avi 99\n")
    with pytest.raises(se.AnnotationError, match=r"gym99_train\.txt:2: unknown class 99"):
        se.read_gym99_split(str(gym))
    hmdb = tmp_path / "hmdb"
    hmdb.mkdir()
    (hmdb / "wave_test_split1.txt").write_text("a.avi 1 \nb.avi 3 \n")
    with pytest.raises(se.AnnotationError, match=r"wave_test_split1\.txt:2: split id"):
        se.read_hmdb51_split(str(hmdb), "train")


def test_missing_files_name_the_path(tmp_path):
    missing = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        se.read_ucf101_split(missing, "train")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        se.read_hmdb51_split(missing)
    with pytest.raises(FileNotFoundError, match=r"charades[/\\]Charades_v1_train\.csv"):
        se.setup_samples("charades", "train", ANN)  # Charades is not shipped
    with pytest.raises(FileNotFoundError, match="something-something-v2-train.json"):
        se.setup_samples("ssv2", "train", ANN)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        se.read_ucfrep_split(missing)


# ---- setups ----

def test_setups_match_tables():
    assert se.SEVERE_SETUPS == ("ssv2", "gym99", "ucf_1000", "gym99_1000", "fx_s1", "ub_s1", "ucf_rc", "charades")
    assert set(se.SETUPS) == set(se.SEVERE_SETUPS) | {"ucf101", "hmdb51", "ucf_aot", "gym_vault", "gym_floor",
                                                      "gym288", "ssv2_sub", "ntu60", "k400", "ek100", "ek100_noun",
                                                      "ek100_action"}
    S = se.SETUPS
    # SEVERE's yaml files in one-clip-per-video epochs (x 10 clips, SSv2 x 2; Table C.4's text differs, README)
    severe_configs = {"ucf101": (1e-4, 160, (60, 100, 140), 32), "hmdb51": (1e-4, 160, (60, 100, 140), 32),
                      "ssv2": (1e-4, 44, (24, 34, 40), 32), "gym99": (1e-4, 160, (60, 100, 140), 32),
                      "ucf_1000": (1e-4, 160, (60, 100, 140), 32), "gym99_1000": (1e-4, 160, (60, 100, 140), 32),
                      "fx_s1": (1e-4, 180, (70, 120, 160), 32), "ub_s1": (1e-4, 180, (70, 120, 160), 32),
                      "ucf_rc": (5e-5, 100, (), 32), "charades": (0.0375, 57, (41, 49), 16)}
    for name, (lr, epochs, steps, batch) in severe_configs.items():
        f = S[name].finetune
        assert (f.lr, f.epochs, tuple(f.milestones), f.batch_size) == (lr, epochs, steps, batch), name
    table_b2 = {"ucf101": (0.01, 100, (40, 80), 128), "gym99": (0.01, 120, (40, 80, 100), 64),
                "ssv2": (0.01, 40, (20, 30), 64)}
    for name, (lr, epochs, steps, batch) in table_b2.items():
        f = S[name].linear
        assert (f.lr, f.epochs, tuple(f.milestones), f.batch_size) == (lr, epochs, steps, batch), name
    metrics = {"ssv2": "top1", "gym99": "top1", "ucf_1000": "top1", "gym99_1000": "top1", "fx_s1": "mean_class_acc",
               "ub_s1": "mean_class_acc", "ucf_rc": "mean_count_error", "charades": "map", "ucf101": "top1",
               "hmdb51": "top1", "ucf_aot": "top1", "gym_vault": "mean_class_acc", "gym_floor": "mean_class_acc",
               "gym288": "mean_class_acc", "ssv2_sub": "top1", "ntu60": "top1", "k400": "top1",
               "ek100": "top1", "ek100_noun": "top1", "ek100_action": "action_top1"}
    assert {n: s.metric for n, s in S.items()} == metrics
    assert {n: s.task for n, s in S.items() if s.task != "recognition"} == {
        "ucf_rc": "counting", "charades": "multilabel", "ucf_aot": "aot"}
    assert (S["ucf_aot"].num_classes, S["charades"].num_classes, S["ssv2"].num_classes) == (2, 157, 174)
    for s in S.values():  # every annotation file a setup names exists or is one of those not shipped
        for rel in s.train_files + s.test_files:
            not_shipped = ("charades/", "ssv2/something-something-v2-train", "finegym/gym288", "kinetics400/",
                           "epic_kitchens/")
            if not rel.startswith(not_shipped):
                assert os.path.exists(os.path.join(ANN, rel.replace("*", "brush_hair"))), rel


def test_arrow_of_time_and_print_split(capsys):
    aot = se.setup_samples("ucf_aot", "test", ANN)
    ucf = se.setup_samples("ucf101", "test", ANN)
    assert len(aot) == 2 * 3783
    assert aot[0::2] == [(p, 0) for p, _ in ucf] and aot[1::2] == [(p, 1) for p, _ in ucf]
    se.print_split("ucf_1000", "train", ANN)
    lines = capsys.readouterr().out.splitlines()
    assert lines == [p for p, _ in se.setup_samples("ucf_1000", "train", ANN)]
    se.print_split("ucf_1000", "train", ANN, subset_seed=1)
    assert capsys.readouterr().out.splitlines() != lines
    with pytest.raises(KeyError, match="ucf_1001"):
        se.setup_samples("ucf_1001", "train", ANN)


def test_subset_size_draws_the_sample_size_sweep_as_severes_subsets():
    """Fig. 4.3 / B.13: 1,000 training videos doubling to the full set, the same number per class,
    drawn as the 10^3 subsets (RandomState(seed), classes in order), so every model sees the same videos."""
    full = se.setup_samples("ucf101", "train", ANN)
    for n, per_class in ((1000, 10), (2000, 20), (4000, 40)):
        subset = se.setup_samples("ucf101", "train", ANN, subset_size=n)
        counts = np.bincount([y for _, y in subset], minlength=101)
        assert len(subset) == 101 * per_class and counts.min() == counts.max() == per_class
        assert subset == se.setup_samples("ucf101", "train", ANN, subset_size=n)  # deterministic
        assert set(subset) <= set(full)
    assert se.setup_samples("ucf101", "train", ANN, subset_size=1000) == se.setup_samples("ucf_1000", "train", ANN)
    assert se.setup_samples("ucf_1000", "train", ANN, subset_size=0) == full  # 0: the whole split
    assert len(se.setup_samples("gym99", "train", ANN, subset_size=2000)) == 99 * 21
    args = se.parse_args(["--setup", "ucf_1000", "--data-root", "x"])
    assert args.subset_size == 1000 and se.parse_args(["--setup", "ucf101", "--data-root", "x"]).subset_size == 0


def test_table_4_2_granularities_vault_floor_and_gym288(tmp_path):
    """App. B.2.3: Vault, 6 actions, 1.0k train / 0.5k test; Floor 35 actions, 5.3k / 2.2k (labels 0..5 and
    6..40 of Gym99, as SEVERE's gym_event_*.py); Gym288, long-tailed, from its own lists (not shipped: a file
    in the official '<name>.avi <label>' format)."""
    for name, classes, train_n, test_n in (("gym_vault", 6, 1074, 446), ("gym_floor", 35, 5385, 2226)):
        train, test = se.setup_samples(name, "train", ANN), se.setup_samples(name, "test", ANN)
        assert (len(train), len(test)) == (train_n, test_n), name
        assert {y for _, y in train} == {y for _, y in test} == set(range(classes)), name
        assert se.SETUPS[name].num_classes == classes and se.SETUPS[name].metric == "mean_class_acc"
    gym99 = dict(se.setup_samples("gym99", "train", ANN))
    assert all(gym99[p] == y + 6 for p, y in se.setup_samples("gym_floor", "train", ANN))
    (tmp_path / "finegym").mkdir()
    (tmp_path / "finegym" / "gym288_train.txt").write_text("a_E_1.avi 0\nb_E_2.avi 287\nc_E_3.avi 150\n")
    (tmp_path / "finegym" / "gym288_val.txt").write_text("d_E_4.avi 287\n")
    assert se.setup_samples("gym288", "train", str(tmp_path)) == [("a_E_1.avi", 0), ("b_E_2.avi", 287),
                                                                 ("c_E_3.avi", 150)]
    (tmp_path / "finegym" / "gym288_val.txt").write_text("d_E_4.avi 288\n")
    with pytest.raises(se.AnnotationError, match="gym288_val.txt:1: unknown class 288"):
        se.setup_samples("gym288", "test", str(tmp_path))


def test_setup_all_takes_one_video_root_per_dataset(tmp_path):
    """--setup all over datasets stored apart: --dataset-root DATASET=DIR per dataset, --data-root for the rest."""
    ucf_train, ucf_test = se.setup_samples("ucf101", "train", ANN)[0][0], se.setup_samples("ucf101", "test", ANN)[0][0]
    hmdb_train = se.setup_samples("hmdb51", "train", ANN)[0][0]
    hmdb_test = se.setup_samples("hmdb51", "test", ANN)[0][0]
    for root, names in ((tmp_path / "ucf", (ucf_train, ucf_test)), (tmp_path / "hmdb", (hmdb_train, hmdb_test))):
        for name in names:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(b"")
    args = se.parse_args(["--dataset-root", f"ucf101={tmp_path / 'ucf'}", "--data-root", str(tmp_path / "hmdb"),
                          "--ann-root", ANN, "--setup", "ucf101"])
    args.run_setups = ["ucf101", "hmdb51"]
    d = se.Dist("cpu")
    ucf, hmdb = (se.prepare_setup(args, d, name) for name in ("ucf101", "hmdb51"))
    assert ucf["data"][0] == [(str(tmp_path / "ucf" / ucf_train), se.setup_samples("ucf101", "train", ANN)[0][1])]
    assert hmdb["data"][1][0][0] == str(tmp_path / "hmdb" / hmdb_test)
    assert ucf["args"].epochs == 200  # the from-scratch preset of SEVERE's configs, not the synthetic one
    only = se.parse_args(["--dataset-root", f"ucf101={tmp_path / 'ucf'}", "--ann-root", ANN, "--setup", "hmdb51"])
    only.run_setups = ["hmdb51"]
    with pytest.raises(SystemExit, match="no --dataset-root hmdb51=DIR and no --data-root"):
        se.prepare_setup(only, d, "hmdb51")
    with pytest.raises(SystemExit):
        se.parse_args(["--dataset-root", "finegym=/x"])


def test_ssv2_sub_is_a_quarter_of_every_class_and_the_full_validation_set(tmp_path, capsys):
    """App. C.4: "we randomly sample 25% of the data from the whole train set and spanning all categories";
    the training json is not shipped, so the test writes one in the official format."""
    import json
    import shutil
    (tmp_path / "ssv2").mkdir()
    for name in ("labels", "validation"):
        shutil.copy(os.path.join(ANN, "ssv2", f"something-something-v2-{name}.json"), tmp_path / "ssv2")
    labels = json.load(open(os.path.join(ANN, "ssv2", "something-something-v2-labels.json")))
    entries, n_of = [], {}
    for template, index in labels.items():
        n_of[int(index)] = 4 + int(index) % 9
        entries += [dict(id=f"{index}{k:03d}", label=template, template=template, placeholders=[])
                    for k in range(n_of[int(index)])]
    (tmp_path / "ssv2" / "something-something-v2-train.json").write_text(json.dumps(entries))
    sub = se.setup_samples("ssv2_sub", "train", str(tmp_path))
    counts = np.bincount([y for _, y in sub], minlength=174)
    assert all(counts[c] == max(1, round(0.25 * n)) for c, n in n_of.items())  # every class, a quarter of it
    assert sub == se.setup_samples("ssv2_sub", "train", str(tmp_path))  # fixed by --subset-seed
    assert sub != se.setup_samples("ssv2_sub", "train", str(tmp_path), subset_seed=1)
    assert set(sub) <= set(se.setup_samples("ssv2", "train", str(tmp_path)))
    assert se.setup_samples("ssv2_sub", "test", str(tmp_path)) == se.setup_samples("ssv2", "test", ANN)
    capsys.readouterr()
    se.main(["--setup", "ssv2_sub", "--print-split", "train", "--ann-root", str(tmp_path)])  # the draw, listed
    assert capsys.readouterr().out.split() == [path for path, _ in sub]


def test_ntu60_rgb_cross_subject_split_from_the_video_names(tmp_path, capsys):
    """Table 4.1's NTU-60: the released nturgb+d_rgb folder, names SsssCcccPpppRrrrAaaa_rgb.avi; cross-subject
    training subjects 1, 2, 4, 5, 8, ...; NTU-120's setups > 17 and actions > 60 are not NTU-60."""
    names = ["S001C001P001R001A001_rgb.avi", "S001C002P003R002A060_rgb.avi", "S017C003P002R001A010_rgb.avi",
             "S018C001P001R001A001_rgb.avi", "S001C001P001R001A061_rgb.avi", "S001C001P001R001A001.skeleton"]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    train = se.setup_samples("ntu60", "train", str(tmp_path), video_root=str(tmp_path))
    test = se.setup_samples("ntu60", "test", str(tmp_path), video_root=str(tmp_path))
    assert train == [("S001C001P001R001A001_rgb.avi", 0), ("S017C003P002R001A010_rgb.avi", 9)]
    assert test == [("S001C002P003R002A060_rgb.avi", 59)]  # subject 3 is a test subject
    args = se.parse_args(["--setup", "ntu60", "--data-root", str(tmp_path), "--checkpoint", "c"])
    assert (args.clip_len, args.epochs, args.milestones, args.batch_size) == (16, 180, [90, 140, 160], 64)
    with pytest.raises(FileNotFoundError, match="NTU-60: the split comes from the video names"):
        se.setup_samples("ntu60", "train", str(tmp_path / "nowhere"))
    capsys.readouterr()  # --print-split with both roots lists the videos (it printed nothing: videos sought in ANN)
    se.main(["--setup", "ntu60", "--print-split", "test", "--ann-root", str(tmp_path / "ann"), "--data-root",
             str(tmp_path)])
    assert capsys.readouterr().out.split() == ["S001C002P003R002A060_rgb.avi"]


def test_kinetics_400_linear_evaluation_setup(tmp_path, capsys):
    """Table 4.1's K-400 linear evaluation on the official CSVs ('label,youtube_id,time_start,time_end,split');
    Table B.2 has no finetuning protocol for it, so --protocol finetune is refused."""
    ann = tmp_path / "ann" / "kinetics400"
    ann.mkdir(parents=True)
    header = "label,youtube_id,time_start,time_end,split\n"
    (ann / "train.csv").write_text(header + "abseiling,aaa,10,20,train\nzumba,bbb,0,10,train\n"
                                   "abseiling,ccc,5,15,train\n")  # ccc: deleted from YouTube, not on disk
    (ann / "validate.csv").write_text(header + "zumba,ddd,3,13,validate\nabseiling,eee,0,10,validate\n")
    videos = tmp_path / "videos"
    for split, label, name in (("train", "abseiling", "aaa_000010_000020"), ("train", "zumba", "bbb_000000_000010"),
                               ("val", "zumba", "ddd_000003_000013"), ("val", "abseiling", "eee_000000_000010")):
        (videos / split / label).mkdir(parents=True, exist_ok=True)
        (videos / split / label / f"{name}.mp4").write_bytes(b"")
    train = se.setup_samples("k400", "train", str(tmp_path / "ann"), video_root=str(videos))
    test = se.setup_samples("k400", "test", str(tmp_path / "ann"), video_root=str(videos))
    assert [(os.path.basename(p), y) for p, y in train] == [("aaa_000010_000020.mp4", 0), ("bbb_000000_000010.mp4", 1)]
    assert [(os.path.basename(p), y) for p, y in test] == [("ddd_000003_000013.mp4", 1), ("eee_000000_000010.mp4", 0)]
    linear = se.parse_args(["--setup", "k400", "--protocol", "linear", "--data-root", "x", "--checkpoint", "c"])
    assert (linear.epochs, linear.milestones, linear.batch_size, linear.clip_len) == (40, [10, 20, 30], 64, 16)
    with pytest.raises(SystemExit, match="linearly only; add --protocol linear"):
        se.schedule(se.parse_args(["--setup", "k400", "--data-root", "x"]), se.SETUPS["k400"])
    capsys.readouterr()  # --print-split: the videos on disk under --data-root, the CSV under --ann-root
    se.main(["--setup", "k400", "--print-split", "train", "--ann-root", str(tmp_path / "ann"), "--data-root",
             str(videos)])
    assert [os.path.basename(p) for p in capsys.readouterr().out.split()] == ["aaa_000010_000020.mp4",
                                                                            "bbb_000000_000010.mp4"]
    (ann / "train.csv").write_text(header + "abseiling,aaa,ten,20,train\n")  # malformed: file:line, no traceback
    with pytest.raises(SystemExit, match=r"train.csv:2: bad Kinetics row .* \(--ann-root "):
        se.main(["--setup", "k400", "--protocol", "linear", "--print-split", "train", "--ann-root",
                 str(tmp_path / "ann"), "--data-root", str(videos)])


EPIC_HEADER = ("narration_id,participant_id,video_id,narration_timestamp,start_timestamp,stop_timestamp,"
               "start_frame,stop_frame,narration,verb,verb_class,noun,noun_class,all_nouns,all_noun_classes\n")


def test_epic_kitchens_100_verbs_and_nouns_are_segments_of_the_recordings(tmp_path):
    """Table 4.1's EK-100 (verbs) and Table B.4's nouns from the official CSVs: each narration is the segment
    start_frame..stop_frame (1-based) of P01/videos/P01_01.MP4; a recording not on disk is left out."""
    ann = tmp_path / "ann" / "epic_kitchens"
    ann.mkdir(parents=True)
    (ann / "EPIC_100_train.csv").write_text(EPIC_HEADER +
        'P01_01_0,P01,P01_01,00:00:00.00,00:00:00.14,00:00:03.37,8,202,open door,open,3,door,8,"[\'door\']",[8]\n'
        'P01_01_1,P01,P01_01,00:00:04.00,00:00:04.37,00:00:06.17,262,370,turn on light,turn-on,6,light,113,'
        '"[\'light\']",[113]\n'
        'P02_03_0,P02,P02_03,00:00:01.00,00:00:01.00,00:00:02.00,60,120,wash cup,wash,2,cup,13,"[\'cup\']",[13]\n')
    (ann / "EPIC_100_validation.csv").write_text(EPIC_HEADER +
        'P01_11_0,P01,P01_11,00:00:00.00,00:00:00.50,00:00:01.50,30,90,take knife,take,0,knife,5,"[\'knife\']",[5]\n')
    videos = tmp_path / "videos"
    for name in ("P01/videos/P01_01.MP4", "P01/videos/P01_11.mp4"):  # P01_11 re-encoded; P02_03 not downloaded
        (videos / name).parent.mkdir(parents=True, exist_ok=True)
        (videos / name).write_bytes(b"")
    verbs = se.setup_samples("ek100", "train", str(tmp_path / "ann"), video_root=str(videos))
    assert verbs == [("P01/videos/P01_01.MP4", 3, 7, 201), ("P01/videos/P01_01.MP4", 6, 261, 369)]
    nouns = se.setup_samples("ek100_noun", "test", str(tmp_path / "ann"), video_root=str(videos))
    assert nouns == [("P01/videos/P01_11.mp4", 5, 29, 89)]  # the extension found on disk
    actions = se.setup_samples("ek100_action", "train", str(tmp_path / "ann"), video_root=str(videos))
    assert [y for _, y, *_ in actions] == [3 * 300 + 8, 6 * 300 + 113]  # verb x 300 + noun
    assert (se.SETUPS["ek100"].num_classes, se.SETUPS["ek100_noun"].num_classes) == (97, 300)
    args = se.parse_args(["--setup", "ek100", "--data-root", "x", "--checkpoint", "c"])
    assert (args.lr, args.epochs, args.milestones, args.gamma, args.batch_size) == (0.0025, 30, [20, 25], 0.1, 32)
    (ann / "EPIC_100_validation.csv").write_text(EPIC_HEADER + "P01_11_0,P01,P01_11,,,,30,20,x,take,0,knife,5,,\n")
    with pytest.raises(se.AnnotationError, match="EPIC_100_validation.csv:2: start_frame 30 and stop_frame 20"):
        se.setup_samples("ek100", "test", str(tmp_path / "ann"))
    (ann / "EPIC_100_validation.csv").write_text(EPIC_HEADER + "P01_11_0,P01,P01_11,,,,30,90,x,take,97,knife,5,,\n")
    with pytest.raises(se.AnnotationError, match="validation.csv:2: unknown verb class 97"):
        se.setup_samples("ek100", "test", str(tmp_path / "ann"))
