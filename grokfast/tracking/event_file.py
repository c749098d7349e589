"""TensorBoard event files, encoded here from tensorboardX's protocol buffers.

An event file is a sequence of TFRecords (length, masked CRC-32C of the length, an `Event`
protocol buffer, its masked CRC-32C). Every function below returns the bytes of one record, a
pure function of its arguments: grokfast chooses the file name, the order and the wall time of
every record, so that the same run always gives the same bytes (grokfast.tracking.tensorboard).
The messages are tensorboardX's (the `tensorboard` extra), never TensorBoard itself, but for the
hot path: a scalar event, one per history row and model, is encoded here directly (the wire format
of Event{wall_time = 1, step = 2, summary = 5}, Summary{value = 1}, Value{tag = 1,
simple_value = 2}), ~5× faster than building the messages; tests read it back with TensorBoard.
"""
from __future__ import annotations

import functools
import struct
from types import SimpleNamespace

from grokfast.errors import GrokfastError

INSTALL = 'pip install "grokfast[tensorboard]"'
_pb = None


def protos() -> SimpleNamespace:
    """tensorboardX's protocol buffers and CRC; GrokfastError saying what to install without it."""
    global _pb
    if _pb is None:
        try:
            from tensorboardX.crc32c import crc32c
            from tensorboardX.proto import (
                api_pb2,
                event_pb2,
                plugin_hparams_pb2,
                plugin_text_pb2,
                summary_pb2,
                tensor_pb2,
                tensor_shape_pb2,
            )
        except ImportError:
            raise GrokfastError(f"TensorBoard logging needs tensorboardX: {INSTALL} (or pip "
                                f"install tensorboardX)") from None
        _pb = SimpleNamespace(crc32c=crc32c, api=api_pb2, event=event_pb2,
                              hparams=plugin_hparams_pb2, summary=summary_pb2,
                              text=plugin_text_pb2, tensor=tensor_pb2, shape=tensor_shape_pb2)
    return _pb


def _masked(data: bytes) -> int:
    crc = protos().crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def framed(data: bytes) -> bytes:
    """One TFRecord holding the serialized event `data`."""
    header = struct.pack("<Q", len(data))
    return (header + struct.pack("<I", _masked(header)) + data
            + struct.pack("<I", _masked(data)))


def record(event) -> bytes:
    """One TFRecord holding the `event` message."""
    return framed(event.SerializeToString(deterministic=True))


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | 0x80 if n else low)
        if not n:
            return bytes(out)


@functools.lru_cache(maxsize=None)
def value_prefix(tag: str) -> bytes:
    """A Summary's `value` entry for `tag` up to the 4 bytes of its float32 simple_value."""
    t = tag.encode()
    body = b"\x0a" + _varint(len(t)) + t + b"\x15"
    return b"\x0a" + _varint(len(body) + 4) + body


def scalar_event(step: int, wall: float, entries: bytes) -> bytes:
    """The record of an event at `step` whose summary holds `entries` (value_prefix + float32)."""
    if step < 0:
        raise ValueError(f"step {step} < 0")
    return framed(b"\x09" + struct.pack("<d", wall) + b"\x10" + _varint(int(step)) + b"\x2a"
                  + _varint(len(entries)) + entries)


def file_version(wall: float) -> bytes:
    """The first record of every event file."""
    return record(protos().event.Event(wall_time=wall, file_version="brain.Event:2"))


def scalars(step: int, wall: float, values) -> bytes:
    """One event holding scalars (tag, value) at `step` (stored as float32 by the format)."""
    return scalar_event(step, wall, b"".join(value_prefix(t) + struct.pack("<f", v)
                                             for t, v in values))


def _plugin_value(tag: str, plugin: str, content: bytes, **fields):
    pb = protos()
    meta = pb.summary.SummaryMetadata(plugin_data=pb.summary.SummaryMetadata.PluginData(
        plugin_name=plugin, content=content))
    return pb.summary.Summary.Value(tag=tag, metadata=meta, **fields)


def _summary_event(step: int, wall: float, *values) -> bytes:
    pb = protos()
    return record(pb.event.Event(wall_time=wall, step=int(step),
                                 summary=pb.summary.Summary(value=list(values))))


def text(step: int, wall: float, tag: str, markdown: str) -> bytes:
    """A text-plugin summary (rendered as Markdown)."""
    pb = protos()
    tensor = pb.tensor.TensorProto(dtype="DT_STRING", string_val=[markdown.encode()],
                                   tensor_shape=pb.shape.TensorShapeProto())
    content = pb.text.TextPluginData(version=0).SerializeToString()
    return _summary_event(step, wall, _plugin_value(tag, "text", content, tensor=tensor))


def png_size(png: bytes) -> tuple[int, int]:
    """(height, width) from a PNG's IHDR chunk."""
    if png[:8] != b"\x89PNG\r\n\x1a\n" or png[12:16] != b"IHDR":
        raise GrokfastError("not a PNG file")
    width, height = struct.unpack(">II", png[16:24])
    return height, width


def image(step: int, wall: float, tag: str, png: bytes) -> bytes:
    """An image summary holding the PNG's bytes as they are."""
    pb = protos()
    h, w = png_size(png)
    img = pb.summary.Summary.Image(height=h, width=w, colorspace=4, encoded_image_string=png)
    return _summary_event(step, wall, pb.summary.Summary.Value(tag=tag, image=img))


def _hparams_value(tag: str, **data) -> object:
    pb = protos()
    content = pb.hparams.HParamsPluginData(version=0, **data).SerializeToString()
    return _plugin_value(tag, "hparams", content)


def _set_value(value, v) -> None:
    if isinstance(v, bool):
        value.bool_value = v
    elif isinstance(v, (int, float)):
        value.number_value = float(v)
    else:
        value.string_value = str(v)


def experiment(wall: float, hparams: dict, metrics) -> bytes:
    """The HParams experiment: one hyperparameter per key of `hparams` (its type from the example
    value), one metric per tag in `metrics`."""
    pb = protos()
    dt = pb.api.DataType.Value
    infos = [pb.api.HParamInfo(name=k, type=dt("DATA_TYPE_BOOL") if isinstance(v, bool) else
                               dt("DATA_TYPE_FLOAT64") if isinstance(v, (int, float)) else
                               dt("DATA_TYPE_STRING")) for k, v in hparams.items()]
    exp = pb.api.Experiment(hparam_infos=infos, time_created_secs=wall,
                            metric_infos=[pb.api.MetricInfo(name=pb.api.MetricName(tag=t))
                                          for t in metrics])
    return _summary_event(0, wall, _hparams_value("_hparams_/experiment", experiment=exp))


def session_start(wall: float, hparams: dict) -> bytes:
    pb = protos()
    ssi = pb.hparams.SessionStartInfo(start_time_secs=wall)
    for k, v in hparams.items():
        _set_value(ssi.hparams[k], v)
    return _summary_event(0, wall, _hparams_value("_hparams_/session_start_info",
                                                  session_start_info=ssi))


STATUS = ("STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING")


def session_end(step: int, wall: float, status: str) -> bytes:
    pb = protos()
    sei = pb.hparams.SessionEndInfo(status=pb.api.Status.Value(status), end_time_secs=wall)
    return _summary_event(step, wall, _hparams_value("_hparams_/session_end_info",
                                                     session_end_info=sei))
