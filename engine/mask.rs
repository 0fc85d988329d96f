//! Secret masking: every byte the engine writes anywhere passes through a [`Masker`].
//!
//! A secret leaves a process in many shapes: as it is, shell-quoted inside a rendered command,
//! JSON-escaped inside a journal record, percent-encoded inside a URL, one line at a time when a
//! command prints a PEM key or a kubeconfig. The masker registers every such derived form when a
//! secret is added and replaces all of them, in one pass, wherever they occur — in plain text
//! ([`Masker::mask`]) and in every string and key of a structured value
//! ([`Masker::mask_value`]).

use aho_corasick::{AhoCorasick, MatchKind};
use percent_encoding::{AsciiSet, CONTROLS, NON_ALPHANUMERIC, utf8_percent_encode};

/// Secrets shorter than this are refused: masking `1` or `ab` inside other text would destroy
/// every number and word of the output, and leaving them unmasked would leak them.
pub const MIN_SECRET_LEN: usize = 4;

/// What replaces a secret.
const MASK: &str = "***";

/// A secret that cannot be masked safely.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaskError {
    /// The value is shorter than [`MIN_SECRET_LEN`] characters (an empty secret included).
    #[error(
        "secret `{name}` is too short ({len} character(s)): secrets must be at least {} characters long, or they cannot be masked in the output; set a longer value",
        MIN_SECRET_LEN
    )]
    TooShort {
        /// The secret's (or `secret: true` param's) name.
        name: String,
        /// Its length in characters.
        len: usize,
    },
}

/// Refuse a secret value that cannot be masked.
///
/// # Errors
/// [`MaskError::TooShort`] when the value has fewer than [`MIN_SECRET_LEN`] characters once
/// surrounding whitespace is removed.
pub fn check_secret(name: &str, value: &str) -> Result<(), MaskError> {
    let len = value.trim().chars().count();
    if len < MIN_SECRET_LEN {
        return Err(MaskError::TooShort {
            name: name.to_owned(),
            len,
        });
    }
    Ok(())
}

/// Replaces known secret values, in every derived form, with `***`.
#[derive(Debug, Clone, Default)]
pub struct Masker {
    /// Every registered form, longest first, deduplicated.
    forms: Vec<String>,
    /// An automaton over `forms` (`None` when there is nothing to mask).
    matcher: Option<AhoCorasick>,
}

/// Characters `url` leaves unencoded in a query (the most permissive encoder a URL meets).
const QUERY: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'<')
    .add(b'>')
    .add(b'\'');
/// A URL path segment.
const PATH: &AsciiSet = &QUERY.add(b'?').add(b'`').add(b'{').add(b'}').add(b'/');
/// Userinfo (`user:password@`), where `url` encodes the most.
const USERINFO: &AsciiSet = &PATH
    .add(b':')
    .add(b';')
    .add(b'=')
    .add(b'@')
    .add(b'[')
    .add(b'\\')
    .add(b']')
    .add(b'^')
    .add(b'|');
/// `encodeURIComponent`: everything but the unreserved characters.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');
/// `application/x-www-form-urlencoded` (space handled separately as `+`).
const FORM: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'*')
    .remove(b'-')
    .remove(b'.')
    .remove(b'_');

/// The shapes one base value takes on its way out.
fn encodings(base: &str, out: &mut Vec<String>) {
    out.push(base.to_owned());
    // Shell quoting splits the value around `'`; inside a larger quoted word only the inner
    // part appears, which is also a substring of the whole quoted form.
    out.push(base.replace('\'', r"'\''"));
    out.push(crate::template::shell_quote(base));
    // JSON string content (journal records, `--output json`, audit export).
    if let Ok(json) = serde_json::to_string(base) {
        out.push(json[1..json.len() - 1].to_owned());
    }
    // HTML text and attribute escapes (reports), with either spelling of the quote.
    let html = base
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;");
    out.push(html.replace('\'', "&#39;"));
    out.push(html.replace('\'', "&#x27;"));
    for set in [QUERY, PATH, USERINFO, COMPONENT, NON_ALPHANUMERIC] {
        let upper = utf8_percent_encode(base, set).to_string();
        out.push(lower_hex(&upper));
        out.push(upper);
    }
    let form: String = base
        .split(' ')
        .map(|part| utf8_percent_encode(part, FORM).to_string())
        .collect::<Vec<_>>()
        .join("+");
    out.push(lower_hex(&form));
    out.push(form);
}

