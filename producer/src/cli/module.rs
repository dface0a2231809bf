//! `warren module push FILE REF` and `warren module ls REPO`: modules in an OCI registry.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use warren_worker::oci::OciArgs;

/// `warren module`.
#[derive(Debug, Args)]
pub struct ModuleArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: ModuleCommand,
}

/// The `module` commands.
#[derive(Debug, Subcommand)]
pub enum ModuleCommand {
    /// Push a `.wasm` to an OCI registry as a Wasm artifact; print its module digest.
    Push(PushArgs),
    /// List a repository's tags and the module each points at.
    Ls(LsArgs),
}

/// `warren module push`.
#[derive(Debug, Args)]
pub struct PushArgs {
    /// The module file (`.wasm`, a core module or a component).
    pub file: PathBuf,

    /// Where to push: `REGISTRY/REPO[:TAG]` (tag `latest` when omitted), e.g.
    /// `ghcr.io/acme/warren/wc:v2`. A worker with `--registry ghcr.io/acme/warren` runs it as
    /// module `wc` (tag `latest`) or `wc@<digest>`.
    pub reference: String,

    /// How registries are reached.
    #[command(flatten)]
    pub oci: OciArgs,
}

/// `warren module ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// The repository: `REGISTRY/REPO`, e.g. `ghcr.io/acme/warren/wc`.
    pub repository: String,

    /// How registries are reached.
    #[command(flatten)]
    pub oci: OciArgs,
}

/// Runs a `module` command; returns the exit code.
pub async fn run(args: ModuleArgs) -> anyhow::Result<i32> {
    match args.command {
        ModuleCommand::Push(args) => push(args).await,
        ModuleCommand::Ls(args) => ls(args).await,
    }
}

async fn push(args: PushArgs) -> anyhow::Result<i32> {
    let pushed = crate::module::push(&args.file, &args.reference, &args.oci).await?;
    let name = pushed
        .reference
        .rsplit('/')
        .next()
        .and_then(|last| last.split([':', '@']).next())
        .unwrap_or("module");
    eprintln!(
        "warren: pushed {} ({} bytes) to {}, manifest {}; tasks pin this version as {name}@{}",
        args.file.display(),
        pushed.size,
        pushed.reference,
        pushed.manifest_digest,
        &pushed.module_digest[..12.min(pushed.module_digest.len())],
    );
    println!("sha256:{}", pushed.module_digest);
    Ok(0)
}

async fn ls(args: LsArgs) -> anyhow::Result<i32> {
    let tags = crate::module::list(&args.repository, &args.oci).await?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<20} {:<71} {:>10}  MANIFEST",
        "TAG", "MODULE DIGEST", "SIZE"
    )?;
    for tag in &tags {
        match &tag.module {
            Ok(layer) => writeln!(
                out,
                "{:<20} sha256:{:<64} {:>10}  {}",
                tag.tag,
                layer.digest,
                layer.size,
                tag.manifest_digest.as_deref().unwrap_or("-"),
            )?,
            Err(reason) => writeln!(out, "{:<20} (not a module: {reason})", tag.tag)?,
        }
    }
    if tags.is_empty() {
        eprintln!("warren: {} has no tags", args.repository);
    }
    Ok(0)
}
