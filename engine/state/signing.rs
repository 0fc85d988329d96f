//! Authenticity of the audit log: the Ed25519 audit key, signed checkpoints of the chain's head,
//! and the checks behind `runbook audit verify --public-key` and `--expect-head`.
//!
//! The hash chain alone proves integrity only: whoever can write the state database can rewrite
//! entries and recompute every hash after them. A checkpoint is a signature, by a key kept
//! outside the state directory, over "entry `seq` of the chain had hash `hash`". Every later
//! hash depends on every earlier entry, so one valid checkpoint vouches for the whole chain up to
//! its seq. The engine signs one at every run end and every `every` entries.
//!
//! The signed message is, in this order:
//!
//! ```text
//! "runbook-audit-checkpoint-v1" 0x00
//! seq   : i64 big-endian
//! hash  : the entry's 32-byte SHA-256 (raw, not hex)
//! at_ms : i64 big-endian (when it was signed)
//! every : u64 big-endian (the signer's checkpoint interval)
//! ```
//!
//! `every` is signed so a verifier knows how long an unsigned tail may legitimately be: a longer
//! one means checkpoints were deleted (or a writer ran without the key).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Mutex, PoisonError};

use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::audit::{hex_string, unhex};
use super::{StateError, VerifyReport};

/// How many audit entries the engine appends between two checkpoints, unless configured.
pub const DEFAULT_CHECKPOINT_EVERY: u64 = 100;

/// Domain separation for checkpoint signatures (never valid as any other signed message).
const DOMAIN: &[u8] = b"runbook-audit-checkpoint-v1\0";

/// A signed statement about the audit chain: entry `seq` had hash `hash`. One JSON line of it is
/// what `runbook audit anchor` prints for an external witness.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The audit entry it vouches for (0 for an empty chain).
    pub seq: i64,
    /// That entry's hash (hex), which depends on every entry before it.
    pub hash: String,
    /// When it was signed (milliseconds since the Unix epoch).
    pub at_ms: i64,
    /// The signer's checkpoint interval: the longest unsigned tail a verifier accepts.
    pub every: u64,
    /// The first 16 hex digits of SHA-256 over the public key, so a verifier picks the right
    /// key (and names a foreign one).
    pub key_id: String,
    /// The Ed25519 signature (hex) over the message described in the module documentation.
    pub signature: String,
}

/// The bytes a checkpoint signs.
fn message(seq: i64, hash: &[u8; 32], at_ms: i64, every: u64) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN.len() + 8 + 32 + 8 + 8);
    m.extend_from_slice(DOMAIN);
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(hash);
    m.extend_from_slice(&at_ms.to_be_bytes());
    m.extend_from_slice(&every.to_be_bytes());
    m
}

/// The short id of a public key.
fn key_id(key: &VerifyingKey) -> String {
    let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
    hex_string(&digest)[..16].to_owned()
}

fn key_error(path: &Path, reason: impl Into<String>) -> StateError {
    StateError::AuditKey {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// The private audit key of the engine, and how often it signs.
pub struct AuditSigner {
    key: SigningKey,
    key_id: String,
    every: u64,
}

impl std::fmt::Debug for AuditSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("AuditSigner")
            .field("key_id", &self.key_id)
            .field("every", &self.every)
            .finish_non_exhaustive()
    }
}

