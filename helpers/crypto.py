"""The cryptographic primitives of secure aggregation, all from `cryptography`.

Secure aggregation (Bonawitz et al. 2017, "Practical Secure Aggregation for
Privacy-Preserving Machine Learning", CCS) needs four primitives, and none of
them is written by hand here:

- key agreement: X25519 Diffie-Hellman, then HKDF-SHA256 to turn the shared
  secret into a 32-byte key for one purpose (`agree_key`);
- a pseudorandom generator that stretches a 32-byte seed into a long mask of
  ring elements: the ChaCha20 stream cipher (`expand_mask`). NumPy's generators
  are fast but predictable from their output, so they must not make masks;
- authenticated encryption for shares routed through the server: AES-256-GCM
  (`encrypt`, `decrypt`), which rejects any changed byte;
- fresh randomness for keys, seeds and nonces (`RandomSource`).

Two checks go with them: `check_public_key` rejects a malformed or low-order
X25519 public key before any exchange, and `commitment` hashes a random secret
with SHA-256 so that its owner can later be held to it.

`RandomSource(seed=...)` is a test mode: every key, seed and nonce it gives is
derived from the seed, so tests and notebooks are reproducible. Anyone who
knows the seed knows every key, so a real deployment must never use it.
"""

from __future__ import annotations

import hashlib
import os
import warnings

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_BYTES = 32
NONCE_BYTES = 12
_CHACHA_NONCE = bytes(16)
_seeded_warning_shown = False
# A fixed private key to test peers' public keys with. Its secret does not
# matter: an exchange with a low-order point gives zero for every private key.
_PROBE_KEY = X25519PrivateKey.from_private_bytes(
    hashlib.sha256(b"public key probe").digest()
)


class RandomSource:
    """Random bytes for keys, seeds, nonces and shares.

    Without a seed the bytes come from the operating system (`os.urandom`).
    With a seed they are a ChaCha20 keystream keyed by SHA-256 of the seed, so
    every run is identical: a test mode that real deployments must not use,
    because the seed then determines every secret. Creating one warns (once per
    process) unless `warn` is False.

    Args:
        seed: None for secure randomness, or an int (NumPy integers too) or
            bytes for the test mode.
        warn: warn that a seeded source is for tests only.
    """

    def __init__(self, seed: int | bytes | None = None, *, warn: bool = True) -> None:
        self.seeded = seed is not None
        self._stream = None
        if seed is not None:
            if isinstance(seed, bool | np.bool_) or not isinstance(
                seed, int | np.integer | bytes
            ):
                raise TypeError(f"seed must be an int, bytes or None, got {seed!r}.")
            material = seed if isinstance(seed, bytes) else str(int(seed)).encode()
            key = hashlib.sha256(b"secure-aggregation test seed:" + material).digest()
            cipher = Cipher(algorithms.ChaCha20(key, _CHACHA_NONCE), mode=None)
            self._stream = cipher.encryptor()
        if seed is not None and warn:
            warn_seeded()

    def bytes(self, count: int) -> bytes:
        """Return `count` random bytes."""
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}.")
        if self._stream is None:
            return os.urandom(count)
        return self._stream.update(bytes(count))

    def below(self, bound: int) -> int:
        """Return a uniform integer in [0, bound), by rejection sampling."""
        if bound < 1:
            raise ValueError(f"bound must be >= 1, got {bound}.")
        n_bits = (bound - 1).bit_length()
        n_bytes = (n_bits + 7) // 8
        while True:
            candidate = int.from_bytes(self.bytes(n_bytes), "big") >> (
                8 * n_bytes - n_bits
            )
            if candidate < bound:
                return candidate

    def key_pair(self) -> X25519PrivateKey:
        """Return a fresh X25519 private key (its public key is `.public_key()`)."""
        if self._stream is None:
            return X25519PrivateKey.generate()
        return X25519PrivateKey.from_private_bytes(self.bytes(KEY_BYTES))

    def __repr__(self) -> str:
        mode = "seeded, for tests only" if self.seeded else "os.urandom"
        return f"RandomSource({mode})"


def warn_seeded() -> None:
    """Warn, once per process, that seeded keys are for tests and teaching only."""
    # A flag rather than the warning registry: libraries that enter
    # warnings.catch_warnings reset the registry, which repeats the warning.
    global _seeded_warning_shown
    if _seeded_warning_shown:
        return
    _seeded_warning_shown = True
    warnings.warn(
        "Secure aggregation runs in its seeded test mode: every key and mask is "
        "reproducible from the seed. Use it only in tests and teaching; a "
        "deployment must draw keys from os.urandom (seed=None).",
        UserWarning,
        stacklevel=3,
    )


def public_bytes(public_key: X25519PublicKey) -> bytes:
    """Return the 32 raw bytes of an X25519 public key, as sent to the server."""
    return public_key.public_bytes(
        encoding=serialization.Encoding.Raw, format=serialization.PublicFormat.Raw
    )


def private_bytes(private_key: X25519PrivateKey) -> bytes:
    """Return the 32 raw bytes of an X25519 private key, for Shamir sharing."""
    return private_key.private_bytes(
        encoding=serialization.Encoding.Raw,
        format=serialization.PrivateFormat.Raw,
        encryption_algorithm=serialization.NoEncryption(),
    )


