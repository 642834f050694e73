"""Token data sets for discrete diffusion: each position holds an id in {0, ..., K - 1}, K = `num_levels`.

    digits_tokens   scikit-learn's 8x8 digits as 17-level categorical images (the pixels are already the
                    integers 0..16, no quantisation), optionally re-quantised to `levels` < 17:
                    k -> floor(k levels / 17)
    mnist_tokens    MNIST read from the original idx files (`sde_gen.data.images.read_idx`), optionally
                    average-pooled by `downsample`, quantised from 256 to K = `levels` levels:
                    k -> floor(k K / 256) (K = 2: the binarised MNIST of the discrete-diffusion literature)
    markov_tokens   sequences of length L from a first-order Markov chain on K states drawn in-package from
                    a seed, with its exact likelihood

                        log p(x) = log pi_0(x^1) + sum_{l=2}^L log P(x^{l-1}, x^l)

                    its exact entropy H(x) = H(pi_1) + sum_{l=2}^L sum_i pi_{l-1}(i) H(P(i, .)) (pi_l the
                    law of x^l), and the exact denoiser p(x_0^l | x_t) of any D3PM process: x_0 is a Markov
                    chain and each x_t^l an emission of x_0^l with probability [Qbar_t]_{x_0^l, x_t^l}, so
                    the posterior marginals are those of a hidden Markov model, computed by the
                    forward-backward recursions (Rabiner 1989) in log space, O(L K^2) per sequence.

Every set follows the `sde_gen.data.base.Dataset` interface with long tokens in place of float
vectors: `sample_batch(B, generator)` is (B, *event) long on the generator's device, `test` the
held-out tokens, `num_levels` = K, `num_classes` the number of class labels (10 for the images,
None for the sequences). The forward processes, the loss and the ELBO are those of this package.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from .._validation import check_in_open_interval, check_positive_int
from ..data.base import Dataset

__all__ = ["TokenDataset", "DigitsTokens", "MNISTTokens", "MarkovTokens", "TOKEN_DATASETS", "quantize_levels"]


def quantize_levels(pixels: torch.Tensor, from_levels: int, to_levels: int) -> torch.Tensor:
    """Integer levels k in [0, from_levels) -> floor(k to_levels / from_levels) in [0, to_levels) (long)."""
    check_positive_int("from_levels", from_levels)
    check_positive_int("to_levels", to_levels)
    if to_levels > from_levels:
        raise ValueError(f"levels must be <= {from_levels} (the data's own levels); got {to_levels}")
    return torch.div(pixels.long() * to_levels, from_levels, rounding_mode="floor")


class TokenDataset(Dataset):
    """A finite set of token sequences or token images.

    Args:
        train_tokens, test_tokens: (N, *event) integer tensors with ids in [0, num_levels).
        num_levels: K.
        train_labels, test_labels, num_classes: optional class labels (given together).
    """

    def __init__(self, train_tokens: torch.Tensor, test_tokens: torch.Tensor, num_levels: int,
                 train_labels: Optional[torch.Tensor] = None, test_labels: Optional[torch.Tensor] = None,
                 num_classes: Optional[int] = None):
        self.num_levels = check_positive_int("num_levels", num_levels)
        if num_levels < 2:
            raise ValueError(f"num_levels must be an integer >= 2; got {num_levels}")
        for name, x in (("train_tokens", train_tokens), ("test_tokens", test_tokens)):
            if not isinstance(x, torch.Tensor) or x.is_floating_point() or x.ndim < 2 or x.shape[0] == 0:
                raise ValueError(f"{name} must be a non-empty (N, *event) integer tensor; got "
                                 f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
            if int(x.min()) < 0 or int(x.max()) >= num_levels:
                raise ValueError(f"{name} must hold ids in [0, {num_levels}); got values in [{int(x.min())}, {int(x.max())}]")
        if train_tokens.shape[1:] != test_tokens.shape[1:]:
            raise ValueError(f"train_tokens and test_tokens must share the event shape; got {tuple(train_tokens.shape[1:])} "
                             f"and {tuple(test_tokens.shape[1:])}")
        if (train_labels is None) != (num_classes is None) or (test_labels is None) != (num_classes is None):
            raise ValueError("train_labels, test_labels and num_classes must be given together or not at all")
        self.event_shape = tuple(train_tokens.shape[1:])
        self.train = train_tokens.long()
        self.test = test_tokens.long()
        self.train_labels = None if train_labels is None else torch.as_tensor(train_labels).long()
        self.test_labels = None if test_labels is None else torch.as_tensor(test_labels).long()
        self.num_classes = num_classes
        self._train_on = {}

    def sample_batch(self, batch_size: int, generator: Optional[torch.Generator] = None, return_labels: bool = False):
        """(B, *event) long training tokens drawn with replacement, on the generator's device."""
        n = check_positive_int("batch_size", batch_size)
        if return_labels:
            self.check_labelled()
        device = generator.device if generator is not None else torch.device("cpu")
        idx = torch.randint(self.train.shape[0], (n,), generator=generator, device=device)
        if device not in self._train_on:
            labels = None if self.train_labels is None else self.train_labels.to(device)
            self._train_on[device] = (self.train.to(device), labels)
        train, labels = self._train_on[device]
        return (train[idx], labels[idx]) if return_labels else train[idx]

    def data_std(self) -> float:
        """The standard deviation of the held-out token ids as numbers (stored in checkpoints like the
        continuous sets' scale; discrete models do not use it)."""
        return float(self.test.double().std())

    def independent_bits_per_dim(self, x: Optional[torch.Tensor] = None) -> float:
        """Baseline: mean NLL (bits/dim) of `x` (default: the test set) under per-position categorical laws
        fitted on the training set with add-1/2 (Krichevsky-Trofimov) smoothing."""
        K = self.num_levels
        counts = torch.nn.functional.one_hot(self.train.reshape(self.train.shape[0], -1), K).sum(0).double()
        probs = (counts + 0.5) / (counts.sum(1, keepdim=True) + 0.5 * K)  # (L, K)
        x = self.test if x is None else x
        flat = x.reshape(x.shape[0], -1).cpu()
        logp = probs.log()[torch.arange(flat.shape[1]), flat]
        return float(-logp.mean()) / math.log(2)


