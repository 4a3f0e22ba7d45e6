"""List files (every error), mp4 decoding through PyAV, temporal sampling, the three test crops."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from video_swin_vpetl.data import ClipSpec, ListFileError, VideoDataset, VideoDecodeError, read_frames, read_list
from video_swin_vpetl.data.sampling import center_clip, evenly_spaced_clips, train_clip
from video_swin_vpetl.data.synthetic import moving_shapes, write_mp4
from video_swin_vpetl.data.transforms import multi_scale_crop, spatial_crops
from vsw_helpers import HEIGHT, WIDTH

# ------------------------------------------------------------------------------------------------------ list files


def write(tmp_path: Path, text: str, name: str = "list.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_comma_list_and_relative_paths(tmp_path: Path) -> None:
    path = write(tmp_path, "videos/a.mp4,3\n\n/abs/b.webm,0\nc, d.mp4,1\n")
    records = read_list(path, num_classes=4)
    assert [r.label for r in records] == [3, 0, 1]
    assert records[0].path == tmp_path / "videos/a.mp4" and records[1].path == Path("/abs/b.webm")
    assert records[2].path == tmp_path / "c, d.mp4"  # the label is after the last comma
    assert records[2].origin.endswith("list.csv:4")
    assert read_list(path, video_root="/data")[0].path == Path("/data/videos/a.mp4")


def test_space_separated_list_is_accepted_with_a_notice(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path, "videos/a.mp4 3\nvideos/b.mp4 1\n")
    with caplog.at_level(logging.WARNING):
        records = read_list(path)
    assert [r.label for r in records] == [3, 1]
    assert "space-separated" in caplog.text and "comma separated" in caplog.text


@pytest.mark.parametrize("text,message", [
    ("a.mp4,1\nb.mp4 2\n", r"line 2: .*comma separated"),  # first line decides: comma; 'b.mp4 2' has no comma
    ("a.mp4 1\nb.mp4,2\n", r"line 2: 'b.mp4,2' is comma separated but earlier lines are space separated"),
    ("path,label\na.mp4,1\n", r"line 1: label 'label' is not an integer \(list files have no header line\)"),
    ("a.mp4,1\nb.mp4,x\n", r"line 2: label 'x' is not an integer"),
    ("a.mp4,1\nb.mp4,9\n", r"line 2: label 9 is outside \[0, 5\)"),
    ("a.mp4,-1\n", r"line 1: label -1 is outside \[0, 5\)"),
    ("a.mp4\n", r"line 1: 'a.mp4' has no label"),
    (",3\n", r"line 1: ',3' does not have a path and a label"),
    ("\n\n", r"holds no videos"),
])
def test_malformed_lists_name_path_line_and_format(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ListFileError, match=message) as info:
        read_list(path, num_classes=5)
    assert str(path) in str(info.value)
    assert "'<video path>,<integer label>'" in str(info.value)


def test_missing_list_file(tmp_path: Path) -> None:
    with pytest.raises(ListFileError, match=r"nope\.csv: list file not found; expected a text file with '<video"):
        read_list(tmp_path / "nope.csv")


# -------------------------------------------------------------------------------------------------------- decoding


def test_mp4_written_by_the_test_decodes(tmp_path: Path) -> None:
    frames = moving_shapes((1, 0), np.random.default_rng(3), frames=12, size=(HEIGHT, WIDTH))
    path = write_mp4(tmp_path / "clip.mp4", frames)
    decoded = read_frames(path)
    assert decoded.shape == (12, HEIGHT, WIDTH, 3) and decoded.dtype == np.uint8
    assert np.abs(decoded.astype(float) - frames.astype(float)).mean() < 12  # lossy yuv420p, but the same video
    small = read_frames(path, short_side=16)
    assert small.shape == (12, 16, 20, 3)
    assert read_frames(path, backend="auto").shape == decoded.shape


def test_decode_errors_name_the_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00" * 100)
    with pytest.raises(VideoDecodeError, match=r"broken\.mp4: cannot decode"):
        read_frames(broken)
    with pytest.raises(VideoDecodeError, match=r"absent\.mp4: file not found"):
        read_frames(tmp_path / "absent.mp4")


# -------------------------------------------------------------------------------------------------------- sampling


def test_train_clip_is_one_segment_at_a_random_offset() -> None:
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(50):
        idx = train_clip(40, 8, 2, rng)
        assert np.all(np.diff(idx) == 2) and idx[0] >= 0 and idx[-1] <= 39
        starts.add(int(idx[0]))
    assert len(starts) > 10
    assert list(train_clip(10, 8, 2, rng)) == [0, 2, 4, 6, 8, 9, 9, 9]  # short video: last frame repeated


def test_test_clips_spread_over_the_video() -> None:
    clips = evenly_spaced_clips(100, 8, 2, 4)
    assert [int(c[0]) for c in clips] == [0, 28, 56, 84]
    assert list(evenly_spaced_clips(100, 8, 2, 1)[0]) == list(center_clip(100, 8, 2))


def test_validation_clip_is_deterministic(mp4_dataset: Path) -> None:
    """Upstream's per-epoch evaluation drew a random temporal offset; here val is the centre clip, always."""
    records = read_list(mp4_dataset / "val.csv")
    spec = ClipSpec(num_frames=4, sampling_rate=2, input_size=32, train_short_side=36)
    first = VideoDataset(records, spec, "val", seed=0)[1]["video"]
    other = VideoDataset(records, spec, "val", seed=123)
    other.set_epoch(7)
    torch.testing.assert_close(other[1]["video"], first, rtol=0, atol=0)
    train = VideoDataset(records, spec, "train", seed=0)
    a = train[1]["video"]
    train.set_epoch(1)
    assert not torch.equal(a, train[1]["video"])