impl AuditSigner {
    /// Load the private key at `path` for the state directory `state_dir`.
    ///
    /// Refused when the file lies inside the state directory (whoever can rewrite the log could
    /// then also sign it) or when its group or others have any access (mode must be 0600 or
    /// stricter), like `ssh` does.
    ///
    /// # Errors
    /// [`StateError::AuditKey`] saying what is wrong and how to fix it.
    pub fn load(path: &Path, state_dir: &Path, every: u64) -> Result<Self, StateError> {
        if every == 0 {
            return Err(key_error(
                path,
                "the checkpoint interval must be at least 1 entry",
            ));
        }
        let meta = std::fs::metadata(path).map_err(|e| {
            key_error(
                path,
                format!("cannot read it ({e}); make one with `runbook audit keygen --out FILE`"),
            )
        })?;
        if !meta.is_file() {
            return Err(key_error(path, "it is not a regular file"));
        }
        if let (Ok(key), Ok(dir)) = (path.canonicalize(), state_dir.canonicalize())
            && key.starts_with(&dir)
        {
            return Err(key_error(
                path,
                format!(
                    "it lies inside the state directory {}: anyone who can rewrite the audit log \
                     could then also sign it; move it to a directory only the engine's user can \
                     read (e.g. /etc/runbook/audit.key)",
                    dir.display()
                ),
            ));
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(key_error(
                    path,
                    format!(
                        "its mode is {mode:04o}, so other users can read or change it; run `chmod \
                         600 {}`",
                        path.display()
                    ),
                ));
            }
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| key_error(path, format!("cannot read it ({e})")))?;
        let key = SigningKey::from_pkcs8_pem(&text).map_err(|e| {
            key_error(
                path,
                format!(
                    "it is not an Ed25519 private key in PKCS#8 PEM ({e}); make one with `runbook \
                     audit keygen --out FILE`"
                ),
            )
        })?;
        Ok(Self::from_key(key, every))
    }

    /// A signer for an in-memory key (tests, embedding).
    #[must_use]
    pub fn from_key(key: SigningKey, every: u64) -> Self {
        let key_id = key_id(&key.verifying_key());
        Self {
            key,
            key_id,
            every: every.max(1),
        }
    }

    /// The short id of its public key.
    #[must_use]
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Its checkpoint interval.
    #[must_use]
    pub fn every(&self) -> u64 {
        self.every
    }

    /// The public half, for verification.
    #[must_use]
    pub fn public_key(&self) -> AuditPublicKey {
        AuditPublicKey::from_key(self.key.verifying_key())
    }

    /// Sign "entry `seq` has hash `hash`" now.
    pub(crate) fn sign(&self, seq: i64, hash: &[u8; 32], at_ms: i64) -> Checkpoint {
        let signature = self.key.sign(&message(seq, hash, at_ms, self.every));
        Checkpoint {
            seq,
            hash: hex_string(hash),
            at_ms,
            every: self.every,
            key_id: self.key_id.clone(),
            signature: {
                let bytes = signature.to_bytes();
                let mut halves = [[0u8; 32]; 2];
                halves[0].copy_from_slice(&bytes[..32]);
                halves[1].copy_from_slice(&bytes[32..]);
                format!("{}{}", hex_string(&halves[0]), hex_string(&halves[1]))
            },
        }
    }
}

/// A public audit key, to check checkpoints with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditPublicKey {
    key: VerifyingKey,
    key_id: String,
}

impl AuditPublicKey {
    fn from_key(key: VerifyingKey) -> Self {
        let key_id = key_id(&key);
        Self { key, key_id }
    }

    /// Read a public key file (SPKI PEM, `-----BEGIN PUBLIC KEY-----`, as `runbook audit keygen`
    /// writes next to the private key).
    ///
    /// # Errors
    /// [`StateError::AuditKey`] if it cannot be read or is not an Ed25519 public key.
    pub fn load(path: &Path) -> Result<Self, StateError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| key_error(path, format!("cannot read the public key ({e})")))?;
        Self::from_pem(&text).map_err(|why| key_error(path, why))
    }

    /// Parse a public key from SPKI PEM text.
    ///
    /// # Errors
    /// Why it is not an Ed25519 public key.
    pub fn from_pem(text: &str) -> Result<Self, String> {
        VerifyingKey::from_public_key_pem(text)
            .map(Self::from_key)
            .map_err(|e| {
                format!(
                    "it is not an Ed25519 public key in PEM ({e}); use the .pub file `runbook \
                     audit keygen` wrote"
                )
            })
    }

    /// The short id of the key.
    #[must_use]
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The key as SPKI PEM text.
    #[must_use]
    pub fn to_pem(&self) -> String {
        self.key
            .to_public_key_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .unwrap_or_default()
    }

    /// Whether `c` is a valid signature by this key over what it claims.
    pub(crate) fn verifies(&self, c: &Checkpoint) -> bool {
        let Some(hash) = unhex(&c.hash) else {
            return false;
        };
        let Some(bytes) = decode_signature(&c.signature) else {
            return false;
        };
        let signature = Signature::from_bytes(&bytes);
        self.key
            .verify_strict(&message(c.seq, &hash, c.at_ms, c.every), &signature)
            .is_ok()
    }
}

