//! `tidings typescript`: writes the TypeScript module of one of the
//! server's hubs (server methods, client contract, the types of both), or
//! checks that a file holds exactly that module.
//!
//! It runs before the server's own flags are read, so that its flags do not
//! mix with the server's.

use std::{ffi::OsString, path::PathBuf};

use anyhow::Context as _;
use clap::Parser;
use tidings::typescript::TypeScriptModule;

use crate::hubs::{chat::ChatHub, dashboard::DashboardHub, test::TestHub};

/// Writes the TypeScript module of a hub: typed `invoke`/`send`/`stream`
/// wrappers over `@microsoft/signalr`'s `HubConnection`, typed `on` for
/// the hub's client methods, and the types of their arguments and results.
#[derive(Debug, Parser)]
#[command(name = "tidings typescript", bin_name = "tidings typescript", version)]
struct Standalone {
    #[command(flatten)]
    args: TypescriptArgs,
}

/// `tidings typescript`.
#[derive(Debug, clap::Args)]
pub(crate) struct TypescriptArgs {
    /// The hub.
    #[arg(long, value_enum)]
    hub: HubName,

    /// The file to write; standard output without it.
    #[arg(long)]
    out: Option<PathBuf>,

    /// Do not write: fail unless `--out` already holds exactly this module.
    #[arg(long, requires = "out")]
    check: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum HubName {
    Chat,
    Dashboard,
    /// The interop hub (no client contract; streams both ways).
    Test,
}

impl HubName {
    fn module(self) -> TypeScriptModule {
        let (module, name) = match self {
            HubName::Chat => (TypeScriptModule::new::<ChatHub>(), "chat"),
            HubName::Dashboard => (TypeScriptModule::new::<DashboardHub>(), "dashboard"),
            HubName::Test => (TypeScriptModule::new::<TestHub>(), "test"),
        };
        module.header(format!(
            "Regenerate with `tidings typescript --hub {name} --out <this file>`."
        ))
    }
}

/// Runs the command if the first argument is `typescript` (before the
/// server's configuration is read: generating code needs none); `false` if
/// it is not.
pub(crate) fn run_if_asked() -> anyhow::Result<bool> {
    let mut args: Vec<OsString> = std::env::args_os().collect();
    if args.get(1).is_none_or(|a| a != "typescript") {
        return Ok(false);
    }
    args.remove(1);
    run(&Standalone::parse_from(args).args)?;
    Ok(true)
}

/// Writes (or checks) the module.
pub(crate) fn run(args: &TypescriptArgs) -> anyhow::Result<()> {
    let text = args.hub.module().render();
    match (&args.out, args.check) {
        (None, _) => print!("{text}"),
        (Some(path), false) => std::fs::write(path, &text)
            .with_context(|| format!("cannot write {}", path.display()))?,
        (Some(path), true) => {
            let current = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            if current != text {
                anyhow::bail!(
                    "{} differs from the TypeScript the {:?} hub generates now; regenerate it with `tidings typescript --hub {} --out {}`",
                    path.display(),
                    args.hub,
                    format!("{:?}", args.hub).to_lowercase(),
                    path.display()
                );
            }
        }
    }
    Ok(())
}
