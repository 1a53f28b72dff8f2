"""Dropout-tolerant secure aggregation with pairwise masks (Bonawitz et al. 2017).

The server learns the sum of the hospitals' vectors and nothing else about any
one of them (Bonawitz et al. 2017, "Practical Secure Aggregation for
Privacy-Preserving Machine Learning", CCS, the honest-but-curious protocol).
One instance of the protocol aggregates one round, in four steps:

1. advertise keys: every hospital makes two X25519 key pairs, one for masking
   and one for encrypting shares, and draws a self-mask seed b_u. It sends
   both public keys and a SHA-256 commitment to b_u to the server, which
   forwards the list to all;
2. share keys: every hospital Shamir-shares, t-of-n, both b_u and its
   masking private key. It encrypts each peer's two
   shares with AES-GCM under a key agreed with that peer, and the server routes
   the ciphertexts, which it cannot read;
3. masked input: hospital u sends y_u = x_u + PRG(b_u) + sum_v +-PRG(s_uv) mod
   2^k, where s_uv is the mask key u agrees with peer v, added by the hospital
   with the smaller index and subtracted by the other. In the sum over all
   hospitals the pairwise masks cancel;
4. unmasking: the server sends the survivors the list of hospitals whose
   masked input arrived. Each survivor sends, for every hospital, exactly one
   of its two shares: the self-mask seed's share if that hospital's input
   arrived (its self-mask is then removed), else the masking key's share (its
   pairwise masks with the survivors are then removed). Asking for both would
   let the server unmask one hospital's input.

Every step needs at least t hospitals. Fewer raises `ProtocolError`, so the
round must be repeated, and a wrong sum is never returned.

The server checks every secret it rebuilds before it unmasks with it. A
masking key must match the public key its owner advertised, as in the paper.
A self-mask seed must match its owner's commitment from step 1. That check
goes beyond the semi-honest protocol of Bonawitz et al. 2017: it stops a
responder that lies about its share of a seed, which would otherwise shift
the rebuilt seed and return a wrong sum without any error. A wrong share
makes the round fail instead, but the check does not tell which responder
lied. The server also rejects a malformed or low-order public key in step 1.

Hospitals and server are separate classes, `SecAggHospital` and
`SecAggServer`, and the server receives messages only through a `Channel`,
which records them. `run_protocol` plays the network and the dropouts.

NOTE: this is an in-process simulation and a teaching device. All parties run
in one Python process, so the separation is a convention: a caller can read any
object. There are no signatures against a malicious server, which the paper's
actively secure version adds along with a consistency check. Nothing checks
that a hospital's input is honest (poisoning), only that it is a ring element.
A hospital that drops out is simulated by skipping its calls.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from helpers.crypto import (
    KEY_BYTES,
    NONCE_BYTES,
    RandomSource,
    agree_key,
    check_public_key,
    commitment,
    decrypt,
    encrypt,
    expand_mask,
    private_bytes,
    public_bytes,
    public_key_of,
)
from helpers.fixed_point import FixedPoint, as_ring_elements, check_int_setting
from helpers.secret_sharing import (
    SHAMIR_PRIME,
    additive_shares,
    shamir_reconstruct,
    shamir_split,
)

ADVERTISE_KEYS = "advertise_keys"
SHARE_KEYS = "share_keys"
MASKED_INPUT = "masked_input"
UNMASKING = "unmasking"
STEPS = (ADVERTISE_KEYS, SHARE_KEYS, MASKED_INPUT, UNMASKING)
# The one message of additive sharing: a hospital's sum of the shares it holds.
PEER_SUM = "peer_sum"
MESSAGE_STEPS = (*STEPS, PEER_SUM)

# The two kinds of share a survivor reveals about another hospital when unmasking.
SEED_SHARE = "self_mask_seed"
KEY_SHARE = "masking_key"

_SHARE_BYTES = (SHAMIR_PRIME.bit_length() + 7) // 8


class ProtocolError(ValueError):
    """A protocol step cannot go on: too few hospitals, or an invalid message."""


def default_threshold(n_hospitals: int) -> int:
    """Return the default Shamir threshold: a majority, floor(n/2) + 1, at least 2.

    A majority means the survivors that unmask the sum outnumber any coalition
    of the others. Any t hospitals that collude with the server could unmask a
    hospital, so t trades dropout tolerance (up to n - t) against collusion.

    Raises:
        TypeError: if `n_hospitals` is not an int (NumPy integers pass).
        ValueError: if it is below 2.
    """
    n_hospitals = check_int_setting(n_hospitals, "n_hospitals", minimum=0)
    if n_hospitals < 2:
        raise ValueError(
            f"Secure aggregation needs at least 2 hospitals, got {n_hospitals}: "
            "the sum of one update is the update."
        )
    return max(2, n_hospitals // 2 + 1)


@dataclass(frozen=True)
class PublicKeys:
    """A hospital's step-1 message: two X25519 public keys and a seed commitment.

    Attributes:
        masking: the raw 32-byte public key of the masking key pair.
        encryption: the raw 32-byte public key of the share-encryption pair.
        seed_commitment: SHA-256 commitment (`helpers.crypto.commitment`) to
            the hospital's self-mask seed, 32 bytes. The server rejects a
            message without one, so None appears only in messages built by
            hand.
    """

    masking: bytes
    encryption: bytes
    seed_commitment: bytes | None = None


@dataclass(frozen=True)
class Message:
    """One message the server received.

    Attributes:
        session: the protocol instance (one per round).
        step: one of STEPS.
        sender: the hospital that sent it.
        payload: what it sent: PublicKeys, a dict of ciphertexts per recipient,
            a masked vector (uint64), or a dict of shares per hospital.
        n_bytes: the size of the payload as it would travel.
    """

    session: str
    step: str
    sender: str
    payload: Any
    n_bytes: int


@dataclass
class Channel:
    """The one path from hospitals to the server, recording every message.

    `messages` contains what the server received, in order. `sent` lists the
    size of each message the server sent to a hospital, without its payload,
    because those payloads are copies of received ones or lists of names.
    """

    messages: list[Message] = field(default_factory=list)
    sent: list[tuple[str, str, str, int]] = field(default_factory=list)

    def send(self, session: str, step: str, sender: str, payload: Any) -> None:
        """Deliver a hospital's message to the server and record it."""
        if step not in MESSAGE_STEPS:
            raise ValueError(f"step must be one of {MESSAGE_STEPS}, got {step!r}.")
        self.messages.append(
            Message(session, step, sender, payload, _payload_bytes(payload))
        )

    def deliver(self, session: str, step: str, recipient: str, n_bytes: int) -> None:
        """Record the size of a message from the server to a hospital."""
        self.sent.append((session, step, recipient, int(n_bytes)))

    def received(self, session: str | None = None, step: str | None = None) -> list:
        """Return the recorded messages, optionally of one session and step."""
        return [
            message
            for message in self.messages
            if (session is None or message.session == session)
            and (step is None or message.step == step)
        ]

    def bytes_received(self, session: str | None = None) -> int:
        """Total payload bytes the server received (in one session, if given)."""
        return sum(m.n_bytes for m in self.received(session))

    def bytes_sent(self, session: str | None = None) -> int:
        """Total payload bytes the server sent (in one session, if given)."""
        return sum(n for s, _, _, n in self.sent if session is None or s == session)

    def discard(self, session: str) -> None:
        """Drop the record of one session, to bound the memory of long runs."""
        self.messages = [m for m in self.messages if m.session != session]
        self.sent = [entry for entry in self.sent if entry[0] != session]

    def summary(self) -> list[dict[str, Any]]:
        """Return one row per received message: session, step, sender, type, bytes."""
        return [
            {
                "session": m.session,
                "step": m.step,
                "sender": m.sender,
                "payload": _describe(m.step, m.payload),
                "bytes": m.n_bytes,
            }
            for m in self.messages
        ]


