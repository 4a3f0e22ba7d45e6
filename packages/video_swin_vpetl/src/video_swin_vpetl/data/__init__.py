"""Video data: list files, decoding (PyAV / decord), temporal sampling, spatial transforms, datasets."""

from video_swin_vpetl.data.datasets import ClipSpec, VideoDataset
from video_swin_vpetl.data.decode import VideoDecodeError, read_frames
from video_swin_vpetl.data.lists import NUM_CLASSES, ListFileError, VideoRecord, read_list

__all__ = ["NUM_CLASSES", "ClipSpec", "ListFileError", "VideoDataset", "VideoDecodeError", "VideoRecord",
           "read_frames", "read_list"]
