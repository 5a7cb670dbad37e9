"""Audio (transcriptions, translations, speech) and images (generations, edits) of the fake upstream."""

from __future__ import annotations

import base64
import functools
import math
import struct
import time
import zlib
from typing import Any

from .fake_upstream import Cue
from .fake_wire import Body, Call, Chunks, EventStream, FakeHandler, Frame, count_tokens, invalid, new_id

TRANSCRIPT_FORMATS = ("json", "text", "srt", "verbose_json", "vtt", "diarized_json")
SPEECH_TYPES = {"mp3": "audio/mpeg", "opus": "audio/opus", "aac": "audio/aac", "flac": "audio/flac",
                "wav": "audio/wav", "pcm": "audio/pcm"}
SPEECH_HEADERS = {"mp3": b"ID3\x04\x00\x00\x00\x00\x00\x00\xff\xfb\x90\x64", "opus": b"OggS\x00\x02",
                  "aac": b"\xff\xf1\x50\x80", "flac": b"fLaC\x00\x00\x00\x22", "wav": b"RIFF\xff\xff\xff\xffWAVEfmt ",
                  "pcm": b""}
SPEECH_CHUNK_BYTES = 4096
BYTES_PER_SECOND = 16000  # how long the fake pretends an uploaded audio file is


def timestamp(seconds: float, separator: str) -> str:
    """`HH:MM:SS,mmm` (srt) or `HH:MM:SS.mmm` (vtt)."""
    millis = round(seconds * 1000)
    return f"{millis // 3600000:02}:{millis // 60000 % 60:02}:{millis // 1000 % 60:02}{separator}{millis % 1000:03}"


def token_usage(input_tokens: int, output_tokens: int) -> dict[str, Any]:
    """Token usage of the gpt-4o transcription models."""
    return {"type": "tokens", "input_tokens": input_tokens, "input_token_details": {"text_tokens": 0,
            "audio_tokens": input_tokens}, "output_tokens": output_tokens, "total_tokens": input_tokens + output_tokens}


class TranscriptionsHandler(FakeHandler):
    """POST /v1/audio/transcriptions (multipart): every `response_format`, and `stream=true` as SSE."""

    task = "transcribe"

    async def on_post(self, call: Call, cue: Cue) -> Body | EventStream:
        if not call.multipart:
            raise invalid("Expected a multipart/form-data body with a 'file'.", "file", "invalid_value")
        if not call.files.get("file"):
            raise invalid("Missing required parameter: 'file'.", "file", "missing_required_parameter")
        model = call.require("model")
        response_format = call.choice("response_format", "json", TRANSCRIPT_FORMATS if self.task == "transcribe"
                                      else TRANSCRIPT_FORMATS[:-1])
        duration = max(0.1, len(call.files["file"][0].body) / BYTES_PER_SECOND)
        audio_tokens = max(1, math.ceil(duration * 10))
        if call.flag("stream") and self.task == "transcribe":
            if model == "whisper-1":
                raise invalid("Streaming is not supported for the whisper-1 model.", "stream", "unsupported_value")
            deltas = [f"{cue.text}{index} " for index in range(cue.events)]
            frames = [Frame.of({"type": "transcript.text.delta", "delta": delta}) for delta in deltas]
            text = "".join(deltas)
            done = Frame.of({"type": "transcript.text.done", "text": text,
                             "usage": token_usage(audio_tokens, count_tokens(text))})
            return EventStream(frames, [done], typed=True)
        text = cue.text
        if response_format == "text":
            return Body.text(text + "\n")
        if response_format == "srt":
            return Body.text(f"1\n{timestamp(0, ',')} --> {timestamp(duration, ',')}\n{text}\n\n")
        if response_format == "vtt":
            return Body.text(f"WEBVTT\n\n{timestamp(0, '.')} --> {timestamp(duration, '.')}\n{text}\n\n")
        if response_format == "verbose_json":
            segment = {"id": 0, "seek": 0, "start": 0.0, "end": duration, "text": text, "tokens": [50364, 2425],
                       "temperature": 0.0, "avg_logprob": -0.25, "compression_ratio": 1.1, "no_speech_prob": 0.01}
            body = {"task": self.task, "language": "english", "duration": duration, "text": text,
                    "segments": [segment]}
            if self.task == "transcribe":
                body["usage"] = {"type": "duration", "seconds": math.ceil(duration)}
            return Body.json(body)
        if response_format == "diarized_json":
            segment = {"type": "transcript.text.segment", "id": "seg_0", "start": 0.0, "end": duration,
                       "text": text, "speaker": "A"}
            return Body.json({"task": "transcribe", "duration": duration, "text": text, "segments": [segment],
                              "usage": token_usage(audio_tokens, count_tokens(text))})
        if self.task == "translate":
            return Body.json({"text": text})
        usage = ({"type": "duration", "seconds": math.ceil(duration)} if model == "whisper-1"
                 else token_usage(audio_tokens, count_tokens(text)))
        return Body.json({"text": text, "usage": usage})


class TranslationsHandler(TranscriptionsHandler):
    """POST /v1/audio/translations (multipart): into English, no streaming."""

    task = "translate"