# The hospital's side.


class SecAggHospital:
    """One hospital's side of one protocol instance.

    Call the steps in order: `advertise_keys`, `share_keys`, `masked_input`,
    `unmask`. Each step runs at most once, because a second masked input
    under the same masks would let the server subtract the two.

    Args:
        name: this hospital's name, one of `names`.
        names: every hospital of the instance, in a fixed order shared by all.
            A hospital's Shamir x coordinate is its position plus 1, and of two
            peers the one listed first adds their pairwise mask.
        threshold: t, the shares needed to recover a secret, 2 <= t <= len(names).
        session: the instance's label, bound into every derived key.
        encoding: the fixed-point ring the inputs live in.
        rng: the source of keys, seeds and nonces.

    Raises:
        TypeError: if `names` is a str (a list of names is expected) or the
            threshold is not an int.
        ValueError: on repeated names, a name not in `names`, or a threshold
            outside 2..len(names).
    """

    def __init__(
        self,
        name: str,
        *,
        names: Sequence[str],
        threshold: int,
        session: str,
        encoding: FixedPoint,
        rng: RandomSource,
    ) -> None:
        names = _names_list(names)
        threshold = _check_names_and_threshold(names, threshold)
        if name not in names:
            raise ValueError(f"Hospital {name!r} is not among {names}.")
        self.name = name
        self._names = names
        self._threshold = threshold
        self._session = session
        self._encoding = encoding
        self._rng = rng
        self._x = names.index(name) + 1

        self._masking_key = rng.key_pair()
        self._encryption_key = rng.key_pair()
        self._done: set[str] = set()
        self._public_keys: dict[str, PublicKeys] = {}
        self._seed: bytes | None = None
        self._own_shares: tuple[int, int] | None = None
        self._inbox: dict[str, bytes] = {}
        self._mask_peers: list[str] = []
        self._keys_by_peer: dict[str, bytes] = {}

    def advertise_keys(self) -> PublicKeys:
        """Step 1: draw the self-mask seed, return the public keys and a commitment.

        The commitment lets the server check the seed it rebuilds from the
        survivors' shares in step 4.
        """
        self._start(ADVERTISE_KEYS)
        self._seed = self._rng.bytes(KEY_BYTES)
        return PublicKeys(
            masking=public_bytes(self._masking_key.public_key()),
            encryption=public_bytes(self._encryption_key.public_key()),
            seed_commitment=_seed_commitment(self._seed, self._session, self.name),
        )

    def share_keys(self, public_keys: Mapping[str, PublicKeys]) -> dict[str, bytes]:
        """Step 2: Shamir-share the self-mask seed and masking key, one per peer.

        Args:
            public_keys: every hospital's keys as forwarded by the server,
                this hospital's included.

        Returns:
            Recipient name -> AES-GCM ciphertext of that peer's two shares.
        """
        self._start(SHARE_KEYS)
        self._public_keys = _check_public_keys(
            public_keys, self._names, self._threshold, self.name
        )

        n_shares = len(self._names)
        key_secret = int.from_bytes(private_bytes(self._masking_key), "big")
        key_shares = shamir_split(
            key_secret, threshold=self._threshold, n_shares=n_shares, rng=self._rng
        )
        seed_shares = shamir_split(
            int.from_bytes(self._seed, "big"),
            threshold=self._threshold,
            n_shares=n_shares,
            rng=self._rng,
        )

        ciphertexts = {}
        for peer in self._public_keys:
            x = self._names.index(peer) + 1
            key_y, seed_y = key_shares[x - 1][1], seed_shares[x - 1][1]
            if peer == self.name:
                self._own_shares = (key_y, seed_y)
                continue
            plaintext = key_y.to_bytes(_SHARE_BYTES, "big") + seed_y.to_bytes(
                _SHARE_BYTES, "big"
            )
            ciphertexts[peer] = encrypt(
                self._encryption_key_with(peer),
                plaintext,
                associated=self._route(self.name, peer),
                nonce=self._rng.bytes(NONCE_BYTES),
            )
        return ciphertexts

    def masked_input(
        self, encoded: np.ndarray, ciphertexts: Mapping[str, bytes]
    ) -> np.ndarray:
        """Step 3: return the encoded input plus the self-mask and pairwise masks.

        Args:
            encoded: this hospital's input as ring elements (uint64, 1-D).
            ciphertexts: sender -> ciphertext addressed to this hospital, from
                every peer that completed step 2.

        Raises:
            ProtocolError: if fewer than t hospitals (this one included)
                completed step 2, or a sender is unknown.
            ValueError: if `encoded` is not a 1-D array of ring elements.
        """
        self._start(MASKED_INPUT)
        encoded = _check_ring_vector(encoded, self._encoding, f"hospital {self.name!r}")
        unknown = sorted(set(ciphertexts) - set(self._public_keys) - {self.name})
        if unknown:
            raise ProtocolError(
                f"Hospital {self.name!r} received shares from {unknown}, which did "
                "not advertise keys in this session."
            )
        peers = [name for name in self._names if name in ciphertexts]
        _require(len(peers) + 1, self._threshold, "shared their keys", self._session)
        self._inbox = dict(ciphertexts)
        self._mask_peers = peers

        masked = encoded.copy()
        masked += self.self_mask(len(encoded))
        for peer in peers:
            if self._adds_mask_with(peer):
                masked += self.pairwise_mask(peer, len(encoded))
            else:
                masked -= self.pairwise_mask(peer, len(encoded))
        return _reduce_inplace(masked, self._encoding)

    def unmask(self, survivors: Sequence[str]) -> dict[str, tuple[str, tuple]]:
        """Step 4: reveal exactly one share per hospital that completed step 2.

        For a survivor (its masked input arrived) this hospital reveals its
        share of the survivor's self-mask seed. For a hospital that dropped
        before sending its masked input it reveals its share of that
        hospital's masking key. It never reveals both for one hospital.

        Args:
            survivors: the hospitals whose masked input the server received.

        Returns:
            Hospital name -> (SEED_SHARE or KEY_SHARE, (x, y)).

        Raises:
            ProtocolError: if fewer than t survivors remain, the list names a
                hospital that never shared keys or leaves out this one, or a
                ciphertext fails authentication (it was changed in transit).
        """
        self._start(UNMASKING)
        sharers = {self.name, *self._mask_peers}
        survivors = list(survivors)
        if not set(survivors) <= sharers or self.name not in survivors:
            raise ProtocolError(
                f"Hospital {self.name!r} rejects the survivor list {survivors}: it "
                f"must include this hospital and only hospitals of {sorted(sharers)}."
            )
        _require(len(set(survivors)), self._threshold, "sent masked input", "")

        shares = {self.name: self._own_shares}
        for sender in self._mask_peers:
            shares[sender] = self._open_shares(sender)

        response = {}
        for hospital, (key_y, seed_y) in shares.items():
            if hospital in survivors:
                response[hospital] = (SEED_SHARE, (self._x, seed_y))
            else:
                response[hospital] = (KEY_SHARE, (self._x, key_y))
        return response

    def self_mask(self, length: int) -> np.ndarray:
        """Return PRG(b_u), the self-mask this hospital adds (after step 1)."""
        if self._seed is None:
            raise ProtocolError(
                "The self-mask seed is drawn in step 1, advertise_keys."
            )
        return expand_mask(self._seed, length, ring_bits=self._encoding.ring_bits)

    def pairwise_mask(self, peer: str, length: int) -> np.ndarray:
        """Return PRG(s_uv), the mask shared with `peer`, before its sign is applied."""
        if peer not in self._public_keys or peer == self.name:
            raise ProtocolError(f"Hospital {self.name!r} has no mask with {peer!r}.")
        seed = self._agree(
            peer,
            self._masking_key,
            self._public_keys[peer].masking,
            purpose=_mask_purpose(self._session),
        )
        return expand_mask(seed, length, ring_bits=self._encoding.ring_bits)

    def adds_mask_with(self, peer: str) -> bool:
        """Return True if this hospital adds its mask with `peer`, False if not."""
        return self._adds_mask_with(peer)

    def _adds_mask_with(self, peer: str) -> bool:
        return self._names.index(self.name) < self._names.index(peer)

    def _start(self, step: str) -> None:
        index = STEPS.index(step)
        if step in self._done:
            raise ProtocolError(
                f"Hospital {self.name!r} already ran step {step!r} in this session; "
                "each step runs once."
            )
        if any(earlier not in self._done for earlier in STEPS[:index]):
            raise ProtocolError(
                f"Hospital {self.name!r} cannot run {step!r} before "
                f"{STEPS[index - 1]!r}."
            )
        self._done.add(step)

    def _encryption_key_with(self, peer: str) -> bytes:
        # Agreed once per peer: the same key encrypts and later decrypts.
        if peer not in self._keys_by_peer:
            self._keys_by_peer[peer] = self._agree(
                peer,
                self._encryption_key,
                self._public_keys[peer].encryption,
                purpose=f"share encryption|{self._session}".encode(),
            )
        return self._keys_by_peer[peer]

    def _agree(
        self, peer: str, private_key: Any, public: bytes, *, purpose: bytes
    ) -> bytes:
        # The server checks every advertised key, but the hospital does not
        # rely on the list it forwards: a low-order key raises here.
        try:
            return agree_key(private_key, public, purpose=purpose)
        except ValueError as error:
            raise ProtocolError(
                f"Hospital {self.name!r} cannot agree a key with {peer!r}, whose "
                "forwarded public key is a low-order point. The round aborts."
            ) from error

    def _route(self, sender: str, recipient: str) -> bytes:
        return f"{self._session}|{sender}->{recipient}".encode()

    def _open_shares(self, sender: str) -> tuple[int, int]:
        try:
            plaintext = decrypt(
                self._encryption_key_with(sender),
                self._inbox[sender],
                associated=self._route(sender, self.name),
            )
        except ValueError as error:
            raise ProtocolError(
                f"Hospital {self.name!r} could not authenticate the shares from "
                f"{sender!r}: the ciphertext was changed in transit or is not "
                "addressed to this hospital. The round must be repeated."
            ) from error
        if len(plaintext) != 2 * _SHARE_BYTES:
            raise ProtocolError(f"The shares from {sender!r} have the wrong length.")
        key_y = int.from_bytes(plaintext[:_SHARE_BYTES], "big")
        seed_y = int.from_bytes(plaintext[_SHARE_BYTES:], "big")
        return key_y, seed_y

    def __repr__(self) -> str:
        return f"SecAggHospital(name={self.name!r}, session={self._session!r})"