/// 128 hex digits back into a 64-byte signature.
fn decode_signature(text: &str) -> Option<[u8; 64]> {
    if text.len() != 128 {
        return None;
    }
    let mut out = [0u8; 64];
    for (i, half) in [&text[..64], &text[64..]].into_iter().enumerate() {
        out[i * 32..(i + 1) * 32].copy_from_slice(&unhex(half)?);
    }
    Some(out)
}

/// What `runbook audit keygen` made.
#[derive(Debug)]
pub struct GeneratedKey {
    /// The private key file (mode 0600).
    pub private: PathBuf,
    /// The public key file, `<private>.pub`.
    pub public: PathBuf,
    /// The public key.
    pub key: AuditPublicKey,
}

/// Generate a new audit key: the private key at `out` (PKCS#8 PEM, mode 0600, never overwriting
/// an existing file) and the public key at `out` + `.pub` (SPKI PEM).
///
/// # Errors
/// [`StateError::AuditKey`] if either file exists or cannot be written, or the OS has no random
/// source.
pub fn generate_key(out: &Path) -> Result<GeneratedKey, StateError> {
    let mut secret = zeroize::Zeroizing::new([0u8; 32]);
    getrandom::fill(secret.as_mut_slice())
        .map_err(|e| key_error(out, format!("the OS random source failed ({e})")))?;
    let key = SigningKey::from_bytes(&secret);
    let pem = key
        .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .map_err(|e| key_error(out, format!("cannot encode the key ({e})")))?;
    let public = AuditPublicKey::from_key(key.verifying_key());
    let mut pub_path = out.as_os_str().to_owned();
    pub_path.push(".pub");
    let pub_path = PathBuf::from(pub_path);
    if pub_path.exists() {
        return Err(key_error(
            &pub_path,
            "it already exists; remove it or choose another --out",
        ));
    }
    write_new(out, pem.as_bytes(), 0o600)?;
    if let Err(e) = write_new(&pub_path, public.to_pem().as_bytes(), 0o644) {
        let _ = std::fs::remove_file(out);
        return Err(e);
    }
    Ok(GeneratedKey {
        private: out.to_owned(),
        public: pub_path,
        key: public,
    })
}

/// Create `path` (failing if it exists) with `mode`, write `bytes`, fsync.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StateError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            key_error(
                path,
                "it already exists; an audit key is never overwritten (remove it or choose \
                 another --out)",
            )
        } else {
            key_error(path, format!("cannot create it ({e})"))
        }
    })?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| key_error(path, format!("cannot write it ({e})")))
}

/// Where the engine's audit key comes from: `--audit-key` / `RUNBOOK_AUDIT_KEY`, and
/// `--audit-checkpoint-every` / `RUNBOOK_AUDIT_CHECKPOINT_EVERY`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningConfig {
    /// The private key file, if signing is configured.
    pub key: Option<PathBuf>,
    /// Entries between two checkpoints.
    pub every: u64,
}

impl Default for SigningConfig {
    fn default() -> Self {
        Self {
            key: None,
            every: DEFAULT_CHECKPOINT_EVERY,
        }
    }
}

/// The process-wide configuration [`super::SqliteStore::open`] uses; set once by the command
/// line, so every command that opens the store signs the same way.
static DEFAULT: Mutex<Option<SigningConfig>> = Mutex::new(None);

/// Set the signing configuration of every store this process opens from now on.
pub fn set_default(config: SigningConfig) {
    *DEFAULT.lock().unwrap_or_else(PoisonError::into_inner) = Some(config);
}

/// The configuration set by [`set_default`] (none: no signing).
pub(crate) fn default_config() -> SigningConfig {
    DEFAULT
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
        .unwrap_or_default()
}

