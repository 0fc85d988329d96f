//! The audit log's hash chain: canonical form of an entry, hashing, and chain verification.
//!
//! Storage-agnostic on purpose: a backend feeds stored column bytes in, so every backend (`SQLite`
//! today, `PostgreSQL` later) computes and checks exactly the same chain.
//!
//! `hash = SHA-256(prev_hash || canonical(entry))`, where `prev_hash` is the previous entry's hash
//! as 32 raw bytes (32 zero bytes before the first entry; rendered as 64 hex zeros) and the
//! canonical form is, in this order:
//!
//! ```text
//! "runbook-audit-v1" 0x00
//! seq   : i64 big-endian
//! at_ms : i64 big-endian
//! user, host, run_id, step, action, target, outcome, detail :
//!         0x00                                  if absent (None)
//!         0x01 ++ u64 big-endian length ++ bytes otherwise
//! ```
//!
//! `detail` is hashed as the exact JSON text stored, so verification never re-serializes JSON and
//! does not depend on `serde_json`'s map ordering.

use std::collections::{BTreeMap, BTreeSet};

use sha2::{Digest, Sha256};

use super::{BadEntry, VerifyReport};

/// The `prev_hash` of the first entry: 64 hex zeros.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Domain separation: bumps if the canonical form ever changes, so old and new chains can't be
/// confused.
const DOMAIN: &[u8] = b"runbook-audit-v1\0";

/// The hashed fields of one audit entry, as stored bytes (UTF-8 text in practice).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Canonical<'a> {
    pub seq: i64,
    pub at_ms: i64,
    pub user: &'a [u8],
    pub host: &'a [u8],
    pub run_id: Option<&'a [u8]>,
    pub step: Option<&'a [u8]>,
    pub action: &'a [u8],
    pub target: Option<&'a [u8]>,
    pub outcome: &'a [u8],
    pub detail: &'a [u8],
}

/// Feed one length-prefixed, presence-tagged field into the hasher.
fn field(h: &mut Sha256, value: Option<&[u8]>) {
    match value {
        None => h.update([0u8]),
        Some(bytes) => {
            h.update([1u8]);
            h.update((bytes.len() as u64).to_be_bytes());
            h.update(bytes);
        }
    }
}

/// The chained hash of an entry whose predecessor's hash is `prev`.
pub(crate) fn chain_hash(prev: &[u8; 32], c: &Canonical<'_>) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(DOMAIN);
    h.update(c.seq.to_be_bytes());
    h.update(c.at_ms.to_be_bytes());
    field(&mut h, Some(c.user));
    field(&mut h, Some(c.host));
    field(&mut h, c.run_id);
    field(&mut h, c.step);
    field(&mut h, Some(c.action));
    field(&mut h, c.target);
    field(&mut h, Some(c.outcome));
    field(&mut h, Some(c.detail));
    h.finalize().into()
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Lowercase hex of a hash, without allocating.
pub(crate) fn hex(bytes: &[u8; 32]) -> [u8; 64] {
    let mut out = [0u8; 64];
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 0x0f)];
    }
    out
}

/// Lowercase hex of a hash, as a `String`.
pub(crate) fn hex_string(bytes: &[u8; 32]) -> String {
    hex(bytes).iter().map(|&b| char::from(b)).collect()
}