# The server's side.


class SecAggServer:
    """The server's side of one protocol instance: it reads only the channel.

    Call `public_keys`, `route_shares`, `survivors` and `aggregate` in order,
    each after the hospitals' messages of that step were sent.

    Args:
        names: every hospital of the instance, in the hospitals' order.
        threshold: t, as given to the hospitals.
        session: the instance's label.
        encoding: the fixed-point ring of the inputs.
        length: the number of ring elements in every input.
        channel: where the hospitals' messages arrive.
    """

    def __init__(
        self,
        *,
        names: Sequence[str],
        threshold: int,
        session: str,
        encoding: FixedPoint,
        length: int,
        channel: Channel,
    ) -> None:
        names = _names_list(names)
        threshold = _check_names_and_threshold(names, threshold)
        length = check_int_setting(length, "length", minimum=1)
        self._names = names
        self._threshold = threshold
        self._session = session
        self._encoding = encoding
        self._length = length
        self._channel = channel
        # The step-1 messages, seed commitments included, kept for step 4.
        self._keys: dict[str, PublicKeys] = {}
        self._sharers: list[str] = []
        self._survivors: list[str] = []

    def public_keys(self) -> dict[str, PublicKeys]:
        """After step 1: return the keys to forward to every hospital.

        Raises:
            ProtocolError: if fewer than t hospitals advertised keys, two
                advertised the same key, or a message contains a malformed or
                low-order public key or no valid seed commitment. The error
                names the message's sender.
        """
        messages = self._inbox(ADVERTISE_KEYS)
        self._keys = {name: messages[name] for name in self._names if name in messages}
        for name, keys in self._keys.items():
            _check_advertised(name, keys)
        _require(len(self._keys), self._threshold, "advertised keys", self._session)
        _check_public_keys(self._keys, self._names, self._threshold, None)
        return dict(self._keys)

    def route_shares(self) -> dict[str, dict[str, bytes]]:
        """After step 2: return, per recipient, the ciphertexts addressed to it.

        Only hospitals that completed step 2 receive ciphertexts, and only
        from each other.

        Raises:
            ProtocolError: if fewer than t hospitals sent shares, or a hospital
                did not address one ciphertext to every peer with keys.
        """
        messages = self._inbox(SHARE_KEYS)
        self._sharers = [name for name in self._keys if name in messages]
        _require(len(self._sharers), self._threshold, "shared keys", self._session)
        for sender in self._sharers:
            expected = set(self._keys) - {sender}
            if set(messages[sender]) != expected:
                raise ProtocolError(
                    f"Hospital {sender!r} sent shares for {sorted(messages[sender])}, "
                    f"expected one for each of {sorted(expected)}."
                )

        routed = {}
        for recipient in self._sharers:
            routed[recipient] = {
                sender: messages[sender][recipient]
                for sender in self._sharers
                if sender != recipient
            }
        return routed

    def survivors(self) -> list[str]:
        """After step 3: return the hospitals whose masked input arrived.

        Raises:
            ProtocolError: if fewer than t masked inputs arrived.
            ValueError: if a masked input has the wrong length or type.
        """
        messages = self._inbox(MASKED_INPUT)
        self._survivors = [name for name in self._sharers if name in messages]
        for name in self._survivors:
            vector = _check_ring_vector(
                messages[name], self._encoding, f"the masked input of {name!r}"
            )
            if len(vector) != self._length:
                raise ValueError(
                    f"The masked input of {name!r} has {len(vector)} elements, "
                    f"expected {self._length}."
                )
        _require(
            len(self._survivors), self._threshold, "sent masked input", self._session
        )
        return list(self._survivors)

    def aggregate(self) -> np.ndarray:
        """After step 4: remove the masks and return the sum of the survivors' inputs.

        Returns:
            The sum of the survivors' encoded inputs modulo 2^ring_bits (uint64).

        Raises:
            ProtocolError: if fewer than t survivors responded, or a response
                contains an invalid share or the wrong kind of share for a
                hospital. Also if a rebuilt masking key does not match its
                advertised public key, or a rebuilt self-mask seed does not
                match its commitment. Either mismatch means a responder sent a
                wrong share, and the error names the hospital whose secret it
                was.
        """
        masked = self._inbox(MASKED_INPUT)
        answers = self._inbox(UNMASKING)
        responders = [name for name in self._survivors if name in answers]
        _require(len(responders), self._threshold, "answered", self._session)

        total = np.zeros(self._length, dtype=np.uint64)
        for name in self._survivors:
            total += masked[name]

        ring_bits = self._encoding.ring_bits
        for hospital in self._sharers:
            if hospital in self._survivors:
                shares = self._collect(answers, responders, hospital, SEED_SHARE)
                seed = self._rebuild_seed(hospital, shares)
                total -= expand_mask(seed, self._length, ring_bits=ring_bits)
            else:
                shares = self._collect(answers, responders, hospital, KEY_SHARE)
                total -= self._pairwise_masks_of(hospital, shares)
        return _reduce_inplace(total, self._encoding)

    def _rebuild_seed(self, hospital: str, shares: list) -> bytes:
        seed = self._rebuild(shares, f"the self-mask seed of {hospital!r}")
        # Not in the semi-honest protocol of Bonawitz et al. 2017: without
        # this check, a responder that adds to its share shifts the seed, and
        # the server returns a wrong sum without noticing.
        expected = self._keys[hospital].seed_commitment
        if not hmac.compare_digest(
            _seed_commitment(seed, self._session, hospital), expected
        ):
            raise ProtocolError(
                f"The self-mask seed rebuilt for {hospital!r} does not match the "
                "commitment it advertised in step 1: a survivor sent a wrong share "
                "of it. No sum is returned: repeat the round."
            )
        return seed

    def _rebuild(self, shares: list, what: str) -> bytes:
        try:
            secret = shamir_reconstruct(shares, threshold=self._threshold)
        except ValueError as error:
            raise ProtocolError(f"The shares of {what} are invalid: {error}") from error
        return _secret_bytes(secret, what)

    def _pairwise_masks_of(self, dropped: str, shares: list) -> np.ndarray:
        key = self._rebuild(shares, f"the masking key of {dropped!r}")
        try:
            public = public_key_of(key)
        except ValueError as error:
            raise ProtocolError(
                f"The masking key reconstructed for {dropped!r} is not a valid key."
            ) from error
        if public != self._keys[dropped].masking:
            raise ProtocolError(
                f"The masking key reconstructed for {dropped!r} does not match its "
                "advertised public key: a share was wrong."
            )

        # Each survivor u added (or subtracted) PRG(s_uv) for the dropped v.
        removed = np.zeros(self._length, dtype=np.uint64)
        for survivor in self._survivors:
            seed = agree_key(
                key, self._keys[survivor].masking, purpose=_mask_purpose(self._session)
            )
            mask = expand_mask(seed, self._length, ring_bits=self._encoding.ring_bits)
            if self._names.index(survivor) < self._names.index(dropped):
                removed += mask
            else:
                removed -= mask
        return removed

    def _collect(
        self, answers: dict, responders: list[str], hospital: str, kind: str
    ) -> list:
        shares = []
        for responder in responders:
            answer = answers[responder]
            if hospital not in answer:
                raise ProtocolError(
                    f"Hospital {responder!r} sent no share for {hospital!r}."
                )
            got_kind, share = answer[hospital]
            if got_kind != kind:
                raise ProtocolError(
                    f"Hospital {responder!r} sent a {got_kind} share for "
                    f"{hospital!r}, expected a {kind} share."
                )
            shares.append(share)
        return shares

    def _inbox(self, step: str) -> dict[str, Any]:
        payloads: dict[str, Any] = {}
        for message in self._channel.received(self._session, step):
            if message.sender not in self._names:
                raise ProtocolError(
                    f"A message of step {step!r} came from {message.sender!r}, "
                    "which is not a hospital of this session."
                )
            if message.sender in payloads:
                raise ProtocolError(
                    f"Hospital {message.sender!r} sent two messages in step {step!r}."
                )
            payloads[message.sender] = message.payload
        return payloads