class DigitsTokens(TokenDataset):
    """scikit-learn's 8x8 digits as categorical images (1, 8, 8), K = `levels` (17: the raw pixels).

    Args:
        test_fraction, seed: of the deterministic split (the same as `sde_gen.data.Digits`).
        levels: K in [2, 17].
    """

    name = "digits_tokens"

    def __init__(self, test_fraction: float = 0.2, seed: int = 0, levels: int = 17):
        from ..data.images import Digits

        check_in_open_interval("test_fraction", test_fraction, 0.0, 1.0)
        base = Digits(test_fraction=test_fraction, seed=seed)
        super().__init__(quantize_levels(base.train_pixels, 17, levels), quantize_levels(base.test_pixels, 17, levels),
                         levels, base.train_labels, base.test_labels, num_classes=10)


class MNISTTokens(TokenDataset):
    """MNIST (idx files in `data_dir`) as categorical images (1, 28 / downsample, 28 / downsample).

    Args:
        data_dir: folder of the four idx files (see `sde_gen.data.MNIST`).
        levels: K in [2, 256] (2: binarised at 128).
        downsample: average-pool factor before quantisation (1, 2, 4, 7, 14 or 28).
        max_train: keep the first `max_train` training images (null: all).
    """

    name = "mnist_tokens"

    def __init__(self, data_dir: str = "data/mnist", levels: int = 2, downsample: int = 1, max_train: Optional[int] = None):
        from ..data.images import MNIST

        check_positive_int("levels", levels)
        if not 2 <= levels <= 256:
            raise ValueError(f"levels must be an integer in [2, 256]; got {levels}")
        check_positive_int("downsample", downsample)
        if max_train is not None:
            check_positive_int("max_train", max_train)
        base = MNIST(data_dir=data_dir)
        size = base.train_pixels.shape[-1]
        if size % downsample:
            raise ValueError(f"downsample must divide the image size {size}; got {downsample}")

        def prep(px: torch.Tensor) -> torch.Tensor:
            if downsample > 1:  # mean of each block, rounded down to an integer level
                px = torch.nn.functional.avg_pool2d(px.double(), downsample).floor()
            return quantize_levels(px.long(), 256, levels)

        tr, tr_y = base.train_pixels, base.train_labels
        if max_train is not None:
            tr, tr_y = tr[:max_train], tr_y[:max_train]
        super().__init__(prep(tr), prep(base.test_pixels), levels, tr_y, base.test_labels, num_classes=10)


