"""skeleton_contrast.py: the contrast wiring of Eq. 3.5-3.8 on hand-made embeddings, the label
subsets and kNN of the downstream protocols, and the script driven the way a user drives it
(command lines, in process, with tiny flags on skeletons written in the real .npy/.pkl format)."""
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import skeleton_contrast as sc
from common.synthetic import synthetic_skeleton_dataset
from tests.script_run import run_main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Tiny everything: 16-frame views, encoders at 1/16 width, batch 8, a 24-key queue.
TINY = ["--frames", "16", "--width", "0.0625", "--batch-size", "8", "--queue-size", "24",
        "--workers", "0", "--print-freq", "1", "--device", "cpu"]
# --eval with a --checkpoint builds the encoders the checkpoint holds, and refuses --width
EVAL = ["--frames", "16", "--batch-size", "8", "--queue-size", "24", "--workers", "0", "--print-freq", "1",
        "--device", "cpu"]


@pytest.fixture(scope="module")
def skeletons(tmp_path_factory):
    root = tmp_path_factory.mktemp("skeletons")
    return synthetic_skeleton_dataset(root=str(root / "a"), num_classes=4, per_class_train=8,
                                      per_class_val=4, frames=(20, 40), seed=3)


def run(args, check=True):
    """`python skeleton_contrast.py ARGS`, in process (tests/script_run.py)."""
    return run_main(sc, args, check)


