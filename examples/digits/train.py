"""Train the bundled example models on scikit-learn's digits data (8x8 images, 10 classes).

Run once to (re)create the files beside this script; needs scikit-learn at training time only:

    python examples/digits/train.py

Writes, into nnc/data/digits/ (package data, so that `nnc demo` finds them after install):
  mlp.safetensors   a 64-128-64-10 MLP (float32)
  cnn.safetensors   a small CNN: conv 3x3 (16) -> conv 3x3 (32, stride 2) -> linear 10
  test_set.npz      the held-out images and labels used for the accuracy figures
Training is plain numpy (no torch), seeded, and deterministic on one machine.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np

from nnc.demo import cnn_forward, mlp_forward

HERE = Path(__file__).resolve().parent
OUT = HERE.parent.parent / "nnc" / "data" / "digits"


def load_split(seed=0):
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    cut = int(0.7 * len(y))
    return x[order[:cut]], y[order[:cut]], x[order[cut:]], y[order[cut:]]


# -- training-only pieces; the forward passes live in nnc.demo --------------------------------------------------------------
def softmax_xent(logits, y):
    z = logits - logits.max(1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(1, keepdims=True)
    loss = -np.log(p[np.arange(len(y)), y] + 1e-12).mean()
    g = p
    g[np.arange(len(y)), y] -= 1
    return loss, g / len(y)


def col2im(gcols, x_shape, k, stride):
    n, c, h, w = x_shape
    p = k // 2
    oh, ow = gcols.shape[1:3]
    g = gcols.reshape(n, oh, ow, c, k, k)
    gx = np.zeros((n, c, h + 2 * p, w + 2 * p), dtype=gcols.dtype)
    for i in range(k):
        for j in range(k):
            gx[:, :, i:i + stride * oh:stride, j:j + stride * ow:stride] += g[:, :, :, :, i, j].transpose(0, 3, 1, 2)
    return gx[:, :, p:p + h, p:p + w]


def mlp_grads(params, x, y):
    logits, acts = mlp_forward(params, x, cache=True)
    loss, g = softmax_xent(logits, y)
    grads = {}
    names = ["fc1", "fc2", "fc3"]
    for i in reversed(range(len(names))):
        name = names[i]
        grads[f"{name}.weight"] = g.T @ acts[i]
        grads[f"{name}.bias"] = g.sum(0)
        g = g @ params[f"{name}.weight"]
        if i > 0:
            g = g * (acts[i] > 0)
    return loss, grads


def cnn_grads(params, x, y):
    logits, (x4, c1, z1, a1, c2, z2, a2) = cnn_forward(params, x, cache=True)
    loss, g = softmax_xent(logits, y)
    grads = {"fc.weight": g.T @ a2, "fc.bias": g.sum(0)}
    ga2 = (g @ params["fc.weight"]).reshape(len(x), 32, 4, 4).transpose(0, 2, 3, 1) * (z2 > 0)
    w2 = params["conv2.weight"]
    grads["conv2.weight"] = (ga2.reshape(-1, 32).T @ c2.reshape(-1, c2.shape[-1])).reshape(w2.shape)
    grads["conv2.bias"] = ga2.sum((0, 1, 2))
    gc2 = ga2 @ w2.reshape(32, -1)
    ga1 = col2im(gc2, a1.shape, 3, 2).transpose(0, 2, 3, 1) * (z1 > 0)
    w1 = params["conv1.weight"]
    grads["conv1.weight"] = (ga1.reshape(-1, 16).T @ c1.reshape(-1, c1.shape[-1])).reshape(w1.shape)
    grads["conv1.bias"] = ga1.sum((0, 1, 2))
    return loss, grads


def train(params, grad_fn, x, y, epochs, lr=2e-3, seed=0):
    rng = np.random.default_rng(seed)
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v2 = {k: np.zeros_like(v) for k, v in params.items()}
    t = 0
    for _ in range(epochs):
        for idx in np.array_split(rng.permutation(len(y)), max(1, len(y) // 64)):
            t += 1
            _, g = grad_fn(params, x[idx], y[idx])
            for k in params:
                m[k] = 0.9 * m[k] + 0.1 * g[k]
                v2[k] = 0.999 * v2[k] + 0.001 * g[k] ** 2
                step = lr * (m[k] / (1 - 0.9 ** t)) / (np.sqrt(v2[k] / (1 - 0.999 ** t)) + 1e-8)
                params[k] = (params[k] - step).astype(np.float32)
    return params


def init(shapes, seed):
    rng = np.random.default_rng(seed)
    out = OrderedDict()
    for name, shape in shapes:
        if name.endswith("bias"):
            out[name] = np.zeros(shape, np.float32)
        else:
            fan_in = int(np.prod(shape[1:]))
            out[name] = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    return out


def accuracy(forward, params, x, y):
    return float((forward(params, x).argmax(1) == y).mean())


def main():
    from nnc.formats import safetensors_bytes, write_atomic

    xtr, ytr, xte, yte = load_split()
    mlp = init([("fc1.weight", (128, 64)), ("fc1.bias", (128,)), ("fc2.weight", (64, 128)), ("fc2.bias", (64,)),
                ("fc3.weight", (10, 64)), ("fc3.bias", (10,))], seed=1)
    mlp = train(mlp, mlp_grads, xtr, ytr, epochs=40)
    cnn = init([("conv1.weight", (16, 1, 3, 3)), ("conv1.bias", (16,)), ("conv2.weight", (32, 16, 3, 3)),
                ("conv2.bias", (32,)), ("fc.weight", (10, 512)), ("fc.bias", (10,))], seed=2)
    cnn = train(cnn, cnn_grads, xtr, ytr, epochs=25)
    print(f"mlp test accuracy {accuracy(mlp_forward, mlp, xte, yte):.4f}")
    print(f"cnn test accuracy {accuracy(cnn_forward, cnn, xte, yte):.4f}")
    write_atomic(OUT / "mlp.safetensors", safetensors_bytes(mlp))
    write_atomic(OUT / "cnn.safetensors", safetensors_bytes(cnn))
    np.savez_compressed(OUT / "test_set.npz", images=(xte * 16).astype(np.uint8), labels=yte.astype(np.uint8))


if __name__ == "__main__":
    main()