# Running one instance.


@dataclass
class ProtocolResult:
    """The outcome of one protocol instance.

    Attributes:
        total: the sum of the included hospitals' encoded inputs (uint64).
        included: hospitals whose input is in the sum.
        dropped_before_masking: hospitals that shared keys but whose masked
            input never arrived; their pairwise masks were removed.
        dropped_after_masking: included hospitals that sent no response in the
            unmasking step.
        left_out: hospitals that dropped before sharing keys.
        hospitals: the hospital-side objects, for inspection in teaching only
            (a real server has no such access).
        seconds: wall time per step (one of STEPS), summed over the
            hospitals and the server, which a deployment would run in parallel.
    """

    total: np.ndarray
    included: list[str]
    dropped_before_masking: list[str]
    dropped_after_masking: list[str]
    left_out: list[str]
    hospitals: dict[str, SecAggHospital]
    seconds: dict[str, float]


def run_protocol(
    encoded: Mapping[str, np.ndarray],
    *,
    encoding: FixedPoint,
    threshold: int | None = None,
    dropouts: Mapping[str, str] | None = None,
    channel: Channel | None = None,
    session: str = "0",
    seed: int | None = None,
) -> ProtocolResult:
    """Run the four steps for hospitals holding encoded inputs, with dropouts.

    Args:
        encoded: hospital name -> its input as ring elements (1-D uint64),
            all of one length.
        encoding: the fixed-point ring, sized for len(encoded) summands.
        threshold: t, by default `default_threshold(len(encoded))`.
        dropouts: hospital name -> the step it drops out at: it sends nothing
            in that step or later. MASKED_INPUT drops it before masking (its
            input is left out), UNMASKING after (its input stays in).
        channel: the record of the server's messages; a new one if None.
        session: the instance's label, different for every round.
        seed: None for keys from os.urandom, or an int for the reproducible
            test mode (never in a deployment).

    Returns:
        ProtocolResult with the encoded sum of the included hospitals.

    Raises:
        ProtocolError: if fewer than `threshold` hospitals remain at any step,
            or a message or rebuilt secret fails its check.
        ValueError: on more hospitals than `encoding.n_summands` (their sum
            could wrap), an input that is not a 1-D uint64 vector of ring
            elements, mismatched lengths, unknown hospitals or steps.
    """
    names = list(encoded)
    threshold = default_threshold(len(names)) if threshold is None else threshold
    threshold = _check_names_and_threshold(names, threshold)
    _check_summands(len(names), encoding)
    vectors = _check_inputs(encoded, encoding)
    dropouts = dict(dropouts or {})
    _check_dropouts(dropouts, names)
    lengths = {len(vector) for vector in vectors.values()}
    if len(lengths) != 1:
        raise ValueError(
            "Every hospital's input must have one length, got lengths "
            f"{sorted(lengths)}."
        )
    channel = Channel() if channel is None else channel

    def alive(step: str) -> list[str]:
        index = STEPS.index(step)
        return [
            n for n in names if n not in dropouts or STEPS.index(dropouts[n]) > index
        ]

    hospitals = {
        name: SecAggHospital(
            name,
            names=names,
            threshold=threshold,
            session=session,
            encoding=encoding,
            rng=_hospital_rng(seed, session, name),
        )
        for name in names
    }
    server = SecAggServer(
        names=names,
        threshold=threshold,
        session=session,
        encoding=encoding,
        length=lengths.pop(),
        channel=channel,
    )

    seconds = {}
    started = time.perf_counter()
    for name in alive(ADVERTISE_KEYS):
        channel.send(session, ADVERTISE_KEYS, name, hospitals[name].advertise_keys())
    keys = server.public_keys()
    key_list_bytes = sum(_payload_bytes(k) for k in keys.values())
    _record_delivery(channel, session, ADVERTISE_KEYS, keys, key_list_bytes)
    started = _lap(seconds, ADVERTISE_KEYS, started)

    for name in [n for n in alive(SHARE_KEYS) if n in keys]:
        channel.send(session, SHARE_KEYS, name, hospitals[name].share_keys(keys))
    routed = server.route_shares()
    for recipient, ciphertexts in routed.items():
        channel.deliver(session, SHARE_KEYS, recipient, _payload_bytes(ciphertexts))
    started = _lap(seconds, SHARE_KEYS, started)

    for name in [n for n in alive(MASKED_INPUT) if n in routed]:
        masked = hospitals[name].masked_input(vectors[name], routed[name])
        channel.send(session, MASKED_INPUT, name, masked)
    survivors = server.survivors()
    _record_delivery(channel, session, MASKED_INPUT, survivors, 8 * len(survivors))
    started = _lap(seconds, MASKED_INPUT, started)

    responders = [n for n in alive(UNMASKING) if n in survivors]
    for name in responders:
        channel.send(session, UNMASKING, name, hospitals[name].unmask(survivors))
    total = server.aggregate()
    _lap(seconds, UNMASKING, started)

    return ProtocolResult(
        total=total,
        included=survivors,
        dropped_before_masking=[n for n in routed if n not in survivors],
        dropped_after_masking=[n for n in survivors if n not in responders],
        left_out=[n for n in names if n not in routed],
        hospitals=hospitals,
        seconds=seconds,
    )


