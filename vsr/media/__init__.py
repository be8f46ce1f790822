"""Media: probe, frame-exact segments, decode, encode, assemble/remux and verify (PyAV; no torch)."""

from vsr.media.assemble import assemble
from vsr.media.decode import FrameChunk, ScanReport, decode_segment, scan_decodable
from vsr.media.encode import EncodeOptions, SegmentWriter, encode_segment, resolve_encode_options
from vsr.media.probe import MediaInfo, StreamInfo, VideoInfo, probe
from vsr.media.segments import Segment, plan_segments
from vsr.media.streams import StreamPlan, plan_streams
from vsr.media.verify import VerifyReport, verify

__all__ = [
    "EncodeOptions", "FrameChunk", "MediaInfo", "ScanReport", "Segment", "SegmentWriter", "StreamInfo",
    "StreamPlan", "VerifyReport", "VideoInfo", "assemble", "decode_segment", "encode_segment", "plan_segments",
    "plan_streams", "probe", "resolve_encode_options", "scan_decodable", "verify",
]
