//! A throwaway `PostgreSQL` cluster for tests, built from the system's binaries: `initdb` into a
//! temporary directory, `pg_ctl start` on a free port of 127.0.0.1 with password (SCRAM) auth,
//! stopped and removed on drop — or, for the cluster a whole test binary shares, by a watchdog
//! process when the test process exits.
//!
//! Missing binaries make every caller panic with instructions: these tests are never skipped.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Password of the `postgres` superuser of every throwaway cluster.
pub const SUPERUSER_PASSWORD: &str = "pg-super-Secret-7";

/// A running throwaway cluster.
#[derive(Debug)]
pub struct PgCluster {
    /// Always `127.0.0.1`.
    pub host: String,
    /// The port it listens on.
    pub port: u16,
    bin: PathBuf,
    base: PathBuf,
    data: PathBuf,
    /// Running as root: the server runs as the `postgres` user, through `runuser`.
    as_postgres: bool,
}

impl PgCluster {
    /// The cluster shared by every test of this test binary (one `initdb` per binary). It is
    /// stopped and removed by a watchdog once the test process exits.
    pub fn shared() -> &'static PgCluster {
        static SHARED: OnceLock<PgCluster> = OnceLock::new();
        SHARED.get_or_init(PgCluster::start)
    }

    /// Start a new cluster (panics, with what to install, when the binaries are missing).
    pub fn start() -> Self {
        let bin = bin_dir();
        let as_postgres = running_as_root();
        let base = unique_dir("pg");
        std::fs::create_dir_all(&base).expect("create the cluster's directory");
        let data = base.join("data");
        if as_postgres {
            // initdb and the server refuse to run as root: they run as `postgres`, which must
            // be able to create the data directory and the socket here.
            let status = Command::new("chown")
                .args(["postgres:", path_str(&base)])
                .status()
                .expect("run chown");
            assert!(
                status.success(),
                "failed to chown {} to postgres",
                base.display()
            );
        }
        let mut cluster = Self {
            host: "127.0.0.1".to_owned(),
            port: 0,
            bin,
            base,
            data,
            as_postgres,
        };
        // A copy of a pristine data directory is much faster than initdb, which matters when
        // every test runs in its own process (nextest).
        let template = cluster.template();
        let copied = Command::new("cp")
            .arg("-a")
            .arg(&template)
            .arg(&cluster.data)
            .status()
            .expect("run cp");
        assert!(
            copied.success(),
            "failed to copy {} to {}",
            template.display(),
            cluster.data.display()
        );
        // A free port can be taken between the probe and the start: try a few.
        let mut last = String::new();
        for _ in 0..5 {
            cluster.port = free_port();
            let opts = format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=100",
                cluster.port,
                path_str(&cluster.base)
            );
            let log = cluster.base.join("server.log");
            match cluster.run(
                "pg_ctl",
                &[
                    "start",
                    "-w",
                    "-t",
                    "60",
                    "-D",
                    path_str(&cluster.data),
                    "-l",
                    path_str(&log),
                    "-o",
                    &opts,
                ],
            ) {
                Ok(_) => {
                    cluster.spawn_watchdog();
                    return cluster;
                }
                Err(e) => {
                    last = format!(
                        "{e}\n--- server.log ---\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
            }
        }
        panic!("failed to start the throwaway PostgreSQL cluster: {last}");
    }

    /// A data directory fresh from `initdb` (never started), made once per set of binaries
    /// under the target directory and copied for each cluster.
    fn template(&self) -> PathBuf {
        let key: String = path_str(&self.bin)
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let template = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("pg-template{key}"));
        if template.join("PG_VERSION").is_file() {
            return template;
        }
        // initdb into a private staging directory, then rename: concurrent test processes
        // never see a half-made template (the loser of the race discards its own).
        let staging = unique_dir("pg-template");
        std::fs::create_dir_all(&staging).expect("create the staging directory");
        if self.as_postgres {
            let status = Command::new("chown")
                .args(["postgres:", path_str(&staging)])
                .status()
                .expect("run chown");
            assert!(status.success(), "failed to chown {}", staging.display());
        }
        let pwfile = staging.join("pwfile");
        std::fs::write(&pwfile, format!("{SUPERUSER_PASSWORD}\n")).expect("write pwfile");
        set_mode(&pwfile, 0o644);
        let data = staging.join("data");
        self.run_checked(
            "initdb",
            &[
                "-D",
                path_str(&data),
                "-U",
                "postgres",
                &format!("--pwfile={}", path_str(&pwfile)),
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ],
        );
        // Copied next to the template, then renamed: atomic, and a rename onto the template
        // another process made meanwhile fails (not empty) and the copy is discarded.
        let _ = std::fs::create_dir_all(env!("CARGO_TARGET_TMPDIR"));
        let copy = template.with_extension(format!("{}-{}", std::process::id(), nanos()));
        let copied = Command::new("cp")
            .arg("-a")
            .arg(&data)
            .arg(&copy)
            .status()
            .is_ok_and(|s| s.success());
        if !copied || std::fs::rename(&copy, &template).is_err() {
            let _ = std::fs::remove_dir_all(&copy);
        }
        let _ = std::fs::remove_dir_all(&staging);
        assert!(
            template.join("PG_VERSION").is_file(),
            "failed to make the PostgreSQL template data directory {}",
            template.display()
        );
        template
    }

    /// The directory of the `PostgreSQL` binaries used (put it first in `PATH` for the engine).
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    /// `PATH` with the `PostgreSQL` binaries first, so `pg_dump`/`pg_restore`/`psql` match the
    /// server's version.
    pub fn path_env(&self) -> String {
        format!(
            "{}:{}",
            self.bin.display(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".to_owned())
        )
    }

    /// A `PostgreSQL` tool of the cluster's version.
    pub fn tool(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }

    /// `postgres://user:password@127.0.0.1:port/db?sslmode=disable`.
    pub fn dsn(&self, user: &str, password: &str, db: &str) -> String {
        format!(
            "postgres://{user}:{password}@{}:{}/{db}?sslmode=disable",
            self.host, self.port
        )
    }

    /// The superuser's DSN for a database.
    pub fn superuser_dsn(&self, db: &str) -> String {
        self.dsn("postgres", SUPERUSER_PASSWORD, db)
    }

    /// Run SQL with psql as the superuser over TCP; the unaligned, tuples-only output.
    ///
    /// # Panics
    /// When psql fails (with its stderr).
    #[track_caller]
    pub fn psql(&self, db: &str, sql: &str) -> String {
        self.try_psql(db, sql)
            .unwrap_or_else(|e| panic!("psql on {db} failed: {e}\n--- sql ---\n{sql}"))
    }

    /// Run SQL with psql as the superuser over TCP.
    ///
    /// # Errors
    /// psql's stderr when it fails.
    pub fn try_psql(&self, db: &str, sql: &str) -> Result<String, String> {
        self.try_psql_as("postgres", SUPERUSER_PASSWORD, db, sql)
    }

    /// Run SQL with psql as a given role over TCP.
    ///
    /// # Errors
    /// psql's stderr when it fails.
    pub fn try_psql_as(
        &self,
        user: &str,
        password: &str,
        db: &str,
        sql: &str,
    ) -> Result<String, String> {
        let out = Command::new(self.tool("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.host)
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", user, "-d", db, "-c", sql])
            .env("PGPASSWORD", password)
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("failed to run psql: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// A login role allowed to create databases.
    pub fn create_role(&self, name: &str, password: &str) {
        self.psql(
            "postgres",
            &format!("CREATE ROLE \"{name}\" LOGIN CREATEDB PASSWORD '{password}'"),
        );
    }

    /// A database owned by a role.
    pub fn create_database(&self, name: &str, owner: &str) {
        self.psql(
            "postgres",
            &format!("CREATE DATABASE \"{name}\" OWNER \"{owner}\""),
        );
    }

    /// Whether a database exists.
    pub fn database_exists(&self, name: &str) -> bool {
        self.psql(
            "postgres",
            &format!("SELECT count(*) FROM pg_database WHERE datname = '{name}'"),
        ) == "1"
    }

    fn command(&self, tool: &str) -> Command {
        let exe = self.tool(tool);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        }
    }

    fn run(&self, tool: &str, args: &[&str]) -> Result<String, String> {
        let out = self
            .command(tool)
            .args(args)
            .current_dir(&self.base)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("failed to run {tool}: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "{tool} {args:?} failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    #[track_caller]
    fn run_checked(&self, tool: &str, args: &[&str]) {
        if let Err(e) = self.run(tool, args) {
            panic!("failed to set up the throwaway PostgreSQL cluster: {e}");
        }
    }

    /// A detached shell that stops the server and removes its directory once this process is
    /// gone (statics are never dropped) — unless `Drop` did it first.
    fn spawn_watchdog(&self) {
        use std::os::unix::process::CommandExt;
        let pg_ctl = self.tool("pg_ctl");
        let stop = format!(
            "{}{} stop -D {} -m immediate",
            if self.as_postgres {
                "runuser -u postgres -- "
            } else {
                ""
            },
            sh_quote(path_str(&pg_ctl)),
            sh_quote(path_str(&self.data))
        );
        let script = format!(
            "while kill -0 {pid} 2>/dev/null && [ -d {data} ]; do sleep 0.3; done; \
             if [ -d {data} ]; then {stop}; rm -rf {base}; fi",
            pid = std::process::id(),
            data = sh_quote(path_str(&self.data)),
            base = sh_quote(path_str(&self.base)),
        );
        let _ = Command::new("/bin/sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group: a runner killing the tests' group does not kill it.
            .process_group(0)
            .spawn();
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = self.run(
            "pg_ctl",
            &["stop", "-D", path_str(&self.data), "-m", "immediate", "-w"],
        );
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

/// A name unique to this process, usable as a `PostgreSQL` identifier (lower case).
pub fn unique_name(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{tag}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Where the `PostgreSQL` binaries are: `$RUNBOOK_TEST_PG_BIN`, else the directory of `initdb`
/// in `PATH` (symlinks resolved), else the newest `/usr/lib/postgresql/*/bin`.
///
/// # Panics
/// When no directory holds `initdb`, `pg_ctl`, `psql`, `pg_dump` and `pg_restore`.
pub fn bin_dir() -> PathBuf {
    const TOOLS: [&str; 5] = ["initdb", "pg_ctl", "psql", "pg_dump", "pg_restore"];
    let complete = |d: &Path| TOOLS.iter().all(|t| d.join(t).is_file());
    let mut candidates = Vec::new();
    if let Some(d) = std::env::var_os("RUNBOOK_TEST_PG_BIN") {
        candidates.push(PathBuf::from(d));
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let initdb = dir.join("initdb");
            if initdb.is_file() {
                if let Some(real) = std::fs::canonicalize(&initdb)
                    .ok()
                    .and_then(|p| p.parent().map(Path::to_path_buf))
                {
                    candidates.push(real);
                }
                candidates.push(dir);
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((v, e.path().join("bin")))
        })
        .collect();
    versions.sort();
    candidates.extend(versions.into_iter().rev().map(|(_, p)| p));
    candidates
        .into_iter()
        .find(|d| complete(d))
        .unwrap_or_else(|| {
            panic!(
                "PostgreSQL binaries not found: these tests start a throwaway cluster and need \
             {TOOLS:?} in one directory — in PATH, in /usr/lib/postgresql/*/bin, or named by \
             RUNBOOK_TEST_PG_BIN. Install the server (e.g. `apt-get install postgresql`); \
             the tests are never skipped."
            )
        })
}

fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("find a free port on 127.0.0.1")
}

/// A fresh directory path under the temp dir (short: the server's socket lives in it).
fn unique_dir(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("rb-{tag}-{}-{}", std::process::id(), nanos()))
}

fn nanos() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Wait until no process's command line contains `needle` (orphans of a killed engine).
pub fn wait_no_process(needle: &str, limit: Duration) -> bool {
    let started = std::time::Instant::now();
    loop {
        let busy = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| n.parse::<u32>().is_ok())
                    && std::fs::read(e.path().join("cmdline"))
                        .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
            });
        if !busy {
            return true;
        }
        if started.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