def run_additive_sharing(
    encoded: Mapping[str, np.ndarray],
    *,
    encoding: FixedPoint,
    channel: Channel | None = None,
    session: str = "0",
    seed: int | None = None,
) -> np.ndarray:
    """Sum encoded inputs by additive secret sharing between the hospitals.

    Each hospital splits its input into one share per hospital
    (`additive_shares`), keeps one and gives one to each peer. Each hospital
    adds the shares it holds and sends only that peer sum to the server,
    through `channel`, and the server adds the peer sums into the total.

    Unlike `run_protocol`, this tolerates no dropout: a missing peer sum loses
    the total. NOTE: the shares travel directly between hospitals here, which
    stands in for encrypted hospital-to-hospital links.

    Returns:
        The sum of the encoded inputs modulo 2^ring_bits (uint64).

    Raises:
        ValueError: on fewer than 2 hospitals, more than `encoding.n_summands`
            (their sum could wrap), an input that is not a 1-D uint64 vector
            of ring elements, or inputs of different lengths.
    """
    names = list(encoded)
    _check_names_and_threshold(names, 2)
    _check_summands(len(names), encoding)
    vectors = _check_inputs(encoded, encoding)
    if len({len(vector) for vector in vectors.values()}) != 1:
        raise ValueError("Every hospital's input must have one length.")
    channel = Channel() if channel is None else channel

    # Hospital side: share j of every hospital goes to hospital j.
    held: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for name, vector in vectors.items():
        rng = _hospital_rng(seed, session, name)
        shares = additive_shares(vector, len(names), encoding=encoding, rng=rng)
        for recipient, share in zip(names, shares, strict=True):
            held[recipient].append(share)
    for name in names:
        channel.send(session, PEER_SUM, name, encoding.add(*held[name]))

    # Server side: only the peer sums arrive.
    peer_sums = [m.payload for m in channel.received(session, PEER_SUM)]
    if len(peer_sums) != len(names):
        raise ProtocolError(
            f"Expected {len(names)} peer sums in session {session!r}, got "
            f"{len(peer_sums)}: additive sharing needs every hospital."
        )
    return encoding.add(*peer_sums)


