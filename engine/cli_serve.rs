//! `runbook serve`: check the triggers file, open the state store and run the webhook server;
//! `--check` only validates the triggers file (and the runbooks it names).

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::cli::Output;
use crate::exit;
use crate::serve::{self, Config};

/// The options of `runbook serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// The triggers file: which alerts start which runbooks.
    #[arg(long, value_name = "FILE")]
    pub triggers: PathBuf,
    /// Where to listen (port 0 picks a free one; the log says which).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9095")]
    pub listen: SocketAddr,
    /// Name of this server in the runs it owns; a restarted server resumes the runs of its id.
    #[arg(long, value_name = "ID", default_value = "default")]
    pub server_id: String,
    /// Progress output of the runs, on stdout (the server's own log is on stderr).
    #[arg(long, value_enum, default_value = "plain")]
    pub output: crate::exec::OutputMode,
    /// Only check the triggers file and the runbooks it names; exit 2 on a problem.
    #[arg(long)]
    pub check: bool,
}

/// Run `runbook serve`.
pub fn serve(out: Output, state_dir: Option<PathBuf>, args: &ServeArgs) -> u8 {
    let triggers = match serve::triggers::load(&args.triggers) {
        Ok(t) => t,
        Err((file, diags)) => {
            out.diagnostics(&file, &diags);
            return exit::INVALID;
        }
    };
    if args.check {
        outln!(
            "{}: ok ({} trigger{})",
            args.triggers.display(),
            triggers.triggers.len(),
            if triggers.triggers.len() == 1 {
                ""
            } else {
                "s"
            }
        );
        return exit::SUCCESS;
    }
    if args.output == crate::exec::OutputMode::Tty {
        eprintln!("error: --output tty is not available to a server\n  help: use plain or json");
        return exit::INVALID;
    }
    let store = match crate::cli_state::open_store(state_dir) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let config = Config {
        listen: args.listen,
        server_id: args.server_id.clone(),
        output: args.output,
    };
    match serve::serve(triggers, config, store) {
        Ok(()) => exit::SUCCESS,
        Err(e) => {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(": ");
                msg.push_str(&s.to_string());
                src = s.source();
            }
            eprintln!("error: {msg}");
            e.exit_code()
        }
    }
}
