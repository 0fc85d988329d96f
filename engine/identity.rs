//! Who is at the keyboard: the operating-system account of the process (real uid → its passwd
//! entry, NSS included), which is what runs, approvals and audit entries made from the command
//! line are recorded under. `$USER`, `$LOGNAME` and flags never change it: anyone can set those.

use std::sync::OnceLock;

/// An operating-system account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// The real user id of the process.
    pub uid: u32,
    /// Its login name, or `uid <n>` when the account has no passwd entry (a container's
    /// arbitrary uid): still one distinct identity per uid.
    pub name: String,
}

/// The account this process runs as (the real uid: a setuid wrapper does not change who asked).
/// Looked up once; the answer cannot change during the process's life.
pub fn os_account() -> &'static Account {
    static ACCOUNT: OnceLock<Account> = OnceLock::new();
    ACCOUNT.get_or_init(|| {
        let uid = nix::unistd::getuid();
        let name = match nix::unistd::User::from_uid(uid) {
            Ok(Some(u)) => u.name,
            _ => format!("uid {uid}"),
        };
        Account {
            uid: uid.as_raw(),
            name,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_account_ignores_user_variables() {
        // The environment is not consulted: whatever `$USER` says, the uid decides.
        let a = os_account();
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        let listed = passwd.lines().any(|l| {
            let f: Vec<&str> = l.split(':').collect();
            f.len() > 2 && f[0] == a.name && f[2] == a.uid.to_string()
        });
        assert!(
            listed || a.name == format!("uid {}", a.uid),
            "{a:?} is not this process's passwd entry"
        );
    }
}
