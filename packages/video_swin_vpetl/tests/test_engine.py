"""Evaluation counts (views averaged, unreadable videos excluded) and the non-finite loss stop."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft_core.runtime.distributed import DistInfo
from peft_core.runtime.session import NonFiniteLossError
from torch import nn
from torch.utils.data import DataLoader
from video_swin_vpetl.data import ClipSpec, VideoDataset, read_list
from video_swin_vpetl.engine import LrPlan, evaluate, train_one_epoch

SPEC = ClipSpec(num_frames=4, sampling_rate=2, input_size=32, train_short_side=36, test_clips=2, test_crops=3)


class AlwaysClassZero(nn.Module):
    """Predicts class 0 for every clip (so a video counted by mistake would count as correct)."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.tensor([5.0, 0.0, 0.0, 0.0]))
        self.seen: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.shape[0])
        return self.bias.expand(x.shape[0], -1) + 0 * x.mean()


class PooledLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(2, 3, 4)))


def test_unreadable_videos_are_listed_and_never_counted(mp4_dataset: Path, tmp_path: Path) -> None:
    """Upstream compute_video_hmdb counted a video that raised as a correct prediction."""
    (tmp_path / "corrupt.mp4").write_bytes(b"\x00\x01" * 64)
    lines = [f"{mp4_dataset / 'videos/test/0_0000.mp4'},0", f"{mp4_dataset / 'videos/test/1_0000.mp4'},1",
             f"{tmp_path / 'corrupt.mp4'},0", f"{tmp_path / 'missing.mp4'},0"]
    (tmp_path / "test.csv").write_text("\n".join(lines) + "\n")
    records = read_list(tmp_path / "test.csv")
    loader = DataLoader(VideoDataset(records, SPEC, "test"), batch_size=3)
    model = AlwaysClassZero()
    result = evaluate(model, loader, device=torch.device("cpu"), amp=False, records=records, info=DistInfo(),
                      progress=False)
    assert result.num_videos == 2 and result.correct1 == 1 and result.top1 == 50.0
    assert [Path(u["path"]).name for u in result.unreadable] == ["corrupt.mp4", "missing.mp4"]
    assert "file not found" in result.unreadable[1]["error"]
    assert model.seen == [2 * 6]  # only the 2 readable videos of the first batch, 6 views each


def test_logits_of_the_views_are_averaged(mp4_dataset: Path) -> None:
    records = read_list(mp4_dataset / "test.csv")
    dataset = VideoDataset(records, SPEC, "test")
    model = PooledLinear().eval()
    result = evaluate(model, DataLoader(dataset, batch_size=2), device=torch.device("cpu"), amp=False,
                      records=records, info=DistInfo(), progress=False)
    with torch.no_grad():
        preds = [int(model(dataset[i]["video"]).mean(0).argmax()) for i in range(len(dataset))]
    assert result.correct1 == sum(p == r.label for p, r in zip(preds, records)) and result.views == 6


def test_non_finite_loss_stops_with_a_clear_error(mp4_dataset: Path) -> None:
    records = read_list(mp4_dataset / "train.csv")
    loader = DataLoader(VideoDataset(records, SPEC, "train"), batch_size=4)
    model = PooledLinear()
    with torch.no_grad():
        model.fc.bias.fill_(float("nan"))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at epoch 3, step 0 \(lr 0\.0794\)"):
        train_one_epoch(model, loader, optimizer, LrPlan(0.1, 0.0, 0.0, 10), 3, device=torch.device("cpu"),
                        scaler=None, amp=False, records=records, progress=False)