def read_log(out_dir):
    with open(os.path.join(out_dir, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


# ============ Eq. 3.5-3.8 wiring ============

def test_contrast_pairs():
    assert sc.contrast_pairs(["seq"]) == [("seq", "seq")]
    assert sc.contrast_pairs(["seq", "stg"]) == [("seq", "stg"), ("stg", "seq")]
    pairs = sc.contrast_pairs(["seq", "img", "stg"])
    assert len(pairs) == 6 and all(a != b for a, b in pairs) and len(set(pairs)) == 6


class Fixed(nn.Module):
    """An 'encoder' that ignores its input and returns fixed embeddings (B, 4)."""

    def __init__(self, z):
        super().__init__()
        self.z = nn.Parameter(z.clone())

    def forward(self, x):
        return self.z


def info_nce(q, k, negatives, tau):
    """-log exp(q.k/tau) / (exp(q.k/tau) + sum_n exp(q.n/tau)), written out per sample."""
    losses = []
    for qi, ki in zip(q.tolist(), k.tolist()):
        pos = math.exp(sum(a * b for a, b in zip(qi, ki)) / tau)
        neg = sum(math.exp(sum(a * b for a, b in zip(qi, n)) / tau) for n in negatives.tolist())
        losses.append(-math.log(pos / (pos + neg)))
    return sum(losses) / len(losses)


def unit(*shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(*shape, generator=g), dim=-1)


def test_inter_skeleton_loss_uses_the_other_representations_key_and_queue():
    model = sc.SkeletonContrast(["seq", "stg"], width=0.0625, dim=4, queue_size=6, momentum=0.0,
                                temperature=0.5)
    z = {name: unit(3, 4, seed=i) for i, name in enumerate(["q_seq", "q_stg", "k_seq", "k_stg"])}
    model.encoder_q = nn.ModuleDict({"seq": Fixed(z["q_seq"]), "stg": Fixed(z["q_stg"])})
    model.encoder_k = nn.ModuleDict({"seq": Fixed(z["k_seq"]), "stg": Fixed(z["k_stg"])})
    queue_seq, queue_stg = unit(6, 4, seed=10), unit(6, 4, seed=11)
    model.queue_seq.copy_(queue_seq.T)
    model.queue_stg.copy_(queue_stg.T)

    # momentum 0: the key encoders become copies of the query encoders before computing keys
    loss, terms = model(torch.zeros(3), torch.zeros(3))
    k_seq, k_stg = z["q_seq"], z["q_stg"]
    expected_seq = info_nce(z["q_seq"], k_stg, queue_stg, 0.5)   # Eq. 3.7
    expected_stg = info_nce(z["q_stg"], k_seq, queue_seq, 0.5)   # Eq. 3.8
    assert float(terms["seq->stg"][0]) == pytest.approx(expected_seq, rel=1e-5)
    assert float(terms["stg->seq"][0]) == pytest.approx(expected_stg, rel=1e-5)
    assert float(loss.detach()) == pytest.approx(expected_seq + expected_stg, rel=1e-5)   # Eq. 3.6
    # each queue received its own representation's keys, at the same position
    assert torch.allclose(model.queue_seq[:, :3].T, k_seq) and torch.allclose(model.queue_stg[:, :3].T, k_stg)
    assert int(model.queue_ptr) == 3


def test_intra_skeleton_loss_and_momentum_update():
    model = sc.SkeletonContrast(["seq"], width=0.0625, dim=4, queue_size=4, momentum=0.75, temperature=0.2)
    q, k = unit(2, 4, seed=1), unit(2, 4, seed=2)
    model.encoder_q = nn.ModuleDict({"seq": Fixed(q)})
    model.encoder_k = nn.ModuleDict({"seq": Fixed(k)})
    queue = unit(4, 4, seed=3)
    model.queue_seq.copy_(queue.T)
    loss, terms = model(torch.zeros(2), torch.zeros(2))
    k_new = torch.nn.functional.normalize(0.75 * k + 0.25 * q, dim=1)  # theta_k <- m theta_k + (1-m) theta_q
    assert torch.allclose(model.encoder_k["seq"].z, 0.75 * k + 0.25 * q)
    assert float(loss.detach()) == pytest.approx(info_nce(q, k_new, queue, 0.2), rel=1e-5)   # Eq. 3.5
    assert list(terms) == ["seq->seq"]
    loss.backward()
    assert model.encoder_q["seq"].z.grad is not None and model.encoder_k["seq"].z.grad is None


def test_in_batch_negatives_are_the_other_sequences_of_the_batch():
    # --negatives batch: each encoder embeds both views in one batch (rows 0..B-1 the queries, B..2B-1
    # the keys); the query of sequence i must find key i of the other representation among the B keys
    model = sc.SkeletonContrast(["seq", "stg"], width=0.0625, dim=4, queue_size=6, temperature=0.5,
                                negatives="batch")
    z_seq, z_stg = unit(6, 4, seed=1), unit(6, 4, seed=2)
    model.encoder_q = nn.ModuleDict({"seq": Fixed(z_seq), "stg": Fixed(z_stg)})
    queue_before = model.queue_seq.clone()
    loss, terms = model(torch.zeros(3), torch.zeros(3))
    for (a, qa), (b, kb) in [(("seq", z_seq), ("stg", z_stg)), (("stg", z_stg), ("seq", z_seq))]:
        q, k = qa[:3], kb[3:]
        expected = sum(info_nce(q[i:i + 1], k[i:i + 1], torch.cat([k[:i], k[i + 1:]]), 0.5) for i in range(3)) / 3
        assert float(terms[f"{a}->{b}"][0]) == pytest.approx(expected, rel=1e-5)
    assert torch.equal(model.queue_seq, queue_before) and int(model.queue_ptr) == 0  # no queue
    loss.backward()  # both views train the query encoders
    assert model.encoder_q["seq"].z.grad[3:].abs().sum() > 0 and model.encoder_q["seq"].z.grad[:3].abs().sum() > 0


def test_real_encoders_give_finite_loss_and_gradients():
    model = sc.SkeletonContrast(["seq", "img", "stg"], width=0.0625, queue_size=8, frames=16)
    x_q, x_k = torch.randn(2, 4, 3, 16, 25, 2)
    loss, terms = model(x_q, x_k)
    assert torch.isfinite(loss) and len(terms) == 6
    loss.backward()
    for r in ("seq", "img", "stg"):
        assert all(p.grad is not None for p in model.encoder_q[r].parameters()), r


# ============ downstream helpers ============

def test_class_balanced_subset():
    labels = np.repeat(np.arange(5), [100, 40, 20, 10, 3])
    subset = sc.class_balanced_subset(labels, 0.1, seed=0)
    counts = np.bincount(labels[subset], minlength=5)
    assert counts.tolist() == [10, 4, 2, 1, 1]  # rounded, at least one per class
    assert len(set(subset.tolist())) == len(subset)
    assert not np.array_equal(subset, sc.class_balanced_subset(labels, 0.1, seed=1))
    assert np.array_equal(subset, sc.class_balanced_subset(labels, 0.1, seed=0))


def test_knn_is_one_nearest_neighbour_by_cosine():
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    train_labels = torch.tensor([0, 1, 2])
    # (10, 1) is far from (1, 0) in Euclidean distance but has cosine 0.995 with it
    test = torch.tensor([[10.0, 1.0], [0.1, 3.0], [-0.2, -0.1], [1.0, 1.2]])
    assert sc.knn_top1(train, train_labels, test, torch.tensor([0, 1, 2, 1]), chunk=3) == 1.0
    assert sc.knn_top1(train, train_labels, test, torch.tensor([0, 0, 0, 0])) == 0.25


# ============ the script ============

def test_pretrain_resume_and_every_eval(skeletons, tmp_path):
    out = str(tmp_path / "run")
    data = ["--data-root", skeletons["root"]]
    run([*TINY, *data, "--epochs", "1", "--out-dir", out, "--save-examples", "--schedule", "1"])
    proc = run([*TINY, *data, "--epochs", "2", "--out-dir", out, "--resume", "auto", "--schedule", "1"])
    assert "resumed from" in proc.stdout
    log = read_log(out)
    assert [r["epoch"] for r in log] == [0, 1]
    assert log[0]["lr"] == pytest.approx(0.01) and log[1]["lr"] == pytest.approx(0.001)  # dropped after 1
    assert {"loss seq->stg", "loss stg->seq", "top1 seq->stg"} <= set(log[1])
    ckpt = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)
    # 32 sequences, batch 8: 4 iterations per epoch, 2 epochs of 8 keys each into a 24-key queue
    assert int(ckpt["model"]["queue_ptr"]) == (2 * 4 * 8) % 24
    assert os.path.getsize(os.path.join(out, "examples.png")) > 0
    for r in ("seq", "stg"):  # each query encoder alone, loadable strictly into a fresh encoder
        state = torch.load(os.path.join(out, f"backbone_{r}.pt"), weights_only=True)
        sc.build_encoder(r, 0.0625, 16).load_state_dict(state, strict=True)
        assert torch.equal(state[next(iter(state))], ckpt["model"][f"encoder_q.{r}.backbone.{next(iter(state))}"])

    ckpt_flag = ["--checkpoint", os.path.join(out, "checkpoint.pt")]
    few = ["--epochs", "2", "--schedule", "1"]
    for name, extra in [("linear", few), ("knn", []), ("semi", [*few, "--label-fraction", "0.25", "--repeats", "2"]),
                        ("finetune", few), ("transfer", [*few, "--transfer-data-root", skeletons["root"]]),
                        ("linear", [*few, "--downstream-reprs", "seq,stg"])]:
        proc = run([*EVAL, *data, "--eval", name, *ckpt_flag, *extra, "--out-dir", out])
        assert f"{name} top-1:" in proc.stdout, proc.stdout
    last = json.load(open(os.path.join(out, "eval_linear_seq.json")))
    assert last["selected_on_test"] is False and last["epochs_read"] == [1]  # the last of 2 epochs
    run([*EVAL, *data, "--eval", "linear", *ckpt_flag, *few, "--select-on-test", "--out-dir", out])
    best = json.load(open(os.path.join(out, "eval_linear_seq_best.json")))  # beside the last epoch's, not over it
    assert best["selected_on_test"] is True and best["epochs_read"][0] in (0, 1)
    assert json.load(open(os.path.join(out, "eval_linear_seq.json")))["selected_on_test"] is False
    other = str(tmp_path / "other.pt")  # another checkpoint's result would overwrite this one's: refused first
    shutil.copy(os.path.join(out, "checkpoint.pt"), other)
    proc = run([*EVAL, *data, "--eval", "linear", "--checkpoint", other, *few, "--out-dir", out], check=False)
    assert proc.returncode != 0 and "give another --out-dir" in proc.stderr and "epoch 0" not in proc.stdout
    result = json.load(open(os.path.join(out, "eval_semi_0.25_seq.json")))
    assert len(result["runs"]) == 2 and all(0 <= r <= 100 for r in result["runs"])
    assert result["train_samples"] == 32 and result["val_samples"] == 16
    linear = json.load(open(os.path.join(out, "eval_linear_seq+stg.json")))
    assert linear["downstream_reprs"] == ["seq", "stg"]
    assert set(linear["parameters"]) == {"seq", "stg"} and all(n > 0 for n in linear["parameters"].values())

    # a representation that was not pretrained cannot be evaluated (Table 3.6)
    proc = run([*EVAL, *data, "--eval", "linear", *ckpt_flag, "--downstream-reprs", "img", "--out-dir", out],
               check=False)
    assert proc.returncode != 0 and "img was not pretrained" in proc.stdout + proc.stderr
    # a checkpoint that lacks a weight of the encoder is refused, naming the key
    state = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)
    dropped = next(k for k in state["model"] if k.startswith("encoder_q.seq.backbone."))
    del state["model"][dropped]
    bad = str(tmp_path / "bad.pt")
    torch.save(state, bad)
    proc = run([*EVAL, *data, "--eval", "linear", "--checkpoint", bad, "--out-dir", out], check=False)
    assert proc.returncode != 0 and "does not match" in proc.stderr
    assert dropped[len("encoder_q.seq.backbone."):] in proc.stderr