/// A head an external witness recorded (`runbook audit anchor`'s line, or `SEQ:HASH`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedHead {
    /// The entry.
    pub seq: i64,
    /// Its hash.
    pub hash: String,
    /// The whole checkpoint, when the witness kept the JSON line (its signature is checked too
    /// when public keys are given).
    pub checkpoint: Option<Checkpoint>,
}

impl FromStr for ExpectedHead {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let bad = || {
            format!(
                "--expect-head {s:?} is neither a line printed by `runbook audit anchor` nor \
                 SEQ:HASH (an entry number and its 64-digit hex hash)"
            )
        };
        if s.starts_with('{') {
            let c: Checkpoint = serde_json::from_str(s).map_err(|e| format!("{}: {e}", bad()))?;
            if unhex(&c.hash).is_none() {
                return Err(bad());
            }
            return Ok(Self {
                seq: c.seq,
                hash: c.hash.to_ascii_lowercase(),
                checkpoint: Some(c),
            });
        }
        let (seq, hash) = s.split_once(':').ok_or_else(bad)?;
        let seq: i64 = seq.trim().parse().map_err(|_| bad())?;
        if seq < 0 || unhex(hash.trim()).is_none() {
            return Err(bad());
        }
        Ok(Self {
            seq,
            hash: hash.trim().to_ascii_lowercase(),
            checkpoint: None,
        })
    }
}

/// What the signatures say about a chain that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticity {
    /// Checkpoints whose signature and hash check out.
    pub valid: usize,
    /// The newest valid checkpoint.
    pub last: Option<Checkpoint>,
    /// Entries after the newest valid checkpoint (not signed yet).
    pub unsigned_tail: u64,
    /// The first reason the log cannot be trusted, if any.
    pub problem: Option<String>,
}

/// Check every stored checkpoint of `report` against `keys`, and that the chain's signed part
/// ends no earlier than its newest checkpoint and no more than one checkpoint interval before
/// its end. Call it only for a chain that verified (`report.first_bad` is `None`).
///
/// A checkpoint signed by an unknown key is a failure, not something to skip: an attacker can
/// sign with a key of their own.
pub fn authenticate(report: &VerifyReport, keys: &[AuditPublicKey]) -> Authenticity {
    let end = report.head.as_ref().map_or(0, |h| h.0);
    let mut out = Authenticity {
        valid: 0,
        last: None,
        unsigned_tail: u64::try_from(end).unwrap_or(0),
        problem: None,
    };
    for c in &report.checkpoints {
        let Some(key) = keys.iter().find(|k| k.key_id == c.key_id) else {
            out.problem = Some(format!(
                "the checkpoint of entry #{} is signed by key {}, which is not one of the given \
                 public keys: it was forged, or another key signed it (pass every public key in \
                 use with --public-key)",
                c.seq, c.key_id
            ));
            return out;
        };
        if !key.verifies(c) {
            out.problem = Some(format!(
                "the checkpoint of entry #{} has an invalid signature: it was forged or altered",
                c.seq
            ));
            return out;
        }
        if c.seq > end {
            out.problem = Some(format!(
                "the log ends at entry #{end} but entry #{} was signed: signed entries were \
                 removed from the tail",
                c.seq
            ));
            return out;
        }
        let chain_hash = if c.seq == 0 {
            Some(super::GENESIS_HASH)
        } else {
            report.hashes.get(&c.seq).map(String::as_str)
        };
        if !chain_hash.is_some_and(|h| h.eq_ignore_ascii_case(&c.hash)) {
            out.problem = Some(format!(
                "entry #{} does not match its signed checkpoint: the log up to entry #{} was \
                 rewritten after it was signed (and its hash chain recomputed)",
                c.seq, c.seq
            ));
            return out;
        }
        out.valid += 1;
        if out.last.as_ref().is_none_or(|l| c.seq >= l.seq) {
            out.last = Some(c.clone());
        }
    }
    let Some(last) = &out.last else {
        if end > 0 {
            out.problem = Some(format!(
                "none of the {end} entries is covered by a signed checkpoint: checkpoints were \
                 deleted, or nothing was signed since the key was configured (`runbook audit \
                 anchor` signs the current head)"
            ));
        }
        return out;
    };
    out.unsigned_tail = u64::try_from(end - last.seq).unwrap_or(0);
    if out.unsigned_tail > last.every {
        out.problem = Some(format!(
            "{} entries after entry #{} are not signed, more than the signer's checkpoint \
             interval ({}): checkpoints were deleted, or a runbook without the audit key wrote \
             them (give every writer --audit-key, or sign now with `runbook audit anchor`)",
            out.unsigned_tail, last.seq, last.every
        ));
    }
    out
}