/// `%2F` → `%2f`: some encoders use lower-case hex digits.
fn lower_hex(encoded: &str) -> String {
    let mut out = String::with_capacity(encoded.len());
    let mut rest = encoded;
    while let Some(p) = rest.find('%') {
        out.push_str(&rest[..p]);
        let hex = rest.get(p + 1..p + 3).unwrap_or("");
        out.push('%');
        out.push_str(&hex.to_ascii_lowercase());
        rest = &rest[p + 1 + hex.len()..];
    }
    out.push_str(rest);
    out
}

/// Every form of a secret worth masking: the value, its trimmed form and each line of a
/// multi-line value, each in every encoding.
///
/// Lines shorter than [`MIN_SECRET_LEN`] (the `-----` padding of a PEM, a `}` of a JSON key
/// file) are not masked on their own: they carry next to nothing of the secret, and masking
/// them would destroy unrelated output. Whole-value matches still cover them in context.
fn forms(value: &str) -> Vec<String> {
    let mut bases = vec![value.to_owned()];
    let trimmed = value.trim();
    if trimmed != value {
        bases.push(trimmed.to_owned());
    }
    if value.contains(['\n', '\r']) {
        for line in value.split(['\n', '\r']) {
            bases.push(line.to_owned());
            let t = line.trim();
            if t != line {
                bases.push(t.to_owned());
            }
        }
    }
    let mut out = Vec::new();
    for base in bases {
        if base.chars().count() >= MIN_SECRET_LEN {
            encodings(&base, &mut out);
        }
    }
    out.retain(|f| f.chars().count() >= MIN_SECRET_LEN);
    out
}

impl Masker {
    /// A masker for these values (and all their derived forms).
    pub fn new(values: impl IntoIterator<Item = String>) -> Self {
        let mut m = Self::default();
        for v in values {
            m.forms.extend(forms(&v));
        }
        m.rebuild();
        m
    }

    /// Add a value learnt at run time.
    pub fn add(&mut self, value: &str) {
        let before = self.forms.len();
        self.forms.extend(forms(value));
        if self.forms.len() != before {
            self.rebuild();
        }
    }

    fn rebuild(&mut self) {
        // Longest first, so a secret containing another is masked whole.
        self.forms
            .sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        self.forms.dedup();
        self.matcher = if self.forms.is_empty() {
            None
        } else {
            AhoCorasick::builder()
                .match_kind(MatchKind::Standard)
                .build(&self.forms)
                .ok()
        };
    }

    /// The text with every secret (in every form) replaced by `***`.
    ///
    /// Overlapping occurrences of different secrets are merged into one mask, so no fragment of
    /// either survives between them.
    pub fn mask(&self, text: &str) -> String {
        let Some(ac) = &self.matcher else {
            // No automaton although there are forms (it could not be built): mask the slow
            // way rather than not at all.
            let mut out = text.to_owned();
            for f in &self.forms {
                if out.contains(f.as_str()) {
                    out = out.replace(f.as_str(), MASK);
                }
            }
            return out;
        };
        let mut spans: Vec<(usize, usize)> = ac
            .find_overlapping_iter(text)
            .map(|m| (m.start(), m.end()))
            .collect();
        if spans.is_empty() {
            return text.to_owned();
        }
        spans.sort_unstable();
        let mut out = String::with_capacity(text.len());
        let mut pos = 0;
        let mut i = 0;
        while i < spans.len() {
            let (start, mut end) = spans[i];
            i += 1;
            while i < spans.len() && spans[i].0 <= end {
                end = end.max(spans[i].1);
                i += 1;
            }
            out.push_str(&text[pos..start]);
            out.push_str(MASK);
            pos = end;
        }
        out.push_str(&text[pos..]);
        out
    }