def test_bad_flags_are_named(skeletons, tmp_path, capsys):
    """Each refused with one line (argparse's error or SystemExit's message, no traceback) naming the flag;
    in process, as main(argv) is what the command line runs."""
    def refusal(*argv):
        with pytest.raises(SystemExit) as stop:
            sc.main([*TINY, *argv])
        return f"{stop.value.code} {capsys.readouterr().err}"

    assert "seq,rgb" in refusal("--data-root", skeletons["root"], "--reprs", "seq,rgb")
    assert "--queue-size 20 is not a whole number" in refusal("--data-root", skeletons["root"], "--queue-size", "20")
    message = refusal("--data-root", str(tmp_path), "--out-dir", str(tmp_path / "o"))
    assert f"--data-root {tmp_path}" in message and "train_data_joint.npy" in message
    assert "--eval linear needs --checkpoint" in refusal("--eval", "linear")


def test_torchrun_two_processes(skeletons, tmp_path):
    out = str(tmp_path / "ddp")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29523",
         "skeleton_contrast.py", *TINY, "--data-root", skeletons["root"], "--batch-size", "4",
         "--reprs", "seq,img", "--epochs", "1", "--out-dir", out],
        cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ckpt = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)
    # 32 sequences over 2 processes of batch 4: 4 steps, each enqueues the keys of both processes
    assert int(ckpt["model"]["queue_ptr"]) == (4 * 8) % 24
    assert read_log(out)[0]["epoch"] == 0