def public_key_of(private_key: bytes) -> bytes:
    """Return the raw public key of a raw 32-byte X25519 private key."""
    return public_bytes(X25519PrivateKey.from_private_bytes(private_key).public_key())


def check_public_key(public_key: bytes, name: str = "public key") -> None:
    """Raise ValueError unless `public_key` is a usable raw X25519 public key.

    A usable key is 32 bytes, and an exchange with it gives a nonzero shared
    secret. The low-order points (all-zero bytes among them) give the
    all-zero secret for every private key, so a party that advertises one
    makes every key agreed with it predictable.

    Args:
        public_key: the raw key as received.
        name: what to call the key in the error message.
    """
    if not isinstance(public_key, bytes) or len(public_key) != KEY_BYTES:
        length = len(public_key) if isinstance(public_key, bytes) else None
        got = f"{length} bytes" if length is not None else type(public_key).__name__
        raise ValueError(f"{name} must be {KEY_BYTES} raw bytes, got {got}.")
    try:
        _PROBE_KEY.exchange(X25519PublicKey.from_public_bytes(public_key))
    except ValueError as error:
        raise ValueError(
            f"{name} is a low-order X25519 point: every key agreed with it is zero."
        ) from error


def commitment(secret: bytes, *, context: bytes) -> bytes:
    """Return SHA-256(context, secret): a 32-byte commitment to a random secret.

    It binds: opening it to a different secret means finding a SHA-256
    collision. It hides the secret only because the secret is uniformly
    random (32 bytes here), so it cannot be guessed and checked against the
    hash. A commitment to a guessable value would also need a random salt.

    Args:
        secret: the random secret, such as a 32-byte self-mask seed.
        context: what the secret is for (for example the session and the
            owner's name), so one commitment cannot stand in for another.
    """
    if not isinstance(secret, bytes) or not isinstance(context, bytes):
        raise TypeError("secret and context must be bytes.")
    digest = hashlib.sha256()
    digest.update(len(context).to_bytes(8, "big"))
    digest.update(context)
    digest.update(secret)
    return digest.digest()


def agree_key(
    private_key: X25519PrivateKey | bytes, peer_public: bytes, *, purpose: bytes
) -> bytes:
    """Derive a 32-byte key that only the two parties of an X25519 pair can compute.

    Both sides get the same key: X25519(a, g^b) = X25519(b, g^a). HKDF-SHA256
    (RFC 5869) with `purpose` as its info string separates the keys for
    different uses of one key pair.

    Args:
        private_key: this party's X25519 private key, or its 32 raw bytes.
        peer_public: the other party's 32-byte public key.
        purpose: the HKDF info string, for example b"mask round 3".
    """
    if isinstance(private_key, bytes):
        private_key = X25519PrivateKey.from_private_bytes(private_key)
    shared = private_key.exchange(X25519PublicKey.from_public_bytes(peer_public))
    return HKDF(
        algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=purpose
    ).derive(shared)


def expand_mask(seed: bytes, length: int, *, ring_bits: int) -> np.ndarray:
    """Stretch a 32-byte seed into `length` uniform elements of the ring Z_2^ring_bits.

    The ChaCha20 keystream under key `seed` is read as little-endian 64-bit
    words and each is reduced modulo 2^ring_bits. Because 2^ring_bits divides
    2^64, every ring element is exactly equally likely.

    Returns:
        uint64 array of shape (length,).
    """
    if len(seed) != KEY_BYTES:
        raise ValueError(f"seed must be {KEY_BYTES} bytes, got {len(seed)}.")
    if not 1 <= ring_bits <= 64:
        raise ValueError(f"ring_bits must lie in 1..64, got {ring_bits}.")
    if length == 0:
        return np.zeros(0, dtype=np.uint64)
    # Encrypting zeros in place yields the keystream without extra copies.
    words = np.zeros(length, dtype="<u8")
    buffer = words.view(np.uint8)
    encryptor = Cipher(algorithms.ChaCha20(seed, _CHACHA_NONCE), mode=None).encryptor()
    encryptor.update_into(buffer, buffer)
    words = words.astype(np.uint64, copy=False)
    if ring_bits < 64:
        words &= np.uint64((1 << ring_bits) - 1)
    return words


def encrypt(key: bytes, plaintext: bytes, *, associated: bytes, nonce: bytes) -> bytes:
    """Encrypt and authenticate `plaintext` with AES-256-GCM.

    `associated` is authenticated but not encrypted: binding the sender and
    recipient names to it stops the server from redirecting a ciphertext.

    Returns:
        nonce + ciphertext + 16-byte tag.
    """
    if len(nonce) != NONCE_BYTES:
        raise ValueError(f"nonce must be {NONCE_BYTES} bytes, got {len(nonce)}.")
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated)


def decrypt(key: bytes, message: bytes, *, associated: bytes) -> bytes:
    """Check and decrypt a message from `encrypt`.

    Raises:
        ValueError: if the message was changed, is truncated, or was encrypted
            under another key or other associated data.
    """
    nonce, body = message[:NONCE_BYTES], message[NONCE_BYTES:]
    try:
        return AESGCM(key).decrypt(nonce, body, associated)
    except (InvalidTag, ValueError) as error:
        raise ValueError(
            "Authenticated decryption failed: the message was changed in transit, "
            "or was not encrypted for this recipient with this key."
        ) from error