/// Whether the chain still contains the head a witness recorded.
///
/// # Errors
/// Why not: the chain is shorter (truncated) or has another hash there (rewritten), or the
/// witness's checkpoint does not verify under `keys`.
pub fn check_expected_head(
    report: &VerifyReport,
    expected: &ExpectedHead,
    keys: &[AuditPublicKey],
) -> Result<(), String> {
    if let Some(c) = &expected.checkpoint
        && !keys.is_empty()
        && !keys.iter().any(|k| k.key_id == c.key_id && k.verifies(c))
    {
        return Err(format!(
            "the expected head (entry #{}) carries a signature that none of the given public \
             keys verifies: the witness's line was altered",
            expected.seq
        ));
    }
    let end = report.head.as_ref().map_or(0, |h| h.0);
    if expected.seq > end {
        return Err(format!(
            "the log ends at entry #{end}, before the expected head #{}: {} entries were removed \
             (truncation or rollback)",
            expected.seq,
            expected.seq - end
        ));
    }
    let actual = if expected.seq == 0 {
        Some(super::GENESIS_HASH)
    } else {
        report.hashes.get(&expected.seq).map(String::as_str)
    };
    if !actual.is_some_and(|h| h.eq_ignore_ascii_case(&expected.hash)) {
        return Err(format!(
            "entry #{} no longer has the expected hash {}: the log up to it was rewritten",
            expected.seq,
            &expected.hash[..16.min(expected.hash.len())]
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> AuditSigner {
        AuditSigner::from_key(SigningKey::from_bytes(&[7u8; 32]), 10)
    }

    #[test]
    fn a_checkpoint_verifies_only_unchanged_and_under_its_key() {
        let s = signer();
        let c = s.sign(5, &[1u8; 32], 1_700_000_000_000);
        let public = s.public_key();
        assert!(public.verifies(&c));
        for tweak in [
            |c: &mut Checkpoint| c.seq += 1,
            |c: &mut Checkpoint| c.at_ms += 1,
            |c: &mut Checkpoint| c.every += 1,
            |c: &mut Checkpoint| c.hash = hex_string(&[2u8; 32]),
            |c: &mut Checkpoint| c.signature.replace_range(0..2, "00"),
        ] {
            let mut forged = c.clone();
            tweak(&mut forged);
            assert!(!public.verifies(&forged), "{forged:?}");
        }
        let other = AuditSigner::from_key(SigningKey::from_bytes(&[8u8; 32]), 10).public_key();
        assert!(!other.verifies(&c));
        assert_ne!(other.key_id(), public.key_id());
    }

    #[test]
    fn public_keys_round_trip_through_pem() {
        let public = signer().public_key();
        assert_eq!(AuditPublicKey::from_pem(&public.to_pem()), Ok(public));
        assert!(AuditPublicKey::from_pem("not a key").is_err());
    }

    #[test]
    fn expected_heads_parse() {
        let hash = hex_string(&[3u8; 32]);
        let h: ExpectedHead = format!("12:{hash}").parse().expect("seq:hash");
        assert_eq!((h.seq, h.hash.as_str()), (12, hash.as_str()));
        let line = serde_json::to_string(&signer().sign(12, &[3u8; 32], 1)).expect("json");
        let h: ExpectedHead = line.parse().expect("anchor line");
        assert_eq!(h.seq, 12);
        assert!(h.checkpoint.is_some());
        for bad in ["", "12", "x:y", &format!("-1:{hash}"), "12:abc", "{}"] {
            assert!(bad.parse::<ExpectedHead>().is_err(), "{bad:?}");
        }
    }
}