@dataclass
class SecureSumResult:
    """The decoded outcome of `secure_sum`.

    Attributes:
        total: the sum of the included hospitals' values (float64), exact up
            to the rounding of each value to the encoding's quantum.
        encoding: the fixed-point encoding used.
        protocol: the underlying ProtocolResult.
        channel: the record of what the server received.
    """

    total: np.ndarray
    encoding: FixedPoint
    protocol: ProtocolResult
    channel: Channel


def secure_sum(
    values: Mapping[str, np.ndarray],
    *,
    max_abs: float,
    precision_bits: int = 24,
    threshold: int | None = None,
    dropouts: Mapping[str, str] | None = None,
    channel: Channel | None = None,
    session: str = "0",
    seed: int | None = None,
) -> SecureSumResult:
    """Sum real-valued arrays held by hospitals, revealing only the sum.

    Each hospital encodes its array with a `FixedPoint` sized for
    len(values) summands of magnitude at most `max_abs`, then the protocol runs
    (`run_protocol`) and the server decodes the sum.

    Returns:
        SecureSumResult whose total has the inputs' shape. The total differs
        from the exact sum of the included values by at most n * quantum / 2.

    Raises:
        TypeError: if a hospital's values are not real numbers (complex,
            string or bool input), or a setting has the wrong type.
        ValueError: on fewer than 2 hospitals, arrays of different shapes, or
            a value outside [-max_abs, max_abs] (nothing is clipped).
        ProtocolError: if fewer than the threshold of hospitals remain.
    """
    if len(values) < 2:
        raise ValueError(
            f"Secure aggregation needs at least 2 hospitals, got {len(values)}."
        )
    encoding = FixedPoint(
        precision_bits=precision_bits, max_abs=max_abs, n_summands=len(values)
    )

    # Encoding checks each value itself, so a string or complex input is
    # rejected rather than cast to float64.
    encoded, shapes = {}, set()
    for name, value in values.items():
        try:
            array = encoding.encode(value)
        except (TypeError, ValueError) as error:
            raise type(error)(f"Hospital {name!r}: {error}") from error
        shapes.add(array.shape)
        encoded[name] = array.reshape(-1)
    if len(shapes) != 1:
        raise ValueError(
            f"Every hospital's array must have one shape, got {sorted(shapes)}."
        )
    shape = shapes.pop()
    channel = Channel() if channel is None else channel
    result = run_protocol(
        encoded,
        encoding=encoding,
        threshold=threshold,
        dropouts=dropouts,
        channel=channel,
        session=session,
        seed=seed,
    )
    total = encoding.decode(result.total).reshape(shape)
    return SecureSumResult(
        total=total, encoding=encoding, protocol=result, channel=channel
    )