# ----------------------------------------------------------------------------------------------------------- crops


def test_three_crops_are_distinct_left_centre_right() -> None:
    """Upstream added a CenterCrop after its 3-crop step: all three views were the centre crop."""
    clip = torch.arange(40, dtype=torch.float32).view(1, 1, 1, 40).expand(2, 3, 32, 40).contiguous()
    crops = spatial_crops(clip, 32, 3)
    assert [int(c[0, 0, 0, 0]) for c in crops] == [0, 4, 8]
    assert all(c.shape == (2, 3, 32, 32) for c in crops)
    portrait = clip.transpose(-1, -2)
    assert [int(c[0, 0, 0, 0]) for c in spatial_crops(portrait, 32, 3)] == [0, 4, 8]


def test_test_views_are_clips_times_distinct_crops(mp4_dataset: Path) -> None:
    records = read_list(mp4_dataset / "test.csv")
    spec = ClipSpec(num_frames=4, sampling_rate=2, input_size=32, train_short_side=36, test_clips=2, test_crops=3)
    item = VideoDataset(records, spec, "test")[0]
    assert item["valid"] and item["video"].shape == (6, 3, 4, 32, 32)
    views = item["video"]
    for clip in range(2):
        crops = views[clip * 3 : clip * 3 + 3]
        assert not torch.equal(crops[0], crops[1]) and not torch.equal(crops[1], crops[2])


def test_multi_scale_crop_shape_and_randomness() -> None:
    clip = torch.rand(4, 3, 36, 45)
    outs = [multi_scale_crop(clip, 32, np.random.default_rng(s)) for s in range(6)]
    assert all(o.shape == (4, 3, 32, 32) for o in outs)
    assert len({float(o.sum()) for o in outs}) > 1


def test_unreadable_item_is_flagged_not_raised(tmp_path: Path) -> None:
    (tmp_path / "bad.mp4").write_bytes(b"junk")
    records = read_list(write(tmp_path, "bad.mp4,1\n"))
    item = VideoDataset(records, ClipSpec(num_frames=4, input_size=32, train_short_side=36, test_clips=2), "test")[0]
    assert not item["valid"] and "bad.mp4" in item["error"] and item["video"].shape == (6, 3, 4, 32, 32)