def test_torchrun_in_batch_negatives_are_the_global_batch(skeletons, tmp_path):
    # one sequence per process: with every process's keys as N each term is about ln 2; a process's own
    # batch alone would hold no negative and give a loss of exactly 0
    out = str(tmp_path / "ddp")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29527",
         "skeleton_contrast.py", *TINY, "--data-root", skeletons["root"], "--batch-size", "2",
         "--reprs", "seq,img", "--negatives", "batch", "--epochs", "1", "--out-dir", out],
        cwd=REPO, capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    record = read_log(out)[0]
    assert record["loss seq->img"] > 0.3 and record["loss img->seq"] > 0.3, record


def test_benchmark_prints_every_figure(skeletons):
    proc = run([*TINY, "--data-root", skeletons["root"], "--benchmark"])
    assert "augment pairs/s:" in proc.stdout
    for r in ("seq", "img", "stg"):
        assert f"{r} encoder forward+backward:" in proc.stdout
    assert "augmentation share:" in proc.stdout


def test_prepare_ntu_from_the_command_line(tmp_path):
    from tests.test_skeleton_data import moving_sequence, write_ntu

    rng = np.random.default_rng(0)
    raw = tmp_path / "nturgb+d_skeletons"
    raw.mkdir()
    for name, length in {"S001C001P001R001A001": 30, "S001C002P001R001A002": 40,
                         "S001C003P003R002A003": 25}.items():
        seq = moving_sequence(rng, length, 0.1)
        write_ntu(raw / f"{name}.skeleton", [[seq[t]] for t in range(length)])
    out = tmp_path / "xview"
    proc = run(["--prepare", "ntu60", "--protocol", "xview", "--raw-dir", str(raw), "--data-root", str(out)])
    assert "train 2 samples, val 1 samples" in proc.stdout
    train, val = sc.dataset_splits(str(out))
    assert len(train) == 2 and len(val) == 1 and train.labels.tolist() == [1, 2]
    proc = run(["--prepare", "ntu60", "--raw-dir", str(raw)], check=False)
    assert proc.returncode != 0 and "--data-root" in proc.stderr