def uniformity_pvalue(values: np.ndarray, *, ring_bits: int, bins: int = 16) -> float:
    """Return the chi-square p-value of ring elements against the uniform distribution.

    The ring is cut into `bins` equal intervals, and the counts per interval
    are compared with their expectation. A small p-value (say below 0.001)
    means the values are not uniform. A large one means only that this test
    found no difference.
    """
    ring_bits = check_int_setting(ring_bits, "ring_bits", minimum=1)
    bins = check_int_setting(bins, "bins", minimum=0)
    values = as_ring_elements(values, "values").reshape(-1)
    if bins < 2 or bins & (bins - 1) or (1 << ring_bits) < bins:
        raise ValueError(f"bins must be a power of two in 2..2^ring_bits, got {bins}.")
    if len(values) < 5 * bins:
        raise ValueError(
            f"A chi-square test over {bins} bins needs at least {5 * bins} values, "
            f"got {len(values)}."
        )
    shift = np.uint64(ring_bits - (bins.bit_length() - 1))
    counts = np.bincount((values >> shift).astype(np.int64), minlength=bins)
    return float(stats.chisquare(counts).pvalue)


def _lap(seconds: dict[str, float], step: str, started: float) -> float:
    now = time.perf_counter()
    seconds[step] = now - started
    return now


def _hospital_rng(seed: int | None, session: str, name: str) -> RandomSource:
    if seed is None:
        return RandomSource()
    return RandomSource(f"{seed}|{session}|{name}".encode())


def _mask_purpose(session: str) -> bytes:
    return f"pairwise mask|{session}".encode()


def _seed_commitment(seed: bytes, session: str, name: str) -> bytes:
    return commitment(seed, context=f"self-mask seed|{session}|{name}".encode())


def _secret_bytes(secret: int, what: str) -> bytes:
    if secret >= 1 << (8 * KEY_BYTES):
        raise ProtocolError(
            f"The value rebuilt for {what} is larger than 32 bytes: a survivor "
            "sent a wrong share of it. No sum is returned: repeat the round."
        )
    return secret.to_bytes(KEY_BYTES, "big")


def _require(count: int, threshold: int, what: str, session: str) -> None:
    if count < threshold:
        where = f" in session {session!r}" if session else ""
        raise ProtocolError(
            f"Only {count} hospitals {what}{where}, fewer than the threshold "
            f"{threshold}. The masks cannot be removed, so no sum is returned: "
            "repeat the round with more hospitals or a lower threshold."
        )


def _names_list(names: Sequence[str]) -> list[str]:
    if isinstance(names, str | bytes):
        raise TypeError(
            f"names must be a list of hospital names, got the string {names!r}, "
            "which would be read as one name per character."
        )
    return list(names)


def _check_summands(n_hospitals: int, encoding: FixedPoint) -> None:
    if n_hospitals > encoding.n_summands:
        raise ValueError(
            f"{n_hospitals} hospitals send inputs, but the encoding's ring was "
            f"sized for sums of at most {encoding.n_summands} values, so their sum "
            "could wrap around and decode to a wrong value. Build the FixedPoint "
            f"with n_summands={n_hospitals} or more."
        )


def _check_inputs(
    encoded: Mapping[str, np.ndarray], encoding: FixedPoint
) -> dict[str, np.ndarray]:
    return {
        name: _check_ring_vector(
            np.asarray(value).reshape(-1), encoding, f"the input of hospital {name!r}"
        )
        for name, value in encoded.items()
    }