def speech_audio(response_format: str, chunks: int) -> list[bytes]:
    """The bytes the fake speaks, chunk by chunk: a format header, then every byte value (NUL, invalid UTF-8...)."""
    body = SPEECH_HEADERS[response_format] + bytes(range(256)) * (chunks * SPEECH_CHUNK_BYTES // 256)
    body = body[:chunks * SPEECH_CHUNK_BYTES]
    return [body[start:start + SPEECH_CHUNK_BYTES] for start in range(0, len(body), SPEECH_CHUNK_BYTES)]


class SpeechHandler(FakeHandler):
    """POST /v1/audio/speech: `cue.events` chunks of 4 KiB with a pause between them, or SSE with
    `stream_format: "sse"`."""

    async def on_post(self, call: Call, cue: Cue) -> Chunks | EventStream:
        model = call.require("model")
        text = call.require("input")
        call.require("voice")
        if not isinstance(text, str) or len(text) > 4096:
            raise invalid("Invalid 'input': expected a string of at most 4096 characters.", "input", "invalid_value")
        response_format = call.choice("response_format", "mp3", tuple(SPEECH_TYPES))
        stream_format = call.choice("stream_format", "audio", ("audio", "sse"))
        chunks = speech_audio(response_format, max(1, cue.events))
        if stream_format == "audio":
            return Chunks(chunks, SPEECH_TYPES[response_format])
        if model in ("tts-1", "tts-1-hd"):
            raise invalid(f"stream_format 'sse' is not supported for {model}.", "stream_format", "unsupported_value")
        frames = [Frame.of({"type": "speech.audio.delta", "audio": base64.b64encode(chunk).decode()})
                  for chunk in chunks]
        input_tokens = count_tokens(text)
        done = Frame.of({"type": "speech.audio.done", "usage": {
            "input_tokens": input_tokens, "output_tokens": len(chunks) * 50,
            "total_tokens": input_tokens + len(chunks) * 50}})
        return EventStream(frames, [done], typed=True)


@functools.cache
def png(red: int, green: int, blue: int) -> bytes:
    """A valid 1x1 PNG of one colour."""
    def part(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + part(b"IHDR", header) + part(b"IDAT", zlib.compress(bytes([0, red, green, blue])))
            + part(b"IEND", b""))


IMAGE = base64.b64encode(png(32, 128, 224)).decode()
PARTIAL_IMAGE = base64.b64encode(png(200, 200, 200)).decode()


class ImagesHandler(FakeHandler):
    """POST /v1/images/generations (JSON) and /v1/images/edits (multipart or JSON): tiny PNGs, gpt-image usage,
    and `stream` with `partial_images` as SSE."""

    kind = "image_generation"

    def check_images(self, call: Call) -> int:
        """How many input images the request carries (edits need one)."""
        return 0

    async def on_post(self, call: Call, cue: Cue) -> Body | EventStream:
        prompt = call.require("prompt")
        model = str(call.payload.get("model") or "dall-e-2")
        n = call.integer("n", 1, 1, 10)
        images = self.check_images(call)
        created = int(time.time())
        if model.startswith("dall-e"):
            if call.payload.get("response_format") == "b64_json":
                data: list[dict[str, Any]] = [{"b64_json": IMAGE} for _ in range(n)]
            else:
                data = [{"url": f"https://images.fake.invalid/{new_id('img_')}.png"} for _ in range(n)]
            if model == "dall-e-3":
                data = [{**item, "revised_prompt": prompt} for item in data]
            return Body.json({"created": created, "data": data})
        settings = {  # as OpenAI reports them: "auto" resolved to what it chose
            "background": call.choice("background", "auto", ("transparent", "opaque", "auto")).replace(
                "auto", "opaque"),
            "output_format": call.choice("output_format", "png", ("png", "jpeg", "webp")),
            "quality": call.choice("quality", "auto", ("low", "medium", "high", "auto")).replace("auto", "high"),
            "size": call.choice("size", "auto", ("auto", "1024x1024", "1536x1024", "1024x1536")).replace(
                "auto", "1024x1024")}
        text_tokens, image_tokens = count_tokens(str(prompt)), 65 * images
        usage = {"input_tokens": text_tokens + image_tokens,
                 "input_tokens_details": {"text_tokens": text_tokens, "image_tokens": image_tokens},
                 "output_tokens": 272 * n, "total_tokens": text_tokens + image_tokens + 272 * n}
        if not call.flag("stream"):
            return Body.json({"created": created, **settings, "data": [{"b64_json": IMAGE} for _ in range(n)],
                              "usage": usage})
        partials = call.integer("partial_images", 0, 0, 3)
        kind = self.kind
        frames = [Frame.of({"type": f"{kind}.partial_image", "b64_json": PARTIAL_IMAGE, "created_at": created,
                            **settings, "partial_image_index": index}, f"{kind}.partial_image")
                  for _image in range(n) for index in range(partials)]
        final = [Frame.of({"type": f"{kind}.completed", "b64_json": IMAGE, "created_at": created, **settings,
                           "usage": usage}, f"{kind}.completed") for _image in range(n)]
        return EventStream(frames, final, typed=True)


class ImageEditsHandler(ImagesHandler):
    """POST /v1/images/edits: `image` / `image[]` files (multipart) or `images` (JSON) are required."""

    kind = "image_edit"

    def check_images(self, call: Call) -> int:
        if call.multipart:
            count = len(call.files.get("image", [])) + len(call.files.get("image[]", []))
        else:
            images = call.payload.get("images")
            count = len(images) if isinstance(images, list) and all(isinstance(i, dict) for i in images) else 0
        if not count:
            raise invalid("Missing required parameter: 'image'.", "image", "missing_required_parameter")
        return count


def media_routes() -> list[tuple[str, type[FakeHandler]]]:
    """Routes of the audio and images endpoints."""
    return [
        (r"/v1/audio/transcriptions", TranscriptionsHandler),
        (r"/v1/audio/translations", TranslationsHandler),
        (r"/v1/audio/speech", SpeechHandler),
        (r"/v1/images/generations", ImagesHandler),
        (r"/v1/images/edits", ImageEditsHandler),
    ]