/// Parse 64 lowercase or uppercase hex digits back into a hash.
pub(crate) fn unhex(text: &str) -> Option<[u8; 32]> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        out[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

/// Walks a chain entry by entry (in stored seq order) and remembers the first problem.
///
/// Backends stream rows into [`Verifier::entry`] (or [`Verifier::malformed`] for a row they
/// cannot even read), then call [`Verifier::finish`] with the head record read in the same
/// snapshot.
#[derive(Debug)]
pub(crate) struct Verifier {
    entries: u64,
    last_seq: i64,
    prev: [u8; 32],
    first_bad: Option<BadEntry>,
    /// Seqs whose verified hash the caller wants (checkpoints, an expected head).
    wanted: BTreeSet<i64>,
    hashes: BTreeMap<i64, String>,
}

impl Verifier {
    pub(crate) fn new() -> Self {
        Self::wanting(BTreeSet::new())
    }

    /// A verifier that also reports the verified hash of each of `wanted`'s entries.
    pub(crate) fn wanting(wanted: BTreeSet<i64>) -> Self {
        Self {
            entries: 0,
            last_seq: 0,
            prev: [0u8; 32],
            first_bad: None,
            wanted,
            hashes: BTreeMap::new(),
        }
    }

    /// A verifier for the entries after `seq`, whose hash is `prev` (the rest of a chain that
    /// was checked up to there, e.g. by a checkpoint).
    pub(crate) fn starting_after(seq: i64, prev: [u8; 32]) -> Self {
        Self {
            last_seq: seq,
            prev,
            ..Self::new()
        }
    }

    /// Whether a problem was already found (backends may skip decoding further rows).
    pub(crate) fn failed(&self) -> bool {
        self.first_bad.is_some()
    }

    fn bad(&mut self, seq: i64, reason: String) {
        if self.first_bad.is_none() {
            self.first_bad = Some(BadEntry { seq, reason });
        }
    }

    /// Check the seq continuity of the next row; `false` if it is out of sequence (reported).
    fn in_sequence(&mut self, seq: i64) -> bool {
        let expected = self.last_seq + 1;
        if seq == expected {
            return true;
        }
        let reason = if seq > expected {
            if self.last_seq == 0 {
                format!("entry {expected} is missing: the log starts at seq {seq}")
            } else {
                format!(
                    "entry {expected} is missing: the log jumps from seq {} to {seq}",
                    self.last_seq
                )
            }
        } else {
            format!(
                "entry {seq} is out of order: it follows seq {}",
                self.last_seq
            )
        };
        // A gap names the first missing seq; an out-of-order row names itself.
        self.bad(expected.min(seq), reason);
        false
    }

    /// Count a row without checking it (after the first problem, only the total matters).
    pub(crate) fn skip(&mut self) {
        self.entries += 1;
    }

    /// A row whose columns could not be read as expected (a non-text value where text belongs).
    pub(crate) fn malformed(&mut self, seq: i64, reason: String) {
        self.entries += 1;
        if self.failed() {
            return;
        }
        if self.in_sequence(seq) {
            self.bad(seq, reason);
        }
    }

    /// The next stored entry, with its stored `prev_hash` and `hash` text.
    pub(crate) fn entry(&mut self, c: &Canonical<'_>, stored_prev: &[u8], stored_hash: &[u8]) {
        self.entries += 1;
        if self.failed() || !self.in_sequence(c.seq) {
            return;
        }
        if !stored_prev.eq_ignore_ascii_case(&hex(&self.prev)) {
            let reason = if c.seq == 1 {
                "prev_hash is not the genesis hash (64 zeros): entries before it were removed or \
                 it was replaced"
                    .to_owned()
            } else {
                format!(
                    "prev_hash does not match the hash of entry {}: an entry was removed, \
                     replaced or reordered",
                    c.seq - 1
                )
            };
            self.bad(c.seq, reason);
            return;
        }
        let computed = chain_hash(&self.prev, c);
        if !stored_hash.eq_ignore_ascii_case(&hex(&computed)) {
            self.bad(
                c.seq,
                "hash mismatch: the entry was modified after it was written".to_owned(),
            );
            return;
        }
        self.prev = computed;
        self.last_seq = c.seq;
        if self.wanted.contains(&c.seq) {
            self.hashes.insert(c.seq, hex_string(&computed));
        }
    }

    /// Compare the end of the chain with the head record (`None` if the head row is missing)
    /// and produce the report.
    pub(crate) fn finish(mut self, head: Option<(i64, &[u8])>) -> VerifyReport {
        if !self.failed() {
            let last = self.last_seq;
            match head {
                None => self.bad(
                    last,
                    "the audit head record is missing: truncation of the log cannot be ruled out"
                        .to_owned(),
                ),
                Some((head_seq, _)) if head_seq > last => {
                    let reason = format!(
                        "the log ends at seq {last} but its head records seq {head_seq}: {} \
                         entries were removed from the tail",
                        head_seq - last
                    );
                    self.bad(last + 1, reason);
                }
                Some((head_seq, _)) if head_seq < last => {
                    let reason = format!(
                        "entry {} is past the head (seq {head_seq}): entries were appended \
                         without updating the head",
                        head_seq + 1
                    );
                    self.bad(head_seq + 1, reason);
                }
                Some((_, head_hash)) if !head_hash.eq_ignore_ascii_case(&hex(&self.prev)) => {
                    let reason = format!(
                        "the head's hash does not match entry {last}: the last entry was replaced"
                    );
                    self.bad(last, reason);
                }
                Some(_) => {}
            }
        }
        VerifyReport {
            entries: self.entries,
            head: (self.last_seq > 0).then(|| (self.last_seq, hex_string(&self.prev))),
            hashes: self.hashes,
            first_bad: self.first_bad,
            ..VerifyReport::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(seq: i64, detail: &[u8]) -> Canonical<'_> {
        Canonical {
            seq,
            at_ms: 1_700_000_000_000,
            user: b"alice",
            host: b"box",
            run_id: Some(b"r1"),
            step: None,
            action: b"step.finished",
            target: None,
            outcome: b"ok",
            detail,
        }
    }

    #[test]
    fn hex_round_trips() {
        let h = chain_hash(&[0u8; 32], &canon(1, b"{}"));
        assert_eq!(unhex(&hex_string(&h)), Some(h));
        assert_eq!(hex_string(&[0u8; 32]), GENESIS_HASH);
        assert_eq!(unhex("zz"), None);
    }

    #[test]
    fn absent_and_empty_fields_hash_differently() {
        let a = canon(1, b"{}");
        let mut b = a;
        b.step = Some(b"");
        assert_ne!(chain_hash(&[0; 32], &a), chain_hash(&[0; 32], &b));
        // Moving bytes between adjacent fields changes the hash (length prefixes).
        let mut c = a;
        c.user = b"alic";
        c.host = b"ebox";
        assert_ne!(chain_hash(&[0; 32], &a), chain_hash(&[0; 32], &c));
    }

    #[test]
    fn verifier_accepts_a_good_chain_and_names_a_gap() {
        let c1 = canon(1, b"{}");
        let h1 = chain_hash(&[0; 32], &c1);
        let c2 = canon(2, b"{}");
        let h2 = chain_hash(&h1, &c2);
        let mut v = Verifier::new();
        v.entry(&c1, GENESIS_HASH.as_bytes(), &hex(&h1));
        v.entry(&c2, &hex(&h1), &hex(&h2));
        let report = v.finish(Some((2, &hex(&h2))));
        assert_eq!(report.entries, 2);
        assert!(report.first_bad.is_none(), "{report:?}");

        let mut v = Verifier::new();
        v.entry(&c2, &hex(&h1), &hex(&h2));
        let report = v.finish(Some((2, &hex(&h2))));
        assert_eq!(report.first_bad.map(|b| b.seq), Some(1));
    }
}