def _check_names_and_threshold(names: list[str], threshold: int) -> int:
    if len(names) < 2:
        raise ValueError(
            f"Secure aggregation needs at least 2 hospitals, got {len(names)}."
        )
    if len(set(names)) != len(names):
        raise ValueError(f"Hospital names must be unique, got {names}.")
    threshold = check_int_setting(threshold, "threshold")
    if not 2 <= threshold <= len(names):
        raise ValueError(
            f"threshold must lie in 2..{len(names)} for {len(names)} hospitals, got "
            f"{threshold}. With 1, a single hospital could reveal another's masks."
        )
    return threshold


def _check_public_keys(
    public_keys: Mapping[str, PublicKeys],
    names: list[str],
    threshold: int,
    own_name: str | None,
) -> dict[str, PublicKeys]:
    unknown = sorted(set(public_keys) - set(names))
    if unknown:
        raise ProtocolError(f"Keys were advertised for unknown hospitals {unknown}.")
    if own_name is not None and own_name not in public_keys:
        raise ProtocolError(f"The key list leaves out hospital {own_name!r} itself.")
    for name, keys in public_keys.items():
        # Only the structure: the server has already run the full key check.
        if not isinstance(keys, PublicKeys) or not all(
            isinstance(key, bytes) and len(key) == KEY_BYTES
            for key in (keys.masking, keys.encryption)
        ):
            raise ProtocolError(
                f"The forwarded keys of {name!r} are not two 32-byte public keys."
            )
    _require(len(public_keys), threshold, "advertised keys", "")
    all_keys = [k.masking for k in public_keys.values()]
    all_keys += [k.encryption for k in public_keys.values()]
    if len(set(all_keys)) != len(all_keys):
        raise ProtocolError("Two advertised public keys are equal; the round aborts.")
    return {name: public_keys[name] for name in names if name in public_keys}


def _check_advertised(name: str, keys: Any) -> None:
    if not isinstance(keys, PublicKeys):
        raise ProtocolError(
            f"Hospital {name!r} sent a {type(keys).__name__} in step "
            f"{ADVERTISE_KEYS!r}, expected PublicKeys. The round aborts."
        )
    for kind, key in (("masking", keys.masking), ("encryption", keys.encryption)):
        try:
            check_public_key(key, f"its {kind} key")
        except ValueError as error:
            raise ProtocolError(
                f"Hospital {name!r} advertised an invalid public key: {error} "
                "The round aborts."
            ) from error
    seed_commitment = keys.seed_commitment
    if not isinstance(seed_commitment, bytes) or len(seed_commitment) != KEY_BYTES:
        raise ProtocolError(
            f"Hospital {name!r} advertised no valid commitment to its self-mask "
            f"seed (expected {KEY_BYTES} bytes), so the seed rebuilt in the last "
            "step could not be checked. The round aborts."
        )


def _check_dropouts(dropouts: dict[str, str], names: list[str]) -> None:
    unknown = sorted(set(dropouts) - set(names))
    if unknown:
        raise ValueError(f"dropouts names unknown hospitals {unknown}.")
    bad = {name: step for name, step in dropouts.items() if step not in STEPS}
    if bad:
        raise ValueError(f"dropouts must map hospitals to one of {STEPS}, got {bad}.")


def _check_ring_vector(vector: Any, encoding: FixedPoint, what: str) -> np.ndarray:
    if not isinstance(vector, np.ndarray) or vector.dtype != np.uint64:
        got = vector.dtype if isinstance(vector, np.ndarray) else type(vector).__name__
        raise ValueError(
            f"{what} must be a uint64 array of ring elements, got {got}. Encode "
            "real values with FixedPoint.encode."
        )
    if vector.ndim != 1 or len(vector) == 0:
        raise ValueError(f"{what} must be 1-D and non-empty, got shape {vector.shape}.")
    if encoding.ring_bits < 64 and int(vector.max()) >= encoding.modulus:
        raise ValueError(
            f"{what} contains values outside the {encoding.ring_bits}-bit ring."
        )
    return vector


def _reduce_inplace(vector: np.ndarray, encoding: FixedPoint) -> np.ndarray:
    # The same as encoding.reduce, without a copy of a large vector.
    if encoding.ring_bits < 64:
        vector &= np.uint64(encoding.modulus - 1)
    return vector


def _record_delivery(
    channel: Channel, session: str, step: str, recipients: Any, n_bytes: int
) -> None:
    for recipient in recipients:
        channel.deliver(session, step, recipient, n_bytes)


def _payload_bytes(payload: Any) -> int:
    if isinstance(payload, np.ndarray):
        return int(payload.nbytes)
    if isinstance(payload, PublicKeys):
        parts = (payload.masking, payload.encryption, payload.seed_commitment)
        return sum(len(part) for part in parts if isinstance(part, bytes))
    if isinstance(payload, bytes):
        return len(payload)
    if isinstance(payload, dict):
        total = 0
        for key, value in payload.items():
            total += len(str(key).encode())
            if isinstance(value, tuple):
                # (kind, (x, y)): one byte for the kind, 2 for x, the share y.
                total += 1 + 2 + _SHARE_BYTES
            else:
                total += _payload_bytes(value)
        return total
    return len(repr(payload).encode())


def _describe(step: str, payload: Any) -> str:
    if isinstance(payload, np.ndarray):
        kind = "sum of shares" if step == PEER_SUM else "masked vector"
        return f"{kind}, {len(payload)} ring elements"
    if isinstance(payload, PublicKeys):
        return "2 public keys and a seed commitment"
    if isinstance(payload, dict):
        kinds = {value[0] for value in payload.values() if isinstance(value, tuple)}
        if kinds:
            return f"{len(payload)} shares ({', '.join(sorted(kinds))})"
        return f"{len(payload)} encrypted share pairs"
    return type(payload).__name__