    /// The value with every string and every object key masked.
    pub fn mask_value(&self, value: &serde_json::Value) -> serde_json::Value {
        use serde_json::Value;
        if self.is_empty() {
            return value.clone();
        }
        match value {
            Value::String(s) => Value::String(self.mask(s)),
            Value::Array(items) => Value::Array(items.iter().map(|v| self.mask_value(v)).collect()),
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| (self.mask(k), self.mask_value(v)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }

    /// Every form masked (handed to a step's supervisor, which masks what it journals).
    pub fn values(&self) -> impl Iterator<Item = &str> {
        self.forms.iter().map(String::as_str)
    }

    /// Whether there is anything to mask.
    pub fn is_empty(&self) -> bool {
        self.forms.is_empty()
    }
}

/// Hide the password of a connection string (`postgres://u:pw@h/db`, `password=pw`).
pub fn mask_dsn(dsn: &str) -> String {
    if let Some(scheme_end) = dsn.find("://") {
        let rest = &dsn[scheme_end + 3..];
        if let Some(at) = rest.find('@') {
            let userinfo = &rest[..at];
            if let Some(colon) = userinfo.find(':') {
                return format!(
                    "{}{}:***{}",
                    &dsn[..scheme_end + 3],
                    &userinfo[..colon],
                    &rest[at..]
                );
            }
        }
        return dsn.to_owned();
    }
    dsn.split_whitespace()
        .map(|kv| {
            if kv.to_ascii_lowercase().starts_with("password=") {
                "password=***".to_owned()
            } else {
                kv.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_longest_first() {
        let m = Masker::new(["abcd".to_owned(), "abcdefg".to_owned()]);
        assert_eq!(m.mask("x abcdefg y abcd"), "x *** y ***");
    }

    #[test]
    fn overlapping_secrets_leave_no_fragment() {
        let m = Masker::new(["xabc".to_owned(), "abcdef".to_owned()]);
        assert_eq!(m.mask("-xabcdef-"), "-***-");
    }

    #[test]
    fn masks_every_derived_form() {
        let secret = "p'a\"s s\\w\to/r&d%\n";
        let m = Masker::new([secret.to_owned()]);
        let json = serde_json::to_string(secret).unwrap();
        for shown in [
            secret.to_owned(),
            json.clone(),
            crate::template::shell_quote(secret),
            utf8_percent_encode(secret, NON_ALPHANUMERIC).to_string(),
            utf8_percent_encode(secret, NON_ALPHANUMERIC)
                .to_string()
                .to_lowercase(),
            utf8_percent_encode(secret, COMPONENT).to_string(),
            secret.trim().to_owned(),
        ] {
            let masked = m.mask(&format!("before {shown} after"));
            assert!(
                !masked.contains("s s") && !masked.contains("%20s") && !masked.contains("s+s"),
                "{shown:?} -> {masked:?}"
            );
        }
    }

    #[test]
    fn masks_each_line_of_a_multi_line_secret() {
        let pem =
            "-----BEGIN KEY-----\nMIIBVQIBADANBgkqhkiG\r\n9w0BAQEFAASC\n==\n-----END KEY-----";
        let m = Masker::new([pem.to_owned()]);
        let out = m.mask("line: MIIBVQIBADANBgkqhkiG\nline: 9w0BAQEFAASC\n");
        assert_eq!(out, "line: ***\nline: ***\n");
        // Short lines alone are kept: masking `==` would destroy unrelated output.
        assert_eq!(m.mask("a == b"), "a == b");
    }

    #[test]
    fn masks_strings_and_keys_of_values() {
        let m = Masker::new(["s3cr3t".to_owned()]);
        let v = serde_json::json!({"s3cr3t": ["x s3cr3t", 1, {"k": "s3cr3t"}]});
        assert_eq!(
            m.mask_value(&v),
            serde_json::json!({"***": ["x ***", 1, {"k": "***"}]})
        );
    }

    #[test]
    fn refuses_short_secrets() {
        assert!(check_secret("pw", "abc").is_err());
        assert!(check_secret("pw", "  ab \n").is_err());
        assert!(check_secret("pw", "").is_err());
        assert!(check_secret("pw", "abcd").is_ok());
        let e = check_secret("tok", "xy").unwrap_err().to_string();
        assert!(e.contains("`tok`") && e.contains("at least 4"), "{e}");
    }

    #[test]
    fn learns_values_at_run_time() {
        let mut m = Masker::default();
        assert_eq!(m.mask("a learnt b"), "a learnt b");
        m.add("learnt");
        assert_eq!(m.mask("a learnt b"), "a *** b");
    }

    #[test]
    fn masks_dsn_passwords() {
        assert_eq!(
            mask_dsn("postgres://app:s3cret@db:5432/x"),
            "postgres://app:***@db:5432/x"
        );
        assert_eq!(
            mask_dsn("host=db password=s3cret user=app"),
            "host=db password=*** user=app"
        );
        assert_eq!(mask_dsn("postgres://db/x"), "postgres://db/x");
    }
}