def test_linear_probe_joins_encoders_of_two_checkpoints(tmp_path):
    """Table A.4's combined intra rows: --checkpoint A B with --downstream-reprs seq,stg takes seq from A and
    stg from B; a count that fits neither one nor one per representation is refused."""
    paths = {}
    for name, reprs in (("a", ["seq"]), ("b", ["stg"])):
        model = sc.SkeletonContrast(reprs, width=0.0625, queue_size=8, frames=16)
        paths[name] = str(tmp_path / f"{name}.pt")
        torch.save(dict(model=model.state_dict(), args=dict(reprs=reprs, width=0.0625, frames=16)), paths[name])
    args = sc.parse_args(["--eval", "linear", "--checkpoint", paths["a"], paths["b"], "--downstream-reprs",
                          "seq,stg", "--frames", "16", "--data-root", str(tmp_path)])
    backbones, width = sc.pretrained_backbones(args)
    assert list(backbones) == ["seq", "stg"] and width == 0.0625
    for r, name in (("seq", "a"), ("stg", "b")):
        saved = torch.load(paths[name], weights_only=True)["model"]
        for k, v in backbones[r].state_dict().items():
            assert torch.equal(v, saved[f"encoder_q.{r}.backbone.{k}"])
    args.downstream_reprs = ["stg", "seq"]  # the order names the sources: stg is not in a.pt
    with pytest.raises(SystemExit, match="stg was not pretrained in .*a.pt"):
        sc.pretrained_backbones(args)
    args.downstream_reprs = ["seq"]
    with pytest.raises(SystemExit, match="2 files for --downstream-reprs seq"):
        sc.pretrained_backbones(args)


def test_projection_head_initialisation_is_the_authors():
    """The head's last layer is the encoder's original fc in the authors' code, with its initialisation:
    AGCN N(0, 2 / 128), BiGRU and HCN Xavier-uniform (HCN with zero bias); the first layer PyTorch's default."""
    torch.manual_seed(0)
    d = 256
    heads = {r: sc.ProjectionHead(d, 128, r) for r in ("seq", "img", "stg")}
    xavier_std = math.sqrt(2.0 / (d + 128))  # uniform on +-sqrt(6 / (fan_in + fan_out))
    for r, head in heads.items():
        w = head.net[2].weight.detach()
        assert w.shape == (128, d)
        expected = math.sqrt(2.0 / 128) if r == "stg" else xavier_std
        assert float(w.std()) == pytest.approx(expected, rel=0.05)
        if r != "stg":
            assert float(w.abs().max()) <= math.sqrt(6.0 / (d + 128))
        default = 1 / math.sqrt(d)  # PyTorch's default: U(+-1/sqrt(fan_in)), std = bound / sqrt(3)
        assert float(head.net[0].weight.detach().std()) == pytest.approx(default / math.sqrt(3), rel=0.05)
    assert float(heads["img"].net[2].bias.detach().abs().max()) == 0
    assert float(heads["seq"].net[2].bias.detach().abs().max()) > 0


