"""Tests of common/video.py on small mp4 (h264 with B-frames) and avi (mpeg4) files."""
import os
import subprocess
import sys
import textwrap

import av
import numpy as np
import pytest
import torch

from common import video
from common.video import (BadVideoCounter, VideoClipDataset, VideoReadError, clip_indices,
                          count_frames, read_clip, read_kinetics_csv, read_samples,
                          read_video_list, uniform_starts)

NUM_FRAMES, HEIGHT, WIDTH = 60, 64, 96


def write_video(path, codec, options=None, num_frames=NUM_FRAMES):
    """Frames whose content changes every frame (a moving square and a drifting gradient)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.codec_context.gop_size = 8  # several keyframes, so reads must seek
        stream.options = options or {}
        for i in range(num_frames):
            image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
            image[..., 0] = (np.arange(WIDTH) * 2 + i * 7) % 256
            image[..., 1] = i * 4
            image[(i * 3) % HEIGHT:(i * 3) % HEIGHT + 8, (i * 5) % WIDTH:(i * 5) % WIDTH + 8] = 255
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))
    return str(path)


def full_decode(path, **to_ndarray):
    with av.open(path) as container:
        return np.stack([f.to_ndarray(format="rgb24", **to_ndarray) for f in container.decode(video=0)])


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    # B-pyramid + open GOP: the demuxer sometimes seeks to the keyframe *after* the target.
    mp4 = write_video(folder / "a.mp4", "libx264",
                      {"sc_threshold": "0", "x264-params": "bframes=3:b-pyramid=normal:open-gop=1"})
    avi = write_video(folder / "b.avi", "mpeg4")
    return {"mp4": mp4, "avi": avi}


# ============ reading ============

@pytest.mark.parametrize("kind", ["mp4", "avi"])
def test_count_frames_matches_full_decode(videos, kind):
    assert count_frames(videos[kind]) == len(full_decode(videos[kind])) == NUM_FRAMES


@pytest.mark.parametrize("kind", ["mp4", "avi"])
def test_read_clip_equals_sequential_decode(videos, kind):
    path = videos[kind]
    reference = full_decode(path)
    index_sets = [range(0, 8), range(5, 13), range(6, 40, 3), range(NUM_FRAMES - 4, NUM_FRAMES),
                  [30, 2, 2, 59, 30, 17], [9, 9, 9]]
    index_sets += [[k] for k in range(NUM_FRAMES)]  # every frame as first frame of a read
    for indices in index_sets:
        clip = read_clip(path, indices)
        assert clip.dtype == np.uint8 and clip.shape == (len(indices), HEIGHT, WIDTH, 3)
        assert np.array_equal(clip, reference[list(indices)]), list(indices)


@pytest.mark.parametrize("kind", ["mp4", "avi"])
def test_read_clip_short_side(videos, kind):
    path = videos[kind]
    reference = full_decode(path, width=48, height=32)  # short side 64 -> 32, aspect 3:2 kept
    clip = read_clip(path, [50, 3, 17, 17], short_side=32)
    assert clip.shape == (4, 32, 48, 3)
    assert np.array_equal(clip, reference[[50, 3, 17, 17]])


def test_read_clip_seeks_instead_of_decoding_from_start(videos, monkeypatch):
    calls = []
    decode_range = video._decode_range

    def spy(path, wanted, seek_to, last, short_side):
        frames, first_seen = decode_range(path, wanted, seek_to, last, short_side)
        calls.append((seek_to, first_seen))
        return frames, first_seen

    monkeypatch.setattr(video, "_decode_range", spy)
    read_clip(videos["mp4"], range(50, 58))
    assert 40 <= calls[-1][1] <= 50  # decoding started at a keyframe near frame 50, not at 0
    # At least one first frame makes the demuxer overshoot; read_clip must then seek further
    # back (already checked for exactness above, here we check the case is really exercised).
    calls.clear()
    for k in range(NUM_FRAMES):
        read_clip(videos["mp4"], [k])
    assert any(first_seen > seek_to for seek_to, first_seen in calls if seek_to > 0)


def test_read_clip_errors_name_the_file(videos, tmp_path):
    with pytest.raises(VideoReadError, match="a.mp4.*past the end"):
        read_clip(videos["mp4"], [5, NUM_FRAMES])
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4000))
    for path in (corrupt, tmp_path / "missing.mp4"):
        with pytest.raises(VideoReadError, match=path.name):
            read_clip(path, [0])
        with pytest.raises(VideoReadError, match=path.name):
            count_frames(path)


# ============ sampling ============

def test_clip_indices():
    rng = np.random.default_rng(0)
    assert clip_indices(100, 4, 2, start=10).tolist() == [10, 12, 14, 16]
    for _ in range(50):
        idx = clip_indices(100, 8, 3, rng=rng)
        assert len(idx) == 8 and np.all(np.diff(idx) == 3) and idx[0] >= 0 and idx[-1] < 100
    starts = {int(clip_indices(100, 8, 3, rng=rng)[0]) for _ in range(2000)}
    assert min(starts) == 0 and max(starts) == 100 - 22 and len(starts) == 79  # all fitting starts
    assert clip_indices(5, 8, 1, rng=rng).tolist() == [0, 1, 2, 3, 4, 0, 1, 2]  # loop padding
    assert clip_indices(5, 4, 2, start=0).tolist() == [0, 2, 4, 1]


def test_clip_indices_with_temporal_jitter():
    rng = np.random.default_rng(1)
    grids = np.stack([clip_indices(100, 8, 3, rng=rng, jitter=True) - 3 * np.arange(8) for _ in range(300)])
    low = grids.min(1)  # index i is start + 3 i + o_i with o_i in 0..2
    assert (grids.max(1) - low <= 2).all() and (grids.max(1) + 21 <= 99).all()  # the span fits: no wrap
    offsets = grids - low[:, None]
    assert set(np.unique(offsets)) == {0, 1, 2} and len({tuple(o) for o in offsets}) > 100
    assert clip_indices(100, 4, 1, start=5, rng=rng, jitter=True).tolist() == [5, 6, 7, 8]  # stride 1: none


def test_uniform_starts():
    assert uniform_starts(100, 16, 1, 1) == [42]  # centre clip
    assert uniform_starts(100, 16, 1, 3) == [0, 42, 84]
    assert uniform_starts(10, 16, 1, 3) == [0, 0, 0]


# ============ list files ============

def test_read_video_list(tmp_path, capsys):
    for rel in ("a/x.mp4", "b/y.avi", "frames/z/img_00001.jpg"):
        (tmp_path / "videos" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "videos" / rel).write_bytes(b"")
    good = tmp_path / "list.txt"
    good.write_text("a/x.mp4 3\n\nb/y.avi\nframes/z 120 7\nb/missing.avi 2\n")
    assert read_video_list(good, tmp_path / "videos") == [  # the video not on disk is left out
        (str(tmp_path / "videos/a/x.mp4"), 3), (str(tmp_path / "videos/b/y.avi"), -1),
        (str(tmp_path / "videos/frames/z"), 7)]
    assert "1 of 4 files are not on disk" in capsys.readouterr().err
    assert read_samples(good, tmp_path / "videos") == read_video_list(good, tmp_path / "videos")

    with pytest.raises(FileNotFoundError, match="nope.txt"):
        read_video_list(tmp_path / "nope.txt", tmp_path)
    with pytest.raises(FileNotFoundError, match="no_root"):
        read_video_list(good, tmp_path / "no_root")
    bad = tmp_path / "bad.txt"
    for content in ("a.mp4 1\nb.mp4 one\n", "a.mp4 1\nb.mp4 1 2 3\n"):
        bad.write_text(content)
        with pytest.raises(ValueError, match=f"{bad}:2:"):
            read_video_list(bad, tmp_path)


def test_read_kinetics_csv(tmp_path, capsys):
    root = tmp_path / "k400"
    for rel in ("air_drumming/abc_000010_000020.mp4", "abseiling/def_000000_000010.mkv",
                "zumba/ghi_000005_000015.mp4"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"")
    csv_path = tmp_path / "train.csv"
    csv_path.write_text("label,youtube_id,time_start,time_end,split,is_cc\n"
                        '"air drumming",abc,10,20,train,0\n'
                        "abseiling,def,0,10,train,0\n"
                        "zumba,ghi,5,15,train,0\n"
                        "zumba,gone,1,11,train,0\n")  # not downloaded: skipped
    samples, classes = read_kinetics_csv(csv_path, root)
    assert classes == ["abseiling", "air drumming", "zumba"]
    assert samples == [(str(root / "air_drumming/abc_000010_000020.mp4"), 1),
                       (str(root / "abseiling/def_000000_000010.mkv"), 0),
                       (str(root / "zumba/ghi_000005_000015.mp4"), 2)]
    assert "1 of 4 videos not found" in capsys.readouterr().err.replace("\n", " ")
    assert read_samples(csv_path, root) == samples
    assert "(first: gone_000001_000011)" in capsys.readouterr().err  # the missing ones are named
    csv_path.write_text("label,youtube_id,time_start,time_end,split\nzumba,ghi,five,15,train\n")
    with pytest.raises(ValueError, match=f"{csv_path}:2:"):
        read_kinetics_csv(csv_path, root)


# ============ dataset and bad files ============

@pytest.fixture
def bad_files(tmp_path):
    corrupt, empty = tmp_path / "corrupt.mp4", tmp_path / "empty.mp4"
    corrupt.write_bytes(np.random.default_rng(1).bytes(4000))
    empty.write_bytes(b"")
    return [str(corrupt), str(empty)]


def test_dataset_replaces_bad_videos(videos, bad_files, capsys):
    samples = [(videos["mp4"], 0), (videos["avi"], 1)] * 30 + [(p, 2) for p in bad_files]
    torch.manual_seed(0)
    dataset = VideoClipDataset(samples, clip_len=8, strides=(1, 2), short_side=32)
    for i in list(range(len(samples))) * 2:  # every bad file twice
        item = dataset[i]
        assert item["clip"].shape == (8, 32, 48, 3) and item["clip"].dtype == torch.uint8
        assert samples[item["index"]][1] == item["label"] != 2
        if i < len(samples) - 2:
            assert item["index"] == i
    # each bad file failed and was counted once; asked for again, it was replaced without a read
    assert dataset.counter.failures == len(bad_files)
    assert dataset.counter.reads == 2 * len(samples) + dataset.counter.failures
    warnings = capsys.readouterr().err.splitlines()
    assert sorted(w.split(":")[0] for w in warnings) == sorted(
        f"skipping unreadable video {p}" for p in bad_files)  # once per path


def test_dataset_stops_when_too_many_videos_are_bad(videos, bad_files):
    samples = [(videos["mp4"], 0)] * 8 + [(p, 2) for p in bad_files]  # 20% bad
    dataset = VideoClipDataset(samples, clip_len=4, short_side=32)
    with pytest.raises(RuntimeError, match=r"of \d+ video reads failed \(\d+\.\d%"):
        for i in list(range(len(samples))) * 10:
            dataset[i]
    assert dataset.counter.reads >= 20


def test_dataset_test_mode_clips(videos):
    dataset = VideoClipDataset([(videos["avi"], 5)], clip_len=8, strides=(2,), short_side=None,
                               train=False, num_clips=3)
    item = dataset[0]
    assert item["clip"].shape == (3, 8, HEIGHT, WIDTH, 3) and item["label"] == 5
    reference = full_decode(videos["avi"])
    for clip, start in zip(item["clip"], uniform_starts(NUM_FRAMES, 8, 2, 3)):
        assert np.array_equal(clip.numpy(), reference[start:start + 16:2])


def test_load_for_wrappers(videos):
    dataset = VideoClipDataset([(videos["mp4"], 0), (videos["avi"], 1)], clip_len=4, short_side=None)
    clip, label, index = dataset.load(1, start=10, stride=3)
    assert (label, index) == (1, 1)
    assert np.array_equal(clip.numpy(), full_decode(videos["avi"])[[10, 13, 16, 19]])


def test_a_segment_of_a_file_is_the_whole_video(videos):
    """(path, label, first, last): frames first..last of the file are the video (EPIC-Kitchens narrations)."""
    reference = full_decode(videos["mp4"])
    test = VideoClipDataset([(videos["mp4"], 3, 20, 35)], clip_len=4, strides=(2,), short_side=None,
                            train=False, num_clips=2)
    item = test[0]
    assert test.num_frames(0) == 16 and item["label"] == 3
    for clip, start in zip(item["clip"], uniform_starts(16, 4, 2, 2)):  # starts 0 and 9 within the segment
        assert np.array_equal(clip.numpy(), reference[20 + start:20 + start + 8:2])
    # a segment annotated past the end of its recording keeps the frames the file has
    assert VideoClipDataset([(videos["mp4"], 3, 50, NUM_FRAMES + 9)]).num_frames(0) == NUM_FRAMES - 50
    with pytest.raises(VideoReadError, match="starts past its last frame"):
        VideoClipDataset([(videos["mp4"], 3, NUM_FRAMES, NUM_FRAMES + 9)]).num_frames(0)
    train = VideoClipDataset([(videos["mp4"], 3, 20, 35)], clip_len=4, strides=(3,), short_side=None)
    for _ in range(5):
        clip = train[0]["clip"].numpy()
        first = next(k for k in range(len(reference)) if np.array_equal(reference[k], clip[0]))
        assert 20 <= first and first + 9 <= 35 and np.array_equal(clip, reference[first:first + 12:3])


def test_workers_share_counter_and_seeds_are_reproducible(videos, bad_files):
    samples = [(videos["avi"], 0)] * 23 + [(bad_files[0], 1)]
    dataset = VideoClipDataset(samples, clip_len=2, strides=(1,), short_side=16)
    counter = dataset.counter
    dataset.rng()  # a generator made in the main process must not be shared by forked workers
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=2)

    def epoch():
        return torch.cat([batch["clip"][:, 0, 0, 0, 1] for batch in loader])  # green = 4 * frame

    torch.manual_seed(0)
    first, second = epoch(), epoch()
    torch.manual_seed(0)
    assert torch.equal(epoch(), first)  # reproducible under a fixed seed
    assert not torch.equal(first, second)  # but epochs differ
    assert len(set(first[:4].tolist())) > 1 and not torch.equal(first[:4], first[4:8])
    assert counter.failures == 3 and counter.reads == 3 * 25  # counted in the workers


def test_counter_check_waits_for_min_reads():
    counter = BadVideoCounter(max_fraction=0.05, min_reads=20)
    counter.record_failure("x.mp4", "boom")
    counter.check()  # 1 of 1 failed, but too early to judge
    for _ in range(19):
        counter.record_ok()
    counter.check()  # 1 of 20 = 5%: not more than allowed
    counter.record_failure("y.mp4", "boom")
    with pytest.raises(RuntimeError, match=r"2 of 21 video reads failed \(9\.5%"):
        counter.check()


def test_workers_forked_after_a_resize_in_the_main_process_do_not_hang(tmp_path):
    """PyAV keeps one swscale context per thread. One made with slice threads in the main process (a
    resized read there: an evaluation, --save-examples, an in-process test) was inherited by forked
    DataLoader workers, and the first worker to resize to another size waited forever for threads
    that do not exist in it (this suite hung here). In a fresh process, so the state is known."""
    script = textwrap.dedent(f"""
        import numpy as np, torch
        from common.synthetic import write_mp4
        from common.video import read_clip
        path = {str(tmp_path / "v.mp4")!r}
        write_mp4(path, np.random.default_rng(0).integers(0, 255, (12, 120, 160, 3), dtype=np.uint8))
        read_clip(path, [0, 1], short_side=60)  # the main thread's context

        class Frames(torch.utils.data.Dataset):
            def __len__(self):
                return 4

            def __getitem__(self, i):
                return torch.from_numpy(read_clip(path, [i], short_side=32 + i))  # other sizes

        assert len(list(torch.utils.data.DataLoader(Frames(), num_workers=2))) == 4
        """)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", script], cwd=repo, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