class MarkovTokens(TokenDataset):
    """Sequences (L,) from a random first-order Markov chain on K states, with exact likelihood and denoiser.

    The chain is drawn from `seed`: pi_0 = softmax(sharpness z_0), P(i, .) = softmax(sharpness z_i), z
    standard normal; the training and test sequences are drawn from it with seeds `seed + 1`, `seed + 2`.

    Args:
        num_levels: K (>= 2). length: L (>= 1). num_train, num_test: set sizes.
        sharpness: scale of the logits (0: uniform; large: nearly deterministic).
        seed: of the chain and of the draws.
    """

    name = "markov_tokens"

    def __init__(self, num_levels: int = 4, length: int = 16, num_train: int = 5000, num_test: int = 1000,
                 sharpness: float = 2.0, seed: int = 0):
        K = check_positive_int("num_levels", num_levels)
        L = check_positive_int("length", length)
        check_positive_int("num_train", num_train)
        check_positive_int("num_test", num_test)
        self.sharpness = float(sharpness)
        if not (math.isfinite(self.sharpness) and self.sharpness >= 0):
            raise ValueError(f"sharpness must be a finite number >= 0; got {sharpness!r}")
        if K < 2:
            raise ValueError(f"num_levels must be an integer >= 2; got {K}")
        g = torch.Generator().manual_seed(int(seed))
        z = torch.randn(K + 1, K, generator=g, dtype=torch.float64) * self.sharpness
        self.log_initial = torch.log_softmax(z[0], 0)  # (K,)
        self.log_transition = torch.log_softmax(z[1:], 1)  # (K, K), rows sum to 1
        self.length = L
        train = self.sample(num_train, torch.Generator().manual_seed(int(seed) + 1))
        test = self.sample(num_test, torch.Generator().manual_seed(int(seed) + 2))
        super().__init__(train, test, K)

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """n exact sequences (n, L) long."""
        check_positive_int("n", n)
        P = self.log_transition.exp()
        x = torch.empty(n, self.length, dtype=torch.long)
        x[:, 0] = torch.multinomial(self.log_initial.exp().expand(n, -1), 1, generator=generator)[:, 0]
        for l in range(1, self.length):
            x[:, l] = torch.multinomial(P[x[:, l - 1]], 1, generator=generator)[:, 0]
        return x

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log p(x) (n,) float64 in nats of sequences x (n, L)."""
        from .processes import check_tokens

        x = check_tokens(x, self.num_levels, "x").reshape(-1, self.length).cpu()
        out = self.log_initial[x[:, 0]]
        if self.length > 1:
            out = out + self.log_transition[x[:, :-1], x[:, 1:]].sum(1)
        return out

    def position_marginals(self) -> torch.Tensor:
        """(L, K) float64: the exact law pi_l of x^l."""
        P = self.log_transition.exp()
        pis = [self.log_initial.exp()]
        for _ in range(1, self.length):
            pis.append(pis[-1] @ P)
        return torch.stack(pis)

    def entropy(self) -> float:
        """The exact entropy H(x) in nats: H(pi_1) + sum_{l>=2} sum_i pi_{l-1}(i) H(P(i, .))."""
        P, logP = self.log_transition.exp(), self.log_transition
        row_h = -(P * logP).sum(1)  # (K,)
        pis = self.position_marginals()
        h0 = float(-(pis[0] * self.log_initial).sum())
        return h0 + float((pis[:-1] @ row_h).sum())

    def denoiser(self, process):
        """The exact p(x_0 | x_t) per position under `process` (D3PM): `model(x_t, t)` -> (B, L, K) log-probs.

        Forward-backward on the chain x_0 with emissions e_l(i) = [Qbar_t]_{i, x_t^l}:
            alpha_1(i) = pi_0(i) e_1(i),  alpha_l(j) = e_l(j) sum_i alpha_{l-1}(i) P(i, j)
            beta_L(i) = 1,                beta_l(i) = sum_j P(i, j) e_{l+1}(j) beta_{l+1}(j)
            p(x_0^l = i | x_t) = alpha_l(i) beta_l(i) / sum_k alpha_l(k) beta_l(k)
        in log space (float64) on the device of x_t.
        """
        if process.num_classes != self.num_levels:
            raise ValueError(f"process.num_classes must equal the data's K = {self.num_levels}; got {process.num_classes}")
        K = self.num_levels

        def model(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            dev = x_t.device
            B = x_t.shape[0]
            flat = x_t.reshape(B, -1)
            Qbar = process.cumulative_matrix(t.to(process.betas.device)).to(dev)[:, :K, :]  # (B, K, S)
            # log e_l(i) = log Qbar_t[i, x_t^l]: (B, L, K)
            log_e = torch.gather(Qbar, 2, flat[:, None, :].expand(B, K, flat.shape[1])).clamp_min(0).log().transpose(1, 2)
            logP = self.log_transition.to(dev)
            L = flat.shape[1]
            log_a = [self.log_initial.to(dev)[None] + log_e[:, 0]]
            for l in range(1, L):
                log_a.append(log_e[:, l] + torch.logsumexp(log_a[-1][:, :, None] + logP[None], 1))
            log_b = [torch.zeros(B, K, dtype=torch.float64, device=dev)]
            for l in range(L - 2, -1, -1):
                log_b.append(torch.logsumexp(logP[None] + (log_e[:, l + 1] + log_b[-1])[:, None, :], 2))
            log_b.reverse()
            joint = torch.stack(log_a, 1) + torch.stack(log_b, 1)  # (B, L, K)
            return torch.log_softmax(joint, -1).reshape(*x_t.shape, K)

        return model


#: config name -> token dataset class
TOKEN_DATASETS = {
    DigitsTokens.name: DigitsTokens,
    MNISTTokens.name: MNISTTokens,
    MarkovTokens.name: MarkovTokens,
}
