"""Models that ship inside packages, with an accuracy proxy computed here (benchmark code).

    from packaged_models import PACKAGED, Unavailable
    try:
        params, evaluate, metric = PACKAGED["silero"]()
    except Unavailable as exc:
        print("skipped:", exc)

Each builder returns the model's float weight tensors, a function ``evaluate(tensors)``
that puts (decoded) tensors back into the model, runs it on inputs generated here and
returns the agreement with the original model's outputs (1.0 = the original), and a
statement of that metric.  A builder whose package or back end is missing raises
:class:`Unavailable` with the reason (the pip command). ``seed`` (default 0) draws the
inputs: another seed gives a second, held-out set for the same model (``bench_paper.py
--holdout``).

* ``silero``: silero-vad's 16 kHz ONNX model; speech synthesised by espeak-ng between
  silences, noise and tones; the fraction of 32 ms frames whose speech decision (p >= 0.5)
  agrees with the original model's.
* ``magika``: magika's ONNX model; the files of this repository at a fixed commit
  (``MAGIKA_FILES_COMMIT``), archives of them, generated images and audio; the fraction whose
  predicted content type (the network's own label) agrees with the original's.
* ``rapidocr``: rapidocr-onnxruntime's three ONNX models (detection, orientation,
  recognition); images of text rendered with Pillow's default font; one minus the edit
  distance of the recognised text to the original pipeline's, over its characters.
* ``mtcnn``: facenet-pytorch's P-, R- and O-Net (torch modules; the package's detection
  pipeline needs torchvision and is not used); generated windows, half with a drawn face;
  the agreement of the nets' face decisions at MTCNN's thresholds.

ONNX weights are read and written by nnc's own readers (:func:`nnc.formats.read_onnx`,
:func:`nnc.formats.onnx_bytes`): initializers and float Constant nodes, with 0-d float
constants (graph arithmetic such as 6 in ReLU6 or -inf masks) left in the graph.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


class Unavailable(RuntimeError):
    """A packaged model that cannot be run here (the message says why and how to install it)."""


def _require(module: str, pip: str):
    try:
        return __import__(module)
    except ImportError:
        raise Unavailable(f"{module} is not installed ({pip})") from None


# -- ONNX weights in and out -------------------------------------------------------------------------------------------
class OnnxWeights:
    """The float weights of an ONNX file and sessions of the model with other values for them."""

    def __init__(self, path, prefix: str = ""):
        from nnc.formats import read_onnx

        self.path, self.prefix = Path(path), prefix
        self.tensors, self.dtypes = read_onnx(self.path)
        self.names = [k for k, v in self.tensors.items()
                      if v.dtype.kind == "f" and v.ndim > 0 and k not in self.shape_inputs(self.path)]

    @staticmethod
    def shape_inputs(path) -> set:
        """Float tensors that are graph structure: the roi and scales inputs of Resize / Upsample nodes (a scale
        of 2.0 coded as 1.9999 changes the output's shape)."""
        import onnx

        def walk(graph):
            for node in graph.node:
                if node.op_type in ("Resize", "Upsample"):
                    yield from node.input[1:]
                for attr in node.attribute:
                    for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                        yield from walk(sub)

        return set(walk(onnx.load(str(path), load_external_data=False).graph))

    @property
    def params(self) -> dict:
        return {self.prefix + k: np.asarray(self.tensors[k], np.float32) for k in self.names}

    def model_bytes(self, tensors: dict) -> bytes:
        """The ONNX model with its weights taken from ``tensors`` (prefixed names; others as they were)."""
        from nnc.formats import onnx_bytes

        merged = dict(self.tensors)
        for k in self.names:
            merged[k] = np.asarray(tensors[self.prefix + k]).astype(self.tensors[k].dtype).reshape(
                self.tensors[k].shape)
        return onnx_bytes(merged, self.dtypes, template=self.path)

    def session(self, tensors: dict):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        if CovarianceRecorder.active is not None:
            return CovarianceRecorder.active.session(self, tensors, opts)
        return ort.InferenceSession(self.model_bytes(tensors), sess_options=opts, providers=["CPUExecutionProvider"])

    def weighted_layers(self) -> dict:
        """{weight name (prefixed): (the node's activation input, op, attributes, transposed)} of the top graph's
        Conv nodes (1-D and 2-D, one group) and MatMul / Gemm nodes whose weight is one of ``names``; transposed:
        the weight is stored (inputs, outputs)."""
        import onnx

        graph = onnx.load(str(self.path), load_external_data=False).graph
        names = set(self.names)
        layers = {}
        for node in graph.node:
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            if len(node.input) < 2 or node.input[1] not in names or node.input[0] in names:
                continue
            w = self.tensors[node.input[1]]
            if node.op_type == "Conv" and attrs.get("group", 1) == 1 and w.ndim in (3, 4):
                layers[self.prefix + node.input[1]] = (node.input[0], "Conv", attrs, False)
            elif node.op_type == "MatMul" and w.ndim == 2:
                layers[self.prefix + node.input[1]] = (node.input[0], "MatMul", attrs, True)
            elif node.op_type == "Gemm" and w.ndim == 2 and not attrs.get("transA", 0):
                layers[self.prefix + node.input[1]] = (node.input[0], "Gemm", attrs, not attrs.get("transB", 0))
        return layers


def _conv_patches(x: np.ndarray, kernel: tuple, attrs: dict) -> np.ndarray:
    """The input patches of an ONNX Conv (1-D or 2-D) as rows in the weight's (channel, kh, kw) order."""
    if x.ndim == 3:                                          # 1-D: a height of 1
        x, kernel = x[:, :, None, :], (1,) + tuple(kernel)
        attrs = dict(attrs, strides=[1] + list(attrs.get("strides", [1])),
                     dilations=[1] + list(attrs.get("dilations", [1])),
                     pads=[0, *attrs["pads"][:1], 0, *attrs["pads"][1:]] if "pads" in attrs else [0, 0, 0, 0])
    strides = list(attrs.get("strides", [1, 1]))
    dilations = list(attrs.get("dilations", [1, 1]))
    auto = attrs.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    span = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = [0, 0, 0, 0]
        for i, size in enumerate(x.shape[2:]):
            out = -(-size // strides[i])
            total = max(0, (out - 1) * strides[i] + span[i] - size)
            small, big = total // 2, total - total // 2
            pads[i], pads[i + 2] = (small, big) if auto == "SAME_UPPER" else (big, small)
    else:
        pads = list(attrs.get("pads", [0, 0, 0, 0])) if auto != "VALID" else [0, 0, 0, 0]
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    win = np.lib.stride_tricks.sliding_window_view(xp, span, axis=(2, 3))
    win = win[:, :, :: strides[0], :: strides[1], :: dilations[0], :: dilations[1]]
    n, c, oh, ow, kh, kw = win.shape
    return win.transpose(0, 2, 3, 1, 4, 5).reshape(n * oh * ow, c * kh * kw)


class CovarianceRecorder:
    """While active (``with CovarianceRecorder() as rec:``), the sessions of :class:`OnnxWeights` also return the
    inputs of their weighted layers, and ``rec.covariances()`` gives E[x x^T] of each (nnc's ``covariances``)."""

    active = None

    def __init__(self):
        self.sums, self.counts, self.transposed = {}, {}, set()

    def __enter__(self):
        CovarianceRecorder.active = self
        return self

    def __exit__(self, *exc):
        CovarianceRecorder.active = None

    def session(self, weights: OnnxWeights, tensors: dict, opts):
        import onnx
        import onnxruntime as ort

        layers = weights.weighted_layers()
        model = onnx.load_from_string(weights.model_bytes(tensors))
        outputs = [o.name for o in model.graph.output]
        graph_inputs = {i.name for i in model.graph.input}
        taps = sorted({a for a, *_ in layers.values() if a not in graph_inputs and a not in outputs})
        for name in taps:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
        session = ort.InferenceSession(model.SerializeToString(), sess_options=opts,
                                       providers=["CPUExecutionProvider"])
        self.transposed |= {k for k, (*_, t) in layers.items() if t}
        return _RecordingSession(session, outputs, taps, layers, weights, self)

    def add(self, weight: str, rows: np.ndarray) -> None:
        rows = np.asarray(rows, np.float64)
        self.sums[weight] = self.sums.get(weight, 0.0) + rows.T @ rows
        self.counts[weight] = self.counts.get(weight, 0) + len(rows)

    def covariances(self) -> dict:
        return {k: v / self.counts[k] for k, v in self.sums.items()}


class _RecordingSession:
    """An onnxruntime session that hands the recorder its weighted layers' inputs and returns only its outputs."""

    def __init__(self, session, outputs, taps, layers, weights, recorder):
        self._session, self._outputs, self._taps = session, outputs, taps
        self._layers, self._weights, self._recorder = layers, weights, recorder

    def get_outputs(self):
        return [o for o in self._session.get_outputs() if o.name in self._outputs]

    def run(self, output_names, feeds, run_options=None):
        names = list(output_names) if output_names else list(self._outputs)
        got = self._session.run(names + self._taps, feeds, run_options)
        values = dict(feeds)
        values.update(zip(self._taps, got[len(names):]))
        for weight, (activation, op, attrs, _) in self._layers.items():
            x = values.get(activation)
            if x is None or np.asarray(x).dtype.kind != "f":
                continue
            x = np.asarray(x)
            w = self._weights.tensors[weight[len(self._weights.prefix):]]
            if op == "Conv":
                rows = _conv_patches(x, w.shape[2:], attrs)
            else:
                rows = x.reshape(-1, x.shape[-1])
            self._recorder.add(weight, rows)
        return got[: len(names)]

    def __getattr__(self, name):
        return getattr(self._session, name)


# -- silero-vad -----------------------------------------------------------------------------------------------------
SPEECH = [
    ("en", "The weather today is cold and windy, with rain expected in the evening."),
    ("en-us", "Please remember to send the report before the meeting on Thursday."),
    ("de", "Der Zug nach Berlin fährt um sieben Uhr morgens ab."),
    ("fr", "Le petit chat dort tranquillement sur le rebord de la fenêtre."),
    ("en", "Neural networks can be compressed without losing much of their accuracy."),
    ("es", "Mañana vamos a visitar el museo de arte moderno con mis amigos."),
    ("en-us", "Seven, three, nine, one, four, eight, two, six."),
    ("it", "La cena è pronta, venite a tavola prima che si raffreddi."),
    ("en", "She opened the window and listened to the birds in the garden."),
    ("de", "Können Sie mir bitte sagen, wo der Bahnhof ist?"),
    ("en-us", "The quick brown fox jumps over the lazy dog near the river bank."),
    ("fr", "Nous avons terminé le projet juste avant la date limite."),
]


def synthesise(voice: str, text: str, speed: int, pitch: int) -> np.ndarray:
    """espeak-ng speech as float32 at 16 kHz."""
    from scipy.signal import resample_poly

    exe = shutil.which("espeak-ng")
    if exe is None:
        raise Unavailable("espeak-ng is not installed (apt-get install espeak-ng)")
    with tempfile.TemporaryDirectory() as tmp:
        wav = os.path.join(tmp, "s.wav")
        subprocess.run([exe, "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", wav, text], check=True,
                       capture_output=True)
        import wave

        with wave.open(wav) as w:
            rate = w.getframerate()
            x = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768
    g = np.gcd(16000, rate)
    return resample_poly(x, 16000 // g, rate // g).astype(np.float32)


def vad_clips(n_clips: int = 6, seconds: float = 16.0, seed: int = 0) -> np.ndarray:
    """(n_clips, samples) of 16 kHz audio: synthesised utterances between silences, noise bursts and tones,
    over background noise at varying levels."""
    rng = np.random.default_rng(seed)
    n = int(seconds * 16000) // 512 * 512
    clips = np.zeros((n_clips, n), np.float32)
    utterances = [synthesise(v, t, int(rng.integers(130, 190)), int(rng.integers(30, 70)))
                  for v, t in SPEECH]
    k = 0
    for c in range(n_clips):
        pos = int(rng.uniform(0.3, 1.5) * 16000)
        while pos < n:
            kind = rng.choice(["speech", "speech", "noise", "tone"])
            if kind == "speech":
                seg = utterances[k % len(utterances)] * rng.uniform(0.3, 1.0)
                k += 1
            elif kind == "noise":
                seg = rng.normal(0, rng.uniform(0.02, 0.15), int(rng.uniform(0.4, 1.5) * 16000))
                seg = np.convolve(seg, np.ones(int(rng.integers(1, 8))) / 4, "same")
            else:
                t = np.arange(int(rng.uniform(0.3, 1.0) * 16000)) / 16000
                seg = 0.3 * np.sin(2 * np.pi * rng.uniform(200, 2000) * t)
            end = min(n, pos + len(seg))
            clips[c, pos:end] += seg[:end - pos]
            pos = end + int(rng.uniform(0.3, 1.5) * 16000)
        clips[c] += rng.normal(0, 10 ** rng.uniform(-3.5, -2), n)   # background: -70 .. -40 dB
    return np.clip(clips, -1, 1)


def silero(seed: int = 0):
    _require("onnxruntime", "pip install onnxruntime")
    vad = _require("silero_vad", "pip install silero-vad")
    weights = OnnxWeights(Path(vad.__file__).parent / "data" / "silero_vad_16k_op15.onnx")
    audio = vad_clips(seed=seed)

    def probabilities(tensors):
        sess = weights.session(tensors)
        b, n = audio.shape
        state = np.zeros((2, b, 128), np.float32)
        context = np.zeros((b, 64), np.float32)
        out = []
        for i in range(0, n, 512):
            x = np.concatenate([context, audio[:, i:i + 512]], axis=1)
            p, state = sess.run(None, {"input": x, "state": state, "sr": np.array(16000, np.int64)})
            out.append(p[:, 0])
            context = x[:, -64:]
        return np.stack(out, 1)

    reference = probabilities(weights.params) >= 0.5

    def evaluate(tensors):
        return float(np.mean((probabilities(tensors) >= 0.5) == reference))

    frames = reference.size
    metric = (f"agreement of the speech decisions (p >= 0.5) with the fp32 model's on {frames} frames of 32 ms "
              f"({audio.size / 16000:.0f} s: espeak-ng speech in 12 sentences and 6 languages, silences, noise "
              f"bursts, tones; {100 * reference.mean():.0f} % speech frames), silero_vad_16k_op15.onnx")
    return weights.params, evaluate, metric


PACKAGED = {"silero": silero}


# -- magika ---------------------------------------------------------------------------------------------------------
#: the commit whose tracked files magika's contents come from, so that every checkout scores the same contents
#: (drawn from the working tree, they changed with every commit that added a file); it is the commit of
#: search_magika_1500s_feedback_guard.md, whose contents it reproduces but for the run's date in its zip and PDF ones
MAGIKA_FILES_COMMIT = "e4643382b12c53e4970f17798e8556d679377f99"


def _git(*argv, **kw) -> bytes:
    return subprocess.run(["git", "-C", str(REPO), *argv], check=True, capture_output=True, **kw).stdout


def _committed_names(commit: str) -> list[str] | None:
    """The regular files of ``commit``'s tree; None when git or the commit is not there."""
    try:
        listed = _git("ls-tree", "-r", "-z", commit)
    except (OSError, subprocess.CalledProcessError):
        return None
    return [entry.split(b"\t", 1)[1].decode() for entry in listed.split(b"\0")
            if entry and entry.split(b" ", 2)[:2] in ([b"100644", b"blob"], [b"100755", b"blob"])]


def _committed_contents(commit: str, names: list[str]) -> list[bytes]:
    """The contents of these files of ``commit``, in one ``git cat-file --batch``."""
    batch = _git("cat-file", "--batch", input="".join(f"{commit}:{n}\n" for n in names).encode())
    out, at = [], 0
    for _ in names:                               # each: "<sha> blob <size>\n<contents>\n"
        header_end = batch.index(b"\n", at)
        size = int(batch[at:header_end].split()[2])
        out.append(batch[header_end + 1:header_end + 1 + size])
        at = header_end + 2 + size
    return out


def _repo_files(per_type: int, rng) -> tuple[list[tuple[str, bytes]], str]:
    """Up to ``per_type`` files per extension, (path, contents), of MAGIKA_FILES_COMMIT's tree, or of the working
    tree where this clone does not hold that commit; and where they came from. Only the files drawn are read."""
    names = _committed_names(MAGIKA_FILES_COMMIT)
    source = f"commit {MAGIKA_FILES_COMMIT[:7]}"
    if names is None:
        source = f"the working tree (commit {MAGIKA_FILES_COMMIT[:7]} not in this clone)"
        try:
            listed = _git("ls-files", text=True).splitlines()
        except (OSError, subprocess.CalledProcessError):
            listed = [str(p.relative_to(REPO)) for p in REPO.rglob("*") if ".git" not in p.parts]
        names = [n for n in listed if (REPO / n).is_file() and not (REPO / n).is_symlink()]
    by_ext: dict[str, list[str]] = {}
    for name in sorted(names):
        path = Path(name)
        by_ext.setdefault(path.suffix or path.name, []).append(name)
    picked = []
    for ext in sorted(by_ext):
        group = by_ext[ext]
        pick = rng.choice(len(group), min(per_type, len(group)), replace=False)
        picked += [group[i] for i in sorted(pick)]
    if source.startswith("commit"):
        contents = _committed_contents(MAGIKA_FILES_COMMIT, picked)
    else:
        contents = [(REPO / n).read_bytes() for n in picked]
    return list(zip(picked, contents)), source


def magika_samples(seed: int = 0) -> tuple[list[bytes], str]:
    """Contents to classify: files of this repository (at MAGIKA_FILES_COMMIT), windows cut from its text files,
    archives of them, and images, audio and documents generated here; and where the files came from."""
    import bz2
    import gzip
    import io
    import lzma
    import tarfile
    import zipfile

    rng = np.random.default_rng(seed)
    files, source = _repo_files(40, rng)
    blobs = [contents for _, contents in files]
    texts = [b for b in blobs if b[:4096].isascii() and len(b) > 3000]
    for _ in range(200):                         # windows of text files: the model sees 1 kB at each end
        b = texts[int(rng.integers(len(texts)))]
        start = int(rng.integers(0, len(b) - 2000))
        blobs.append(b[start:start + int(rng.integers(1500, 6000))])
    for _ in range(20):                          # archives and compressed streams of repository files
        members = [files[j] for j in rng.choice(len(files), 3, replace=False)]
        data = b"".join(contents for _, contents in members)
        blobs += [gzip.compress(data, mtime=0), bz2.compress(data), lzma.compress(data)]
        zbuf, tbuf = io.BytesIO(), io.BytesIO()
        with zipfile.ZipFile(zbuf, "w") as z:
            for name, contents in members:             # a fixed date: the same bytes on every run
                z.writestr(zipfile.ZipInfo(Path(name).name, date_time=(1980, 1, 1, 0, 0, 0)), contents)
        with tarfile.open(fileobj=tbuf, mode="w") as t:
            for name, contents in members:
                info = tarfile.TarInfo(Path(name).name)
                info.size = len(contents)
                t.addfile(info, io.BytesIO(contents))
        blobs += [zbuf.getvalue(), tbuf.getvalue()]
    try:
        from PIL import Image
    except ImportError:
        Image = None
    for _ in range(12):                          # images in every format Pillow writes, and audio
        h, w = int(rng.integers(32, 200)), int(rng.integers(32, 200))
        ramp = np.linspace(0, 255, w)[None, :, None] * rng.uniform(0.2, 1, (1, 1, 3))
        img = np.clip(ramp + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
        if Image is not None:
            for fmt in ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "PDF", "ICO"):
                buf = io.BytesIO()
                # fixed dates in the PDF's metadata: the same bytes on every run
                dates = dict(creationDate=time.gmtime(0), modDate=time.gmtime(0)) if fmt == "PDF" else {}
                Image.fromarray(img).save(buf, format=fmt, **dates)
                blobs.append(buf.getvalue())
        import wave

        buf = io.BytesIO()
        with wave.open(buf, "wb") as wv:
            wv.setnchannels(1)
            wv.setsampwidth(2)
            wv.setframerate(16000)
            tone = np.sin(2 * np.pi * rng.uniform(100, 3000) * np.arange(8000) / 16000)
            wv.writeframes((tone * 8000).astype(np.int16).tobytes())
        blobs.append(buf.getvalue())
        blobs.append(rng.integers(0, 256, int(rng.integers(500, 5000))).astype(np.uint8).tobytes())
    return blobs, source


def magika(seed: int = 0):
    _require("onnxruntime", "pip install onnxruntime")
    mg = _require("magika", "pip install magika")
    classifier = mg.Magika()
    weights = OnnxWeights(classifier._model_dir / "model.onnx")
    blobs, source = magika_samples(seed)
    folder = tempfile.TemporaryDirectory(prefix="nnc-magika-")
    paths = []
    for i, b in enumerate(blobs):
        paths.append(Path(folder.name) / f"{i:04d}")
        paths[-1].write_bytes(b)

    def labels(tensors, paths=paths):
        classifier._onnx_session = weights.session(tensors)
        return [str(r.prediction.dl.label) for r in classifier.identify_paths(paths)]

    original = labels(weights.params)
    used = [i for i, lab in enumerate(original) if lab != "undefined"]   # too small for the network
    paths = [paths[i] for i in used]
    blobs = [blobs[i] for i in used]
    reference = [original[i] for i in used]

    def evaluate(tensors):
        return float(np.mean([a == b for a, b in zip(labels(tensors, paths), reference)]))

    evaluate.folder = folder                     # the files live as long as the function
    kinds = len(set(reference))
    metric = (f"agreement of the predicted content type (the network's label) with the fp32 model's on {len(blobs)} "
              f"contents ({kinds} types: files and text windows of this repository ({source}), archives of them, "
              f"generated images, audio, random bytes), magika {classifier._model_dir.name}")
    return weights.params, evaluate, metric


# -- rapidocr ---------------------------------------------------------------------------------------------------------
OCR_LINES = [
    "Invoice 2024-0117", "Total due: 1,284.50 EUR", "Neural network compression", "Hello World",
    "Meeting at 10:30 in room B2", "The quick brown fox", "jumps over the lazy dog", "Order #58213 shipped",
    "Temperature 23.5 C", "Call +49 30 1234567", "www.example.org", "Quantisation step 0.0039",
    "Chapter 7: Results", "Deadline Friday", "Page 12 of 40", "ABCDEFGHIJKLM", "nopqrstuvwxyz 0123456789",
    "Batch size 64, epochs 30", "Open 9am - 5pm", "Exit", "Do not enter", "Price 19.99",
]


def ocr_images(n: int = 8, seed: int = 0) -> list[np.ndarray]:
    """BGR images of text lines rendered with Pillow's default font (sizes, colours and offsets vary)."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n):
        img = Image.new("RGB", (640, 320), tuple(int(c) for c in rng.integers(200, 256, 3)))
        draw = ImageDraw.Draw(img)
        y = int(rng.integers(10, 30))
        while y < 270:
            size = int(rng.integers(18, 40))
            font = ImageFont.load_default(size=size)
            text = OCR_LINES[int(rng.integers(len(OCR_LINES)))]
            draw.text((int(rng.integers(10, 120)), y), text, fill=tuple(int(c) for c in rng.integers(0, 90, 3)),
                      font=font)
            y += size + int(rng.integers(12, 40))
        images.append(np.asarray(img)[:, :, ::-1].copy())
    return images


def edit_distance(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def rapidocr(seed: int = 0):
    _require("onnxruntime", "pip install onnxruntime")
    ro = _require("rapidocr_onnxruntime", "pip install rapidocr-onnxruntime")
    _require("PIL", "pip install Pillow")
    engine = ro.RapidOCR()
    models = Path(ro.__file__).parent / "models"
    parts = {"det": OnnxWeights(models / "ch_PP-OCRv4_det_infer.onnx", "det/"),
             "cls": OnnxWeights(models / "ch_ppocr_mobile_v2.0_cls_infer.onnx", "cls/"),
             "rec": OnnxWeights(models / "ch_PP-OCRv4_rec_infer.onnx", "rec/")}
    images = ocr_images(seed=seed)

    def read(tensors):
        engine.text_det.infer.session = parts["det"].session(tensors)
        engine.text_cls.infer.session = parts["cls"].session(tensors)
        engine.text_rec.session.session = parts["rec"].session(tensors)
        out = []
        for img in images:
            result, _ = engine(img)
            out.append("\n".join(r[1] for r in result or []))
        return out

    params = {}
    for part in parts.values():
        params.update(part.params)
    reference = read(params)
    total = sum(len(r) for r in reference)

    def evaluate(tensors):
        return max(0.0, 1 - sum(edit_distance(a, b) for a, b in zip(read(tensors), reference)) / total)

    metric = (f"1 - edit distance of the recognised text to the fp32 pipeline's / its {total} characters, on "
              f"{len(images)} generated images of {sum(r.count(chr(10)) + 1 for r in reference)} text lines "
              "(Pillow's default font); detection, orientation and recognition models (PP-OCRv4) all coded")
    return params, evaluate, metric


PACKAGED.update(magika=magika, rapidocr=rapidocr)

#: the ONNX models whose weighted layers' inputs :class:`CovarianceRecorder` sees (silero-vad's convolutions are
#: inside an If node's branches; MTCNN is run by torch)
RECORDABLE = ("magika", "rapidocr")
#: the seed of the inputs the covariances are measured on: neither the evaluation's (0) nor the held-out set's (1)
CALIBRATION_SEED = 2


def input_covariances(key: str, params: dict) -> tuple[dict, list]:
    """({weight: E[x x^T] of its layer's input}, [weights stored (inputs, outputs)]) of a RECORDABLE model with the
    weights ``params``, on the inputs of seed CALIBRATION_SEED (nnc's ``covariances``, spec A.16)."""
    evaluate = PACKAGED[key](seed=CALIBRATION_SEED)[1]
    with CovarianceRecorder() as recorder:
        evaluate(params)
    covs = recorder.covariances()
    return covs, sorted(k for k in recorder.transposed if k in covs)


# -- facenet-pytorch MTCNN --------------------------------------------------------------------------------------------
def mtcnn_nets():
    """(PNet, RNet, ONet) of facenet-pytorch with the package's weights, loaded from its mtcnn.py without the
    package's __init__ (which imports torchvision); the detection pipeline's module is replaced by a stub."""
    import types

    _require("torch", "pip install torch")
    spec = importlib.util.find_spec("facenet_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise Unavailable("facenet-pytorch is not installed (pip install --no-deps facenet-pytorch)")
    models_dir = Path(list(spec.submodule_search_locations)[0]) / "models"
    pkg = "_nnc_bench_facenet"
    if pkg + ".mtcnn" not in sys.modules:
        for name, path in ((pkg, models_dir), (pkg + ".utils", models_dir / "utils")):
            mod = types.ModuleType(name)
            mod.__path__ = [str(path)]
            sys.modules[name] = mod
        stub = types.ModuleType(pkg + ".utils.detect_face")

        def not_here(*args, **kwargs):
            raise Unavailable("the MTCNN detection pipeline needs torchvision")

        stub.detect_face = stub.extract_face = not_here
        sys.modules[stub.__name__] = stub
        mspec = importlib.util.spec_from_file_location(pkg + ".mtcnn", models_dir / "mtcnn.py")
        module = importlib.util.module_from_spec(mspec)
        sys.modules[mspec.name] = module
        mspec.loader.exec_module(module)
    module = sys.modules[pkg + ".mtcnn"]
    return tuple(getattr(module, n)(pretrained=True).eval() for n in ("PNet", "RNet", "ONet"))


def face_images(n: int, size: int, rng) -> np.ndarray:
    """(n, 3, size, size) images in MTCNN's input scaling: drawn faces (skin-toned ellipse, eyes, brows, nose,
    mouth) at varying positions and scales on noisy backgrounds, half of them without a face."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    out = np.empty((n, 3, size, size), np.float32)
    for i in range(n):
        img = rng.uniform(0, 255, 3)[:, None, None] * np.ones((3, size, size), np.float32)
        img += rng.normal(0, 25, (3, size, size)) + 60 * np.sin(2 * np.pi * rng.uniform(0.5, 3) * (xx + yy))
        if i % 2 == 0:
            cx, cy, r = rng.uniform(0.35, 0.65), rng.uniform(0.35, 0.65), rng.uniform(0.25, 0.45)
            face = ((xx - cx) / (0.8 * r)) ** 2 + ((yy - cy) / r) ** 2 < 1
            img[:, face] = np.array([225, 180, 150])[:, None] * rng.uniform(0.6, 1.1)
            for ex in (-0.35, 0.35):
                eye = ((xx - cx - ex * r) / (0.12 * r)) ** 2 + ((yy - cy + 0.25 * r) / (0.07 * r)) ** 2 < 1
                img[:, eye] = 40
                brow = (np.abs(xx - cx - ex * r) < 0.15 * r) & (np.abs(yy - cy + 0.42 * r) < 0.03 * r)
                img[:, brow] = 60
            nose = (np.abs(xx - cx) < 0.05 * r) & (yy > cy - 0.1 * r) & (yy < cy + 0.2 * r)
            img[:, nose] *= 0.8
            mouth = ((xx - cx) / (0.35 * r)) ** 2 + ((yy - cy - 0.5 * r) / (0.08 * r)) ** 2 < 1
            img[:, mouth] = np.array([150, 60, 60])[:, None]
        out[i] = (np.clip(img, 0, 255) - 127.5) * 0.0078125
    return out


def mtcnn(seed: int = 0):
    import torch

    nets = mtcnn_nets()
    faces = torch.from_numpy(face_images(600, 48, np.random.default_rng(seed)))
    # the same images at the three nets' input sizes, as the cascade sees a candidate window
    inputs = [torch.nn.functional.avg_pool2d(faces, 4), torch.nn.functional.avg_pool2d(faces, 2), faces]
    names = ("pnet/", "rnet/", "onet/")
    thresholds = (0.6, 0.7, 0.7)                                  # facenet-pytorch's MTCNN defaults
    params = {p + k: v.detach().numpy().astype(np.float32).copy() for p, net in zip(names, nets)
              for k, v in net.state_dict().items()}

    def scores(tensors):
        out = []
        with torch.no_grad():
            for prefix, net, x in zip(names, nets, inputs):
                net.load_state_dict({k[len(prefix):]: torch.from_numpy(np.asarray(v, np.float32))
                                     for k, v in tensors.items() if k.startswith(prefix)})
                prob = net(x)[-1]                 # (box, [landmarks,] probabilities); faces: channel 1
                out.append(prob[:, 1].reshape(-1).numpy())
        return out

    reference = [s >= t for s, t in zip(scores(params), thresholds)]

    def evaluate(tensors):
        return float(np.mean([np.mean((s >= t) == r) for s, t, r in zip(scores(tensors), thresholds, reference)]))

    rates = ", ".join(f"{n[:-1]} {100 * r.mean():.0f} %" for n, r in zip(names, reference))
    metric = ("mean over P-, R- and O-Net of the agreement of the face decisions (MTCNN's thresholds 0.6, 0.7, 0.7) "
              f"with the fp32 nets' on 600 generated 48 px windows (12, 24, 48 px for the three nets), half with a "
              f"drawn face (fp32 positives: {rates}); the detection pipeline (NMS, needs torchvision) not run")
    return params, evaluate, metric


PACKAGED.update(mtcnn=mtcnn)
