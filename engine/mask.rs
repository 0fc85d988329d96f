//! Secret masking: every byte the engine writes anywhere passes through a [`Masker`].

/// Replaces known secret values with `***`.
#[derive(Debug, Clone, Default)]
pub struct Masker {
    secrets: Vec<String>,
}

/// Secrets shorter than this are not masked inside other text (masking `1` would destroy every
/// number in the output); they are still never rendered into plans or journals.
const MIN_MASKED_LEN: usize = 3;

impl Masker {
    /// A masker for these values.
    pub fn new(values: impl IntoIterator<Item = String>) -> Self {
        let mut secrets: Vec<String> = values
            .into_iter()
            .filter(|s| s.len() >= MIN_MASKED_LEN)
            .collect();
        // Longest first, so a secret containing another is masked whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Self { secrets }
    }

    /// Add a value learnt at run time.
    pub fn add(&mut self, value: String) {
        if value.len() >= MIN_MASKED_LEN && !self.secrets.contains(&value) {
            self.secrets.push(value);
            self.secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        }
    }

    /// The text with every secret replaced by `***`.
    pub fn mask(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for s in &self.secrets {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), "***");
            }
        }
        out
    }

    /// The values masked (handed to a step's supervisor, which masks what it journals).
    pub fn values(&self) -> impl Iterator<Item = &str> {
        self.secrets.iter().map(String::as_str)
    }

    /// Whether there is anything to mask.
    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
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
        let m = Masker::new(["abc".to_owned(), "abcdef".to_owned()]);
        assert_eq!(m.mask("x abcdef y abc"), "x *** y ***");
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