def test_examples_draw_the_upright_plane(skeletons, tmp_path):
    """The synthetic skeletons are normalised (z up the spine, x along the shoulders): the default x-z
    projection shows a standing person taller than wide, the x-y plane would show them from above."""
    from PIL import Image

    train = sc.SkeletonDataset(**skeletons["train"])
    sample, _, n = train[0]  # raise_left_arm, one person
    x, num_frames = torch.from_numpy(sample)[None], torch.tensor([n])
    args = sc.parse_args(["--frames", "16"])
    sizes = {}
    for axes in ("default", (0, 1)):  # the default is what pretraining's --save-examples draws
        chosen = {} if axes == "default" else dict(axes=axes)
        path = sc.save_examples(x, num_frames, args, str(tmp_path / f"{axes}.png"), size=64, **chosen)
        image = np.asarray(Image.open(path).convert("L"))
        tile = image[4:4 + 64, 4:4 + 64]  # the first frame of the original
        rows, cols = np.nonzero(tile > 100)
        sizes[axes] = (rows.max() - rows.min(), cols.max() - cols.min())
    height, width = sizes["default"]
    assert height > 1.5 * width
    assert sizes[(0, 1)][0] < height / 2  # seen from above: shallow


def test_batch_top1_tells_freshness_from_instance_discrimination():
    """The shortcut of the synthetic runs: every key of the current batch shares a direction that the older
    keys of the queue lack (the key encoder's drift). Queries that point that way find their positive among
    the queue every time (top1 = 1) without telling the sequences apart: batch_top1 stays at 1 / B. Queries
    that match their own key score batch_top1 = 1."""
    B, dim = 16, 32
    fresh = torch.nn.functional.normalize(torch.randn(dim), dim=0)
    k = torch.nn.functional.normalize(unit(B, dim, seed=1) + 3 * fresh, dim=1)
    queue = unit(64, dim, seed=2)  # older keys, without the fresh direction
    model = sc.SkeletonContrast(["seq"], width=0.0625, dim=dim, queue_size=64, momentum=1.0, temperature=0.1)
    model.queue_seq.copy_(queue.T)
    q_fresh = fresh.expand(B, dim)  # the same query for every sample: knows only the freshness
    model.encoder_q, model.encoder_k = nn.ModuleDict({"seq": Fixed(q_fresh)}), nn.ModuleDict({"seq": Fixed(k)})
    _, terms = model(torch.zeros(B), torch.zeros(B))
    _, top1, batch = terms["seq->seq"]
    assert float(top1) == 1.0 and float(batch) <= 2.0 / B
    model.encoder_q = nn.ModuleDict({"seq": Fixed(k)})  # queries that match their own key
    _, top1, batch = model(torch.zeros(B), torch.zeros(B))[1]["seq->seq"]
    assert float(batch) == 1.0


def test_synthetic_preset_uses_the_thesis_key_momentum():
    """The fix of the shortcut above in the CPU preset: with the earlier momentum 0.99 and lr 0.03 the key
    encoders drifted so fast over the 8 batches in the queue that stg->seq found its key among the queue 97%
    of the time while batch_top1 stayed at chance and the features fell below a random encoder's."""
    args = sc.parse_args([])
    assert args.moco_momentum == 0.999 and args.lr <= 0.01
